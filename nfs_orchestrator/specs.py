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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.keypoints import PartGrouping, load_grouping, resolve_ref
from nfs_orchestrator.strict import (
    apply_overrides,
    fingerprint,
    from_mapping,
    read_yaml,
    suggest,
    to_plain,
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
BACKBONE_NAMES = ("tiny", "resnet50", "mobilenet_v2", "hrnet_w32")
PARAMETER_FREE_OPS = ("zero", "skip_connect", "avg_pool_3x3", "max_pool_3x3")


# --------------------------------------------------------------------------------------------
# Search space of one part fabric
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DerivationRule:
    """How a discrete genotype is read from alpha/beta (see genotype.derive_genotype).

    ops: ``argmax_nonzero`` keeps, per edge, the op with the largest alpha excluding ``zero``
    (DARTS). inputs: ``argmax`` keeps each cell's strongest input; ``threshold`` keeps every
    input whose softmax(beta) ≥ ``beta_threshold`` (at least the strongest one). Cells that no
    kept path leads from to the output are dropped.
    """

    ops: Literal["argmax_nonzero"] = "argmax_nonzero"
    inputs: Literal["argmax", "threshold"] = "argmax"
    beta_threshold: float = 0.3  # only read when inputs == "threshold"

    def __post_init__(self) -> None:
        if not 0.0 < self.beta_threshold <= 1.0:
            raise SpecError(f"beta_threshold: {self.beta_threshold} is not in (0, 1]")


@dataclass(frozen=True)
class FabricSpace:
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
            raise SpecError(f"ops: unknown op {bad[0]!r}{suggest(bad[0], OP_NAMES)}; known: "
                            f"{list(OP_NAMES)}")
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

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> FabricSpace:
        return from_mapping(cls, data, path)


def load_fabric(ref: str, overrides: tuple[str, ...] = ()) -> FabricSpace:
    """Loads ``search_spaces/fabrics/<ref>.yaml`` (or a path) with dotted overrides."""
    path = resolve_ref(ref, "fabrics")
    data = apply_overrides(read_yaml(path), overrides)
    data.setdefault("name", path.stem)
    try:
        return FabricSpace.from_dict(data)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AugmentSpec:
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
class SyntheticSpec:
    """A generated COCO-format keypoint set (data/synthetic.py), written once under data.root."""

    train_images: int = 96
    val_images: int = 32
    image_size: tuple[int, int] = (128, 128)  # (W, H) of generated images
    seed: int = 0


@dataclass(frozen=True)
class DataSpec:
    """A top-down pose dataset: where it is, how crops and targets are made, how it is scored.

    Relative paths resolve against ``root``. ``dataset: synthetic`` writes a small COCO-format set
    under ``root`` on first use and then reads it exactly like COCO.
    """

    dataset: Literal["coco", "mpii", "synthetic"]
    root: str = "."
    train_annotations: str = ""  # COCO person_keypoints_*.json or MPII train.json
    train_images: str = ""  # image folder
    val_annotations: str = ""
    val_images: str = ""
    val_gt_mat: str | None = None  # MPII gt_valid.mat (PCKh ground truth)
    detections: str | None = None  # COCO person detections for validation (else GT boxes)
    det_score_threshold: float = 0.0
    input_size: tuple[int, int] = (192, 256)  # (W, H) of the network input
    sigma: float = 2.0  # Gaussian target sigma in heatmap pixels
    margin: float = 1.25  # box enlargement before the crop
    augment: AugmentSpec = field(default_factory=AugmentSpec)
    flip_test: bool = True
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
        if self.dataset in ("coco", "mpii") and not self.train_annotations:
            raise SpecError(f"train_annotations: required for dataset {self.dataset}")

    @property
    def heatmap_size(self) -> tuple[int, int]:
        """(W, H) of the target heatmaps: input / 4."""
        return self.input_size[0] // 4, self.input_size[1] // 4

    def path(self, relative: str) -> Path:
        """A path of this spec resolved against ``root``."""
        p = Path(relative)
        return p if p.is_absolute() else Path(self.root) / p

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> DataSpec:
        return from_mapping(cls, data, path)


def replace(spec: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that re-runs validation (specs are never mutated)."""
    return dataclasses.replace(spec, **changes)


def spec_fingerprint(spec: Any) -> str:
    return fingerprint(spec)
