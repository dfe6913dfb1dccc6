"""Every serialized configuration of posenfs, as frozen, validated dataclasses.

What this is: the typed form of the YAML files under ``search_spaces/`` and ``experiments/`` and of
what crosses process boundaries (CLI → Tune driver → Train workers). Each spec validates its own
values in ``__post_init__``; ``strict.from_mapping`` adds key paths and rejects unknown keys.
What it is not: a builder of modules or loaders (``nn/`` and ``data/`` do that from these specs).

Vocabulary (PoseNFS, arXiv 1909.07068): a *fabric* is a (scale × depth) grid of *cells*; the
*cut* removes the first layers, whose place the backbone pyramid takes; *alpha* weighs the
candidate ops inside a cell, *beta* the three inputs of a cell; a *grouping* splits the keypoints
into *parts*, each with its own fabric.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from nfs_orchestrator.errors import InputError, SpecError
from nfs_orchestrator.keypoints import PartGrouping, resolve_ref
from nfs_orchestrator.strict import (
    Spec,
    apply_overrides,
    fingerprint,
    load_spec,
    read_yaml,
    suggest,
)

# Candidate op names (PoseNFS §1.6). nn/ops.py maps each to a module factory; kept here as names
# only so that specs never build modules. A test checks the two stay equal.
OP_NAMES = (
    "zero",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "atr_conv_3x3",
    "atr_conv_5x5",
    "avg_pool_3x3",
    "max_pool_3x3",
)
STRIDES = (4, 8, 16, 32, 64)  # allowed fabric scales: input stride of each row
BACKBONE_NAMES = (
    "tiny",
    "tiny_local",
    "resnet50",
    "mobilenet_v2",
    "hrnet_w32",
)  # = nn.backbones.BACKBONES
PARAMETER_FREE_OPS = ("zero", "skip_connect", "avg_pool_3x3", "max_pool_3x3")


# --------------------------------------------------------------------------------------------
# Search space of one part fabric
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DerivationRule(Spec):
    """How a discrete genotype is read from alpha/beta (see genotype.derive_genotype).

    ops: ``argmax_nonzero`` keeps, per edge, the op with the largest alpha excluding ``zero``
    (DARTS). inputs: ``argmax`` keeps each cell's strongest input; ``threshold`` keeps every
    input whose softmax(beta) ≥ ``beta_threshold`` (at least the strongest one); ``top2`` keeps
    the two strongest (a cell reading two maps keeps both: DARTS keeps two inputs per node);
    ``argmax_parallel`` keeps the strongest and the cell's own-scale (parallel) input, so every
    kept cell carries its scale forward and the search decides what else it reads. Cells that
    no kept path leads from to the output are dropped.
    """

    ops: Literal["argmax_nonzero"] = "argmax_nonzero"
    inputs: Literal["argmax", "threshold", "top2", "argmax_parallel"] = "argmax"
    beta_threshold: float = 0.3  # only read when inputs == "threshold"

    def __post_init__(self) -> None:
        if not 0.0 < self.beta_threshold <= 1.0:
            raise SpecError(f"beta_threshold: {self.beta_threshold} is not in (0, 1]")


@dataclass(frozen=True)
class FabricSpace(Spec):
    """The differentiable search space of one part's Cell-based Neural Fabric (PoseNFS §1)."""

    name: str
    depth: int = 6  # layers of the full fabric grid before the cut
    cut: int = 3  # first layers removed; the backbone pyramid stands in for layer cut-1
    scales: tuple[int, ...] = (4, 8, 16, 32)  # input strides of the fabric rows, from 4 up
    channel_factor: int = 16  # a cell at stride s has s * channel_factor channels
    hidden_nodes: int = 1  # N: hidden states per cell (released configs: 1)
    input_nodes: int = 1  # I: input nodes per cell (released configs: 1)
    ops: tuple[str, ...] = ("zero", "skip_connect", "atr_conv_3x3", "sep_conv_3x3")
    alpha_sharing: Literal["part", "cell"] = "part"  # one alpha per part (reference) or per cell
    head: Literal["plain", "vector"] = "plain"  # heatmap head; vector = squashed 8-d vectors
    vector_dim: int = 8  # D of the vector head
    derivation: DerivationRule = field(default_factory=DerivationRule)

    def __post_init__(self) -> None:
        bad = [o for o in self.ops if o not in OP_NAMES]
        if bad:
            raise SpecError(
                f"ops: unknown op {bad[0]!r}{suggest(bad[0], OP_NAMES)}; known: {list(OP_NAMES)}"
            )
        if len(set(self.ops)) != len(self.ops) or not self.ops:
            raise SpecError("ops: must be a non-empty list without repeats")
        if self.ops == ("zero",):
            raise SpecError("ops: 'zero' alone leaves nothing to derive")
        if self.input_nodes != 1:
            raise SpecError(
                "input_nodes: only 1 is supported (the reference's second input node is never "
                "fed; see POSENFS-SPEC §1.5)"
            )
        if self.hidden_nodes < 1:
            raise SpecError(f"hidden_nodes: {self.hidden_nodes} must be ≥ 1")
        if not self.scales or self.scales != STRIDES[: len(self.scales)]:
            raise SpecError(
                f"scales: {list(self.scales)} must be consecutive strides starting at 4, "
                f"e.g. [4, 8, 16] (cells only connect to adjacent scales)"
            )
        if not 1 <= self.cut < self.depth:
            raise SpecError(f"cut: {self.cut} must be in [1, depth) = [1, {self.depth})")
        if self.channel_factor < 1:
            raise SpecError(f"channel_factor: {self.channel_factor} must be ≥ 1")
        if self.head == "vector" and self.vector_dim < 1:
            raise SpecError(f"vector_dim: {self.vector_dim} must be ≥ 1")
        layers = self.layer_sizes()
        if not layers or layers[-1] != 1:
            raise SpecError(
                f"depth {self.depth} / cut {self.cut}: the fabric must end in one stride-4 cell"
            )

    def layer_sizes(self) -> list[int]:
        """Number of cells in each kept layer j = cut … depth-1 (PoseNFS §1.1):
        ``n_j = min(j + 2, S, depth - j)``; depth 6 / cut 3 / 4 scales gives [3, 2, 1]."""
        s = len(self.scales)
        return [min(j + 2, s, self.depth - j) for j in range(self.cut, self.depth)]

    def channels(self) -> list[int]:
        """Cell channels per scale row: stride × channel_factor ([64, 128, 256, 512] at 16)."""
        return [s * self.channel_factor for s in self.scales]

    @property
    def num_edges(self) -> int:
        """Mixed-op edges per cell: hidden node h takes one edge from each input node and each
        earlier hidden node, so k = N·I + N(N-1)/2."""
        n, i = self.hidden_nodes, self.input_nodes
        return n * i + n * (n - 1) // 2

    @property
    def num_cells(self) -> int:
        return sum(self.layer_sizes())


def load_fabric(ref: str, overrides: tuple[str, ...] = ()) -> FabricSpace:
    """Loads ``search_spaces/fabrics/<ref>.yaml`` (or a path) with dotted overrides."""
    return load_spec(FabricSpace, resolve_ref(ref, "fabrics"), overrides)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentSpec(Spec):
    """Training augmentation of the top-down crop (defaults: the reference code, §3.3)."""

    scale_factor: float = 0.3  # scale = clip(1 + 0.3·N(0,1), 0.7, 1.3)
    rotation_factor: float = 45.0  # degrees: rotation = clip(45·N(0,1), -90, 90) …
    rotation_prob: float = 0.6  # … applied with this probability, else 0
    flip: bool = True  # horizontal flip with p = 0.5, left/right swapped by the schema
    half_body_prob: float = 0.0  # optional half-body crop (off in the reference)

    def __post_init__(self) -> None:
        if not 0 <= self.rotation_prob <= 1 or not 0 <= self.half_body_prob <= 1:
            raise SpecError("rotation_prob and half_body_prob must be in [0, 1]")
        if self.scale_factor < 0 or self.rotation_factor < 0:
            raise SpecError("scale_factor and rotation_factor must be ≥ 0")


@dataclass(frozen=True)
class SyntheticSpec(Spec):
    """A generated COCO-format keypoint set (data/synthetic.py), written once under data.root."""

    train_images: int = 96
    val_images: int = 32
    image_size: tuple[int, int] = (128, 128)  # (W, H) of generated images
    seed: int = 0
    # "context_legs" / "context_arms": one limb group located by long-range context only, the
    # other by local detail only, roles exchanged between the two (data/synthetic.py), so a
    # part-specific search has a planted preference to find, and to flip; the "_sided" pair
    # draws the detail marks as ticked discs that tell their side, the "_coloured" pair as
    # discs whose right joints have colours of their own (needs data.augment.flip false)
    planted: Literal[
        "none",
        "context_legs",
        "context_arms",
        "context_legs_sided",
        "context_arms_sided",
        "context_legs_coloured",
        "context_arms_coloured",
    ] = "none"


@dataclass(frozen=True)
class DataSpec(Spec):
    """A top-down pose dataset: where it is, how crops and targets are made, how it is scored.

    Relative paths resolve against ``root``. ``dataset: synthetic`` writes a small COCO-format set
    under ``root`` on first use and then reads it exactly like COCO.
    """

    LATE_FIELDS: ClassVar[tuple[str, ...]] = ("val_boxes", "decode", "oks_nms_threshold")

    dataset: Literal["coco", "mpii", "synthetic"]
    root: str = "."
    train_annotations: str = ""  # COCO person_keypoints_*.json or MPII train.json
    train_images: str = ""  # image folder
    val_annotations: str = ""
    val_images: str = ""
    val_gt_mat: str | None = None  # MPII gt_valid.mat (PCKh ground truth)
    # Which person boxes validation crops (COCO-format data; see val_detections): "gt" the
    # ground truth's (the reference during training), "detections" a person detector's (the
    # reference's test protocol; the file must exist), "detections_if_present" the detector's
    # where the file exists and the ground truth's otherwise.
    val_boxes: Literal["gt", "detections", "detections_if_present"] = "gt"
    # Person detector results in the layout of COCO_val2017_detections_AP_H_56_person.json
    # (image_id, category_id, bbox, score); read only when val_boxes is not "gt".
    detections: str | None = None
    det_score_threshold: float = 0.0  # detector boxes scored lower are dropped (reference: 0)
    input_size: tuple[int, int] = (192, 256)  # (W, H) of the network input
    sigma: float = 2.0  # Gaussian target sigma in heatmap pixels
    margin: float = 1.25  # box enlargement before the crop
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    flip_test: bool = True
    # Heatmap → coordinates: argmax + a quarter pixel toward the higher neighbour (reference,
    # HRNet) or DARK's Taylor refinement on the blurred log-heatmap (Zhang et al. 2020).
    decode: Literal["quarter_offset", "dark"] = "quarter_offset"
    oks_nms_threshold: float = 0.9  # COCO: greedy OKS-NMS per image (reference 0.9; 1 = off)
    max_train_instances: int | None = None  # cap for smoke runs; None = all
    max_val_instances: int | None = None
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)

    def __post_init__(self) -> None:
        w, h = self.input_size
        if w % 32 or h % 32 or w <= 0 or h <= 0:
            raise SpecError(
                f"input_size: {w}x{h} must be positive multiples of 32 (the backbone pyramid "
                f"reaches stride 32 and the heatmap is input/4)"
            )
        if self.sigma <= 0 or self.margin <= 0:
            raise SpecError("sigma and margin must be > 0")
        if self.synthetic.planted.endswith("_coloured") and self.augment.flip:
            raise SpecError(
                f"augment.flip: must be false with synthetic.planted {self.synthetic.planted} "
                f"(a flip swaps left and right labels, not the colours that tell them apart)"
            )
        if self.dataset in ("coco", "mpii") and not self.train_annotations:
            raise SpecError(f"train_annotations: required for dataset {self.dataset}")
        if self.val_boxes != "gt":
            if self.dataset == "mpii":
                raise SpecError(
                    f"val_boxes: {self.val_boxes} is for COCO-format data; MPII validates on "
                    f"its annotated people (use gt)"
                )
            if not self.detections:
                raise SpecError(
                    f"detections: val_boxes {self.val_boxes} needs a person detections file"
                )
        if not 0.0 <= self.det_score_threshold <= 1.0:
            raise SpecError(f"det_score_threshold: {self.det_score_threshold} is not in [0, 1]")
        if not 0.0 < self.oks_nms_threshold <= 1.0:
            raise SpecError(f"oks_nms_threshold: {self.oks_nms_threshold} is not in (0, 1]")

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(W, H) of the target heatmaps: input / 4."""
        return self.input_size[0] // 4, self.input_size[1] // 4

    def path(self, relative: str) -> Path:
        """A path of this spec resolved against ``root``."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.root) / p

    def val_detections(self) -> Path | None:
        """The detections file whose boxes validation crops, or None for ground-truth boxes.

        Reads the file system where it is called (the machine that validates): with
        ``val_boxes: detections`` a missing file is a one-line ``InputError``; with
        ``detections_if_present`` it means ground-truth boxes."""
        if self.val_boxes == "gt" or self.detections is None:
            return None
        path = self.path(self.detections)
        if path.is_file():
            return path
        if self.val_boxes == "detections_if_present":
            return None
        raise InputError(
            f"{path}: no such detections file (data.detections, val_boxes: detections); set "
            f"val_boxes: detections_if_present to fall back to ground-truth boxes"
        )

    def describe_validation(self) -> str:
        """One line: which boxes, decoding and post-processing validation uses here."""
        if self.dataset == "mpii":
            boxes = "annotated people"
        elif self.val_detections() is not None:
            boxes = (
                f"detector boxes from {self.path(self.detections or '')} "
                f"(score ≥ {self.det_score_threshold:g})"
            )
        elif self.val_boxes == "detections_if_present":
            boxes = f"ground-truth boxes ({self.path(self.detections or '')} absent here)"
        else:
            boxes = "ground-truth boxes"
        nms = "" if self.dataset == "mpii" else f", OKS-NMS {self.oks_nms_threshold:g}"
        flip = ", flip test" if self.flip_test else ""
        return f"{boxes}, decode {self.decode}{nms}{flip}"


# --------------------------------------------------------------------------------------------
# Backbone and inner search
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackboneSpec(Spec):
    """The shared backbone: a name from nn.backbones and where its weights come from."""

    name: str = "tiny"
    weights: str | None = None  # a LOCAL state-dict file; nothing is ever downloaded
    random_init: bool = False  # must be set explicitly to start from random weights

    def __post_init__(self) -> None:
        if self.name not in BACKBONE_NAMES:
            raise SpecError(
                f"name: unknown backbone {self.name!r}{suggest(self.name, BACKBONE_NAMES)}; "
                f"known: {list(BACKBONE_NAMES)}"
            )
        if self.weights is None and not self.random_init:
            raise SpecError(
                "weights: no weights file given; set backbone.weights to a local file or "
                "backbone.random_init: true"
            )


@dataclass(frozen=True)
class OptimSpec(Spec):
    """One optimizer group. Adam by default, as the reference code."""

    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    betas: tuple[float, float] = (0.9, 0.999)  # adam/adamw only

    def __post_init__(self) -> None:
        if self.lr <= 0 or self.weight_decay < 0:
            raise SpecError(
                f"lr must be > 0 and weight_decay ≥ 0 (got {self.lr}, {self.weight_decay})"
            )


@dataclass(frozen=True)
class ScheduleSpec(Spec):
    """Learning-rate schedule of the weights, a pure function of training progress.

    ``multistep`` multiplies by ``gamma`` at each milestone, given as fractions of the run
    (the reference: epochs 90/120/150 of 200 → [0.45, 0.6, 0.75], gamma 0.25).
    """

    kind: Literal["constant", "multistep", "cosine"] = "constant"
    milestones: tuple[float, ...] = (0.45, 0.6, 0.75)
    gamma: float = 0.25
    min_lr_ratio: float = 0.0  # cosine floor as a fraction of the base lr

    def __post_init__(self) -> None:
        if any(not 0 < m < 1 for m in self.milestones) or list(self.milestones) != sorted(
            self.milestones
        ):
            raise SpecError("milestones: increasing fractions of the run, each in (0, 1)")


@dataclass(frozen=True)
class CollapseSpec(Spec):
    """A collapse monitor that acts (DARTS-ES style): once the derived genotype's share of
    parameter-free ops (skip, pooling) passes ``max_param_free_share`` while α/β are searched,
    ``freeze_arch`` stops the α/β updates for the rest of the trial (weights go on training) and
    ``stop`` ends the trial after that epoch; the ledger records why (``stop_reason``). Off
    when ``max_param_free_share`` is null."""

    max_param_free_share: float | None = None
    action: Literal["freeze_arch", "stop"] = "freeze_arch"

    def __post_init__(self) -> None:
        share = self.max_param_free_share
        if share is not None and not 0.0 < share <= 1.0:
            raise SpecError(f"max_param_free_share: {share} must be in (0, 1] or null")


@dataclass(frozen=True)
class TemperatureSpec(Spec):
    """Softmax temperature of alpha/beta, annealed linearly from start to end over the run.
    T = 1 throughout reproduces the reference (plain softmax)."""

    start: float = 1.0
    end: float = 1.0

    def __post_init__(self) -> None:
        if self.start <= 0 or self.end <= 0:
            raise SpecError("temperature start and end must be > 0")


SEARCH_MODES = ("first_order", "sync", "second_order", "random", "none")


# How a training step runs on its device (resolved by hardware.choose_execution): "auto" picks
# bf16 autocast only where the device has a bf16 hardware path, channels_last where it pays.
Precision = Literal["auto", "fp32", "bf16"]
MemoryFormat = Literal["auto", "contiguous", "channels_last"]


@dataclass(frozen=True)
class SearchSpec(Spec):
    """The inner, differentiable search of one trial (PoseNFS §3.1; DESIGN decision 4).

    Modes: ``first_order`` DARTS bilevel on an image-disjoint 2:1 split of train (default);
    ``sync`` the reference's joint optimisation of weights and alpha/beta on all of train;
    ``second_order`` DARTS unrolled (a functional virtual step, never a shared module);
    ``random`` alpha/beta drawn once from N(0, 1) and frozen; ``none`` alpha/beta frozen at 0.
    """

    mode: Literal["first_order", "sync", "second_order", "random", "none"] = "first_order"
    epochs: int = 10
    batch_size: int = 16  # images per optimizer step over all workers, whatever their number
    micro_batch: int | None = None  # images per worker per forward; None = batch / workers.
    # batch = workers × micro_batch × accumulation: when the worker count changes (elastic
    # training), accumulation absorbs it and alpha/beta see the same effective batch.
    weight_optimizer: OptimSpec = field(default_factory=OptimSpec)
    # no weight decay: coupled L2 holds α/β at α* ≈ −ḡ/wd, and with the reference's 1e-2 they
    # never leave uniform at small scale; lr 0.05 (reference 0.03, which left one coco-p3
    # quickstart seed at α entropy drop 0.045) (benchmarks/RESULTS.md "Search signal"; the
    # reference's settings: search/presets.py)
    arch_optimizer: OptimSpec = field(default_factory=lambda: OptimSpec(lr=5e-2, weight_decay=0.0))
    lr_schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    temperature: TemperatureSpec = field(default_factory=TemperatureSpec)
    collapse: CollapseSpec = field(default_factory=CollapseSpec)
    search_alpha: bool = True  # False really freezes alpha (not in any optimizer)
    search_beta: bool = True
    arch_start_epoch: int | None = None  # weight-only warm-up epochs; None: epochs // 6
    split: tuple[int, int] = (2, 1)  # weight : arch images in first/second order modes
    # weight steps per epoch, exactly, in every mode (passes over the weight split repeat,
    # reshuffled; first/second order take one α/β step per weight step); None = one pass
    steps_per_epoch: int | None = None
    val_every: int = 1  # validate every N epochs (and always at the last)
    loader_workers: int = 0
    random_arch_seed: int = 2  # seed of the 'random' baseline's alpha/beta draw (reference: 2)
    grad_clip: float | None = None
    precision: Precision = "auto"
    memory_format: MemoryFormat = "auto"
    # Search cost (nn/cell.py): PC-DARTS partial channels, 1/K of each edge's channels through
    # the mixed op (K must divide every cell's channels); GDAS sampling, one op per edge and step.
    partial_channels: int = 1
    sampling: Literal["mixed", "gumbel"] = "mixed"
    # weight of the mean normalised entropy of softmax(α/T) added to every α/β step's loss, a
    # pull toward one op per row, reached at the end of the search: it grows linearly from 0
    # (search/schedules.alpha_pull), so α's early leads are the loss's own. 0 = off (the
    # reference); benchmarks/RESULTS.md, "The α entropy pull"
    alpha_entropy_weight: float = 0.0
    # the α/β mixture the weight steps train under: "learned" (DARTS, the reference: the
    # weights adapt to the current α/β, and an input the mixture favours is trained more) or
    # "uniform" (α/β read as 0 in weight steps only: the weights never adapt to α/β, so α/β
    # move only as far as a uniformly trained supernet's gradient takes them; a control for
    # whether a search's decisions come from the data or from that feedback; first_order only).
    # benchmarks/RESULTS.md, "Where α/β's movement comes from"
    weight_mixture: Literal["learned", "uniform"] = "learned"
    # what β's gradient reads of each input: "mixture" (DARTS: the input as it enters the
    # mixture) or "layout" (its per-channel spatial mean enters at a detached weight, so β
    # moves by what the input's layout is worth, not by its first moment, which every part
    # gains from alike; forward values and the weights' gradients are unchanged; nn/cell.py
    # beta_mixture). A study setting: it did not make β follow the planted structure
    # (benchmarks/RESULTS.md, "Planted structure: what the data rewards")
    beta_gradient: Literal["mixture", "layout"] = "mixture"
    # how a cell reads its inputs in training: "mixed" (DARTS: Σ of every input weighted by
    # softmax(β)) or "gumbel" (GDAS applied to β: one input per cell and step, drawn from
    # softmax((β + Gumbel) / T), its soft gradient backward; eval reads the argmax input). With
    # mixed inputs the weights adapt to any β, so β weighs what an input adds on top; with drawn
    # ones every path must work alone, so β weighs which input a cell can do with. A study
    # setting (benchmarks/RESULTS.md, "Planted structure: pools instead of depth, hard cuts,
    # and drawn inputs")
    input_sampling: Literal["mixed", "gumbel"] = "mixed"
    # where the inputs of the derived genotype come from: "beta" (DARTS: β's argmax, or the
    # space's derivation rule) or "one_shot" (after the last epoch, random search with weight
    # sharing: ``one_shot_candidates`` single-input paths drawn uniformly, each part keeps the
    # one whose part scores best on the validation split; search/one_shot.py). Needs drawn
    # inputs, under which the weights trained as single paths; with mode "none" they were drawn
    # uniformly (a single-path one-shot model). Inputs only: the ops stay α's (frozen at 0 in
    # mode "none", where the derivation rule's tie-break picks them: use it with one op per
    # edge, or a mode that learns α). benchmarks/RESULTS.md, "One-shot selection"
    selection: Literal["beta", "one_shot"] = "beta"
    one_shot_candidates: int = 32

    LATE_FIELDS: ClassVar[tuple[str, ...]] = (
        "alpha_entropy_weight",
        "weight_mixture",
        "beta_gradient",
        "input_sampling",
        "selection",
        "one_shot_candidates",
    )

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.val_every < 1:
            raise SpecError("epochs, batch_size and val_every must be ≥ 1")
        if self.partial_channels < 1:
            raise SpecError(f"partial_channels: {self.partial_channels} must be ≥ 1")
        if min(self.split) < 1:
            raise SpecError(f"split: {list(self.split)} must be two positive integers")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.batch_size:
            raise SpecError("micro_batch must be in [1, batch_size] or null")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise SpecError("steps_per_epoch must be ≥ 1 or null")
        if self.arch_start_epoch is not None and not 0 <= self.arch_start_epoch <= self.epochs:
            raise SpecError("arch_start_epoch must be in [0, epochs] or null")
        if not 0 <= self.alpha_entropy_weight < math.inf:
            raise SpecError(f"alpha_entropy_weight: {self.alpha_entropy_weight} must be ≥ 0")
        if self.alpha_entropy_weight and not self.search_alpha:
            raise SpecError("alpha_entropy_weight: needs search_alpha (α is frozen)")
        if self.one_shot_candidates < 1:
            raise SpecError(f"one_shot_candidates: {self.one_shot_candidates} must be ≥ 1")
        if self.selection == "one_shot" and self.input_sampling != "gumbel":
            raise SpecError(
                "selection: one_shot needs input_sampling: gumbel (weights trained as single "
                f"paths), not {self.input_sampling}"
            )
        if self.weight_mixture == "uniform" and self.mode != "first_order":
            raise SpecError(f"weight_mixture: uniform needs mode first_order, not {self.mode}")

    @property
    def arch_start(self) -> int:
        """The first epoch whose steps move alpha/beta: ``arch_start_epoch``, or epochs // 6
        when null (2 of 12: the weights first learn enough for the α/β gradient to carry
        signal, and Adam's second moment does not start from the first, largest gradients)."""
        if self.arch_start_epoch is not None:
            return self.arch_start_epoch
        return self.epochs // 6

    @property
    def searches_arch(self) -> bool:
        """Whether alpha/beta receive gradient updates at all in this mode."""
        return self.mode in ("first_order", "sync", "second_order") and (
            self.search_alpha or self.search_beta
        )


# --------------------------------------------------------------------------------------------
# The trial: one concrete supernet search (what a trial's search receives)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrialSpec(Spec):
    """A fully resolved inner search: no distributions, no file references left.

    Built by ``CampaignSpec.trial(params)`` from the campaign and the outer choices Optuna made;
    it is the only input of ``search.loop.run_search``.
    """

    name: str
    seed: int
    data: DataSpec
    backbone: BackboneSpec
    fabric: FabricSpace
    grouping: PartGrouping
    search: SearchSpec
    params: dict[str, Any] = field(default_factory=dict)  # the outer choices, for tracking

    def __post_init__(self) -> None:
        check_compatible(self.fabric, self.grouping, self.data.dataset, self.data.input_size)
        check_partial_channels(self.fabric, self.search)

    def fingerprint(self) -> str:
        return fingerprint(self.identity())


def check_compatible(
    fabric: FabricSpace, grouping: PartGrouping, dataset: str, input_size: tuple[int, int]
) -> None:
    """Cross-spec checks that no single spec can make on its own."""
    w, h = input_size
    coarsest = fabric.scales[-1]
    if w % coarsest or h % coarsest:
        raise SpecError(
            f"input size {w}x{h} is not divisible by the fabric's coarsest stride {coarsest}"
        )
    want = "mpii16" if dataset == "mpii" else "coco17"
    if grouping.schema.name != want:
        raise SpecError(
            f"grouping {grouping.name} is for {grouping.schema.name}, the data is {dataset}"
        )


def check_partial_channels(fabric: FabricSpace, search: SearchSpec) -> None:
    """``search.partial_channels`` must divide the channels of every cell of ``fabric``."""
    k, channels = search.partial_channels, fabric.channels()
    if any(c % k for c in channels):
        raise SpecError(
            f"search.partial_channels: {k} does not divide every cell's channels {channels} "
            f"(fabric {fabric.name})"
        )


# --------------------------------------------------------------------------------------------
# Where a trial runs and where its state lives
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceSpec(Spec):
    """Where trials run. Fractional CPUs are fine (a 2-core machine runs 2 workers at 0.5)."""

    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    trial_cpus: float = 0.25  # the Tune trial (driver) actor itself
    backend: Literal["auto", "gloo", "nccl"] = "auto"  # auto: nccl with GPUs, else gloo
    checkpoints_to_keep: int = 2
    # extra custom resources each Train worker needs, e.g. {worker_node: 0.5} to keep workers
    # on nodes started with --resources '{"worker_node": N}' (the driver stays where Tune puts it)
    worker_resources: dict[str, float] = field(default_factory=dict)
    trial_resources: dict[str, float] = field(default_factory=dict)  # e.g. {head_node: 0.01}
    # Search trials only. auto: a trial with one worker runs its search inside the Tune trial
    # actor, which then holds the worker's resources (trial_cpus + cpus_per_worker, the GPU,
    # worker_resources; not trial_resources): no Ray Train controller and worker group to start,
    # ≈ 10 s less per trial; a failure is retried by budget.trial_retries. always: every trial
    # starts a TorchTrainer (budget.worker_retries applies).
    worker_group: Literal["auto", "always"] = "auto"

    def __post_init__(self) -> None:
        if self.workers_per_trial < 1 or self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise SpecError("workers_per_trial ≥ 1, cpus_per_worker > 0, gpus_per_worker ≥ 0")

    @property
    def search_in_trial_actor(self) -> bool:
        """Whether a search trial runs its loop in the Tune trial actor (no worker group)."""
        return self.worker_group == "auto" and self.workers_per_trial == 1


@dataclass(frozen=True)
class StorageSpec(Spec):
    """Where state lives. Empty values default under the root folder (``--root``)."""

    ray_storage: str | None = None  # Ray storage_path (shared: NFS/S3/GCS for multi-node)
    mlflow_uri: str | None = None  # default sqlite:///<root>/mlflow.db
    optuna_storage: str | None = None  # optional Optuna RDB URL


# --------------------------------------------------------------------------------------------
# Retraining a derived network
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetrainSpec(Spec):
    """Training the derived network of a genotype (``posenfs retrain``).

    The genotype comes from the command line (registry alias, run artifact or file), never from
    this file; ``init_weights`` optionally starts from a posenfs checkpoint (e.g. an imported
    reference model), copying every weight the derived network shares with it.
    """

    name: str
    data: DataSpec
    backbone: BackboneSpec
    epochs: int = 10
    batch_size: int = 16
    micro_batch: int | None = None
    optimizer: OptimSpec = field(default_factory=OptimSpec)
    lr_schedule: ScheduleSpec = field(default_factory=ScheduleSpec)
    val_every: int = 1
    steps_per_epoch: int | None = None
    loader_workers: int = 0
    init_weights: str | None = None
    grad_clip: float | None = None
    precision: Precision = "auto"
    memory_format: MemoryFormat = "auto"
    seed: int = 0
    model_name: str | None = None  # registered model; default posenfs-<dataset>-retrained
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    storage: StorageSpec = field(default_factory=StorageSpec)

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.val_every < 1:
            raise SpecError("epochs, batch_size and val_every must be ≥ 1")
        if self.micro_batch is not None and not 1 <= self.micro_batch <= self.batch_size:
            raise SpecError("micro_batch must be in [1, batch_size] or null")

    def fingerprint(self) -> str:
        body = self.identity()
        for key in ("resources", "storage"):
            body.pop(key)
        return fingerprint(body)


def load_retrain(path: str | Path, overrides: tuple[str, ...] = ()) -> RetrainSpec:
    """Reads a retrain YAML with dotted ``--set`` overrides."""
    return load_spec(RetrainSpec, path, overrides)


def data_spec_from_file(path: str | Path, overrides: tuple[str, ...] = ()) -> DataSpec:
    """The ``data`` section of a campaign or retrain YAML (or a file holding only a DataSpec)."""
    p = Path(path)
    data = apply_overrides(read_yaml(p), overrides)
    body = data.get("data", data)
    try:
        return DataSpec.from_dict(body, path="data" if "data" in data else "")
    except SpecError as e:
        raise SpecError(f"{p}: {e}") from None


def replace(spec: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that re-runs validation (specs are never mutated)."""
    return dataclasses.replace(spec, **changes)
