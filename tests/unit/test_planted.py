"""Planted structure in the synthetic set: each mode writes its own set, its context limb group
has nothing at its keypoints and its detail group a dot (or, on the sided plant, a ticked
disc), the swap exchanges them. On the dot plant a part-specific search reads the planted roles
(β: in the reversed direction) and the weights rely on context for the ring group, both
following the dot's invisibility; on the sided plant, where both marks are equally locatable,
the trained supernet relies on the coarser rows' layout for the ring group (the intended
direction, read from its weights) and β is at chance (benchmarks/RESULTS.md, "Planted
structure"). Trained at two fixed output rows with no search, the coloured plant's ring and
detail groups gain alike from the coarser input: the plants hold no difference for β to find
("Planted structure: what the data rewards"). With σ = 1 heatmaps and a pooled test backbone
the coloured plant passes a hard-cut oracle, β still does not find it, and a one-shot search
(``search.selection: one_shot``) does: the last test below ("One-shot selection on the σ = 1
plant")."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from nfs_orchestrator.confidence import coarseness
from nfs_orchestrator.data.synthetic import write_synthetic_coco
from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.genotype import Genotype, derive_genotype, read_genotype
from nfs_orchestrator.geometry import SLOTS, fabric_sites
from nfs_orchestrator.keypoints import load_grouping

SCHEMA = load_grouping("coco-p3").schema


def _marked_share(
    root, joint: str, rgb: tuple[int, int, int], outward: int = 0, side: str | None = None
) -> float:
    """Share of the labelled (v = 2) ``joint`` keypoints (of one ``side`` only, if given) with
    the colour ``rgb`` (within 80 per channel, after JPEG) in the 3 × 3 pixel neighbourhood of
    their spot, or, with ``outward``, at the one pixel that many px toward the joint's own side
    (image-right for left joints)."""
    anns = json.loads((root / "annotations" / "person_keypoints_train.json").read_text())
    hits, total = 0, 0
    for ann in anns["annotations"]:
        for name, sign in (("left", 1), ("right", -1)):
            if side not in (None, name):
                continue
            i = SCHEMA.keypoints.index(f"{name}_{joint}")
            x, y, v = ann["keypoints"][3 * i : 3 * i + 3]
            if v != 2:
                continue
            img = cv2.imread(str(root / "train" / f"{ann['image_id']:012d}.jpg"))[..., ::-1]
            r, c = int(round(y)), int(round(x))
            if outward:
                c += sign * outward
                patch = img[r : r + 1, max(0, c) : c + 1].astype(int)  # (1, ≤1, 3)
            else:
                patch = img[max(0, r - 1) : r + 2, max(0, c - 1) : c + 2].astype(int)  # (≤3, ≤3, 3)
            hits += int(patch.size > 0 and np.abs(patch - rgb).max(axis=-1).min() < 80)
            total += 1
    assert total >= 8  # enough keypoints to mean something
    return hits / total


def test_planted_sets_mark_one_limb_group_by_context_and_swap_it(tmp_path):
    kw = dict(train_images=8, val_images=1, image_size=(96, 96), seed=0, schema=SCHEMA)
    wrist, ankle = (0, 0, 255), (160, 0, 255)  # _COLORS
    plain = write_synthetic_coco(tmp_path / "plain", **kw)
    assert "planted" not in json.loads((plain / "synthetic.json").read_text())
    assert _marked_share(plain, "wrist", wrist) > 0.5 and _marked_share(plain, "ankle", ankle) > 0.5
    marked = {}
    for mode in MODES:
        root = write_synthetic_coco(tmp_path / mode, **kw, planted=mode)
        assert json.loads((root / "synthetic.json").read_text())["planted"] == mode
        marked[mode] = (_marked_share(root, "wrist", wrist), _marked_share(root, "ankle", ankle))
    legs_wrist, legs_ankle = marked["context_legs"]  # legs: rings (nothing at the spot)
    arms_wrist, arms_ankle = marked["context_arms"]  # arms: rings
    assert legs_ankle < 0.2 and legs_wrist > 0.5, marked
    assert arms_wrist < 0.2 and arms_ankle > 0.5, marked


def test_sided_plant_ticks_its_detail_marks_outward_and_keeps_the_rings(tmp_path):
    """The "sided" detail mark (a disc with a tick toward the joint's own side, so a fine row
    tells left from right without the body axis) sits on the spot, its tick 3 px outward and
    not inward; the context group keeps its rings (nothing at the spot)."""
    kw = dict(train_images=8, val_images=1, image_size=(96, 96), seed=0, schema=SCHEMA)
    wrist, elbow, ankle = (0, 0, 255), (0, 255, 0), (160, 0, 255)  # _COLORS
    root = write_synthetic_coco(tmp_path / "sided", **kw, planted=PLANTS["sided"][0])
    plain_dots = write_synthetic_coco(tmp_path / "dot", **kw, planted=PLANTS["dot"][0])
    for joint, rgb in (("wrist", wrist), ("elbow", elbow)):  # arms: the detail group here
        assert _marked_share(root, joint, rgb) > 0.8
        assert _marked_share(root, joint, rgb, outward=3) > 0.5
        assert _marked_share(root, joint, rgb, outward=-3) < 0.2
        assert _marked_share(plain_dots, joint, rgb, outward=3) < 0.2  # the dot has no tick
    assert _marked_share(root, "ankle", ankle) < 0.2  # legs: rings


def test_coloured_plant_gives_right_detail_joints_their_own_colour(tmp_path):
    """The "coloured" detail mark: left joints in their pair's colour, right joints in one of
    their own (so the side is read at the spot); the context group keeps its rings."""
    from nfs_orchestrator.data.synthetic import _RIGHT_COLORS

    kw = dict(train_images=8, val_images=1, image_size=(96, 96), seed=0, schema=SCHEMA)
    root = write_synthetic_coco(tmp_path / "coloured", **kw, planted=PLANTS["coloured"][1])
    wrist, ankle = (0, 0, 255), (160, 0, 255)  # _COLORS; legs carry the detail marks here
    assert _marked_share(root, "wrist", wrist) < 0.2  # arms: rings
    for side, rgb in (("left", ankle), ("right", _RIGHT_COLORS["ankle"])):
        other = _RIGHT_COLORS["ankle"] if side == "left" else ankle
        assert _marked_share(root, "ankle", rgb, side=side) > 0.8
        assert _marked_share(root, "ankle", other, side=side) < 0.2


def test_coloured_plant_is_refused_with_flip_augmentation():
    from nfs_orchestrator.specs import AugmentSpec, DataSpec, SyntheticSpec

    planted = SyntheticSpec(planted="context_legs_coloured")
    with pytest.raises(SpecError, match="augment.flip: must be false with synthetic.planted"):
        DataSpec(dataset="synthetic", input_size=(64, 64), synthetic=planted)
    DataSpec(
        dataset="synthetic", input_size=(64, 64), synthetic=planted, augment=AugmentSpec(flip=False)
    )


def test_the_spec_accepts_exactly_the_modes_the_generator_draws():
    import typing

    from nfs_orchestrator.data.synthetic import PLANTED
    from nfs_orchestrator.specs import SyntheticSpec

    hint = typing.get_type_hints(SyntheticSpec)["planted"]
    assert typing.get_args(hint) == PLANTED
    assert {m for pair in PLANTS.values() for m in pair} == set(PLANTED) - {"none"}


def test_unknown_planted_mode_is_refused_with_the_known_ones(tmp_path):
    with pytest.raises(SpecError, match="context_legs"):
        write_synthetic_coco(
            tmp_path / "x", train_images=1, val_images=1, image_size=(64, 64), seed=0,
            schema=SCHEMA, planted="context_detail",
        )  # fmt: skip
    assert not (tmp_path / "x").exists()  # nothing written


# A plant and its swap (data/synthetic.py), per detail mark: "dot" the face-size dot of sessions
# 5-8 (hard to see: benchmarks/RESULTS.md, "one batch of 60 fresh seeds"), "sided" a larger
# disc with a tick that tells its side, locatable at the finest row.
PLANTS = {
    "dot": ("context_legs", "context_arms"),
    "sided": ("context_legs_sided", "context_arms_sided"),
    "coloured": ("context_legs_coloured", "context_arms_coloured"),
}
MODES = PLANTS["dot"]
SETTINGS = (  # the quickstart's trial, cut down (benchmarks/RESULTS.md, "Planted structure")
    "grouping=groupings/coco-p3",
    "data.synthetic.train_images=192",
    "data.synthetic.val_images=8",
    "search.epochs=6",
    "search.val_every=6",
    "search.arch_start_epoch=1",
    "search.precision=fp32",  # fp32 everywhere (auto would pick bf16 on CPUs with a bf16 path)
    "search.memory_format=contiguous",
)


# The tiny fabric (search_spaces/fabrics/tiny.yaml) with one op: every cell is its β-mixed inputs
# and a 1×1 conv, so a row-0 cell sees far only through β's "below" input (a coarser row): the
# search's one decision per cell is the scale it reads, the preference the plant is about.
FABRIC = """\
name: tiny-scales
depth: 4
cut: 1
scales: [4, 8, 16, 32]
channel_factor: 4
hidden_nodes: 1
input_nodes: 1
ops: [skip_connect]
alpha_sharing: part
head: plain
derivation: {ops: argmax_nonzero, inputs: argmax}
"""


def genotype_lean(genotype: Genotype) -> float:
    """The derived genotype's version of the lean: per part, the mean row offset (source row −
    own row) of the inputs its kept cells read; lower_limb's minus upper_limb's."""
    site = {(s.scale, s.depth): s for layer in fabric_sites(genotype.space) for s in layer}
    mean = {}
    for part in genotype.parts:
        offsets = [
            site[cell.scale, cell.depth].offsets()[SLOTS.index(slot)]
            for cell in part.cells
            for slot in cell.inputs
        ]
        mean[part.name] = sum(offsets) / len(offsets)
    return mean["lower_limb"] - mean["upper_limb"]


def genotype_field(genotype: Genotype) -> float:
    """How far the derived network sees, per part: the coarsest row (0 = stride 4) that any
    input of its kept cells reads, the backbone's pyramid included; lower_limb's minus
    upper_limb's. On a network of single-input cells, the coarsest row its one path to the
    heatmap passes through (``genotype_lean``, a mean offset, is 0 on every path that leaves
    row 0 and comes back)."""
    site = {(s.scale, s.depth): s for layer in fabric_sites(genotype.space) for s in layer}
    field = {
        part.name: max(
            site[cell.scale, cell.depth].sources[SLOTS.index(slot)]
            for cell in part.cells
            for slot in cell.inputs
        )
        for part in genotype.parts
    }
    return field["lower_limb"] - field["upper_limb"]


BELOW = SLOTS.index("below")


def output_row_cells(space) -> list[int]:
    """The row-0 (stride-4) cells whose ``below`` is a coarser row, as indices in β's row
    order: the one way anything wider than the backbone's stride-4 field reaches the heatmap."""
    sites = [s for layer in fabric_sites(space) for s in layer]
    return [i for i, s in enumerate(sites) if s.scale == 0 and s.sources[BELOW] > 0]


def output_row_lean(space, weights: dict) -> float:
    """The lean at the output row only: per part, the mean softmax(β) weight of ``below`` over
    ``output_row_cells``; lower_limb's minus upper_limb's (0 under uniform β)."""
    rows = output_row_cells(space)
    below = {
        part: sum(float(w["beta"][i][BELOW]) for i in rows) / len(rows)
        for part, w in weights.items()
    }
    return below["lower_limb"] - below["upper_limb"]


def plant_sets(mode: str) -> tuple[str, ...]:
    """The data settings a planted ``mode`` needs: no flip augmentation for the ``_coloured``
    modes (their colours tell left from right, which a flip would swap; specs.DataSpec)."""
    return ("data.augment.flip=false",) if mode.endswith("_coloured") else ()


def planted_trial(root, seed: int, mode: str, sets: tuple[str, ...] = ()):
    """The search trial of one planted run: the quickstart's trial on the ``mode`` set with the
    single-op fabric (``FABRIC``, written under ``root``) and ``SETTINGS``."""
    from nfs_orchestrator.campaign_spec import load_campaign
    from tests.unit.test_search_defects import QUICKSTART

    fabric = root / "fabric-tiny-scales.yaml"
    if not fabric.is_file():
        root.mkdir(parents=True, exist_ok=True)
        fabric.write_text(FABRIC)
    overrides = (
        f"data.root={root / 'data'}",
        f"fabric={fabric}",
        f"seed={seed}",
        f"data.synthetic.planted={mode}",
        *plant_sets(mode),
        *SETTINGS,
        *sets,
    )
    return load_campaign(QUICKSTART, overrides).trial({})


def mean_part_losses(model, data, indices, grouping, run, grad: bool = False) -> dict[str, float]:
    """Each part's mean heatmap loss (``joints_mse`` on its keypoints) over the images
    ``indices`` of ``data``, in batches of 16, with ``model`` as it is (train or eval mode);
    with ``grad``, every batch's summed loss is also back-propagated (gradients accumulate in
    the parameters, β included)."""
    import torch

    from nfs_orchestrator.loop_utils import epoch_batches
    from nfs_orchestrator.nn.losses import joints_mse

    index = {p.name: grouping.indices(p) for p in grouping.parts}
    sums = dict.fromkeys(index, 0.0)
    steps = 0
    with torch.set_grad_enabled(grad):
        for (b,) in epoch_batches(data, indices, 16, 1, run, seed=0):
            pred = model(b["image"])  # (B, K, h, w)
            losses = {
                name: joints_mse(pred[:, idx], b["heatmaps"][:, idx], b["target_weight"][:, idx])
                for name, idx in index.items()
            }
            if grad:
                sum(losses.values()).backward()
            for name, loss in losses.items():
                sums[name] += float(loss.detach())
            steps += 1
    return {name: total / steps for name, total in sums.items()}


def supernet_readout(trial, run, state: dict):
    """The trained supernet of the search that ran in ``run`` (``state``: its checkpoint), in
    eval mode at its last temperature, and a function that gives each part's mean heatmap loss
    on the α/β split (images the weights never trained on, unaugmented)."""
    from nfs_orchestrator.data.dataset import build_dataset
    from nfs_orchestrator.data.split import split_image_disjoint
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from nfs_orchestrator.search.schedules import temperature

    model = PoseSupernet(
        trial.fabric, trial.grouping, build_backbone(trial.backbone.name, random_init=True)
    )
    model.load_state_dict(state["model"])
    model.eval()
    model.sample_inputs = trial.search.input_sampling == "gumbel"  # as the search's eval reads it
    epochs = trial.search.epochs
    model.temperature = temperature(trial.search.temperature, (epochs - 1) / epochs)
    data = build_dataset(trial.data, trial.grouping.schema, "train", train=False)
    _, arch_idx = split_image_disjoint(data, trial.search.split, trial.seed)

    def part_losses(grad: bool = False) -> dict[str, float]:
        """Each part's mean loss on the α/β split (``mean_part_losses``)."""
        return mean_part_losses(model, data, arch_idx, trial.grouping, run, grad)

    return model, part_losses


def context_reliance(trial, run, state: dict, ablation: str = "cut") -> dict[str, float]:
    """Per part, how much its heatmap loss on the α/β split rises when every
    ``output_row_cells`` cell of its fabric loses its coarser input: how much the trained
    supernet (``supernet_readout``) relies, for that part, on anything wider than the
    backbone's stride-4 field. A readout of the weights by what removing an input costs (Wang
    et al. 2021), not of β. ``ablation``: ``cut`` sets softmax(β) of ``below`` to 0 there (the
    other slots renormalised); ``mean`` replaces that input by its per-image, per-channel
    spatial mean (its weight and first moment kept, its layout gone: less of the common-mode
    break a cut causes in every part)."""
    import torch

    model, part_losses = supernet_readout(trial, run, state)
    plain = part_losses()
    rows = output_row_cells(trial.fabric)
    for fabric in model.parts.values():
        if ablation == "cut":  # the slot's weight to 0, the others renormalised
            with torch.no_grad():
                fabric.beta[rows, BELOW] = float("-inf")
            continue
        for i in rows:  # "mean": the input keeps its weight and per-channel mean, not its layout
            fabric.cells[fabric.sites[i].key].resample[BELOW].register_forward_hook(
                lambda _m, _x, y: y.mean(dim=(2, 3), keepdim=True).expand_as(y)
            )
    ablated = part_losses()
    return {name: ablated[name] - plain[name] for name in plain}


def forced_output_row(trial, run, state: dict) -> dict[str, dict[str, dict[str, float]]]:
    """Per part, its val AP and mean val heatmap loss when every ``output_row_cells`` cell of
    its fabric reads one input only, its own row (``parallel``) or the coarser one (``below``),
    every other cell as the supernet reads it in eval: {part: {slot: {"ap", "loss"}}}. For a
    supernet trained on drawn single inputs (``search.input_sampling: gumbel``; with
    ``search.mode: none`` every path drawn uniformly, a single-path one-shot model, Guo et al.
    2019), whose weights trained under exactly such cells: two candidate networks evaluated on
    the shared weights, as a one-shot search ranks candidates."""
    import torch

    from nfs_orchestrator.data.dataset import build_dataset
    from nfs_orchestrator.loop_utils import validate

    model, _ = supernet_readout(trial, run, state)
    schema = trial.grouping.schema
    data = build_dataset(trial.data, schema, "val", train=False)
    rows = output_row_cells(trial.fabric)
    out: dict[str, dict[str, dict[str, float]]] = {p.name: {} for p in trial.grouping.parts}
    for slot in ("parallel", "below"):
        with torch.no_grad():
            for fabric in model.parts.values():
                fabric.beta[rows] = float("-inf")
                fabric.beta[rows, SLOTS.index(slot)] = 0.0
        metrics = validate(model, data, trial.data, schema, torch.device("cpu"))
        losses = mean_part_losses(model, data, list(range(len(data))), trial.grouping, run)
        for name in out:
            out[name][slot] = {"ap": metrics[f"val_ap.{name}"], "loss": losses[name]}
    return out


def beta_pull(trial, run, state: dict) -> dict[str, float]:
    """Per part, −∂(its α/β-split loss)/∂β of ``below``, mean over ``output_row_cells``, on the
    trained supernet (``supernet_readout``: eval-mode BatchNorm, where the search's α/β steps
    ran in train mode; gradients summed over the split's batches): how the DARTS objective
    still pulls those cells at the end of the search, > 0 toward their coarser input."""
    model, part_losses = supernet_readout(trial, run, state)
    model.sample_inputs = False  # the mixture's gradient (an argmax input has none)
    part_losses(grad=True)
    rows = output_row_cells(trial.fabric)
    return {name: float(-f.beta.grad[rows, BELOW].mean()) for name, f in model.parts.items()}


def removal_genotype(trial, run, state: dict) -> Genotype:
    """The genotype an input-removal derivation keeps (Wang et al. 2021, one shot): per cell,
    the source row whose removal (its slots' softmax(β) to 0, the rest renormalised; one cell
    at a time, every part at once since the parts' fabrics are independent) raises that part's
    α/β-split loss most, then the space's rule as for β (ops, cells on a kept path)."""
    import torch

    model, part_losses = supernet_readout(trial, run, state)
    plain = part_losses()
    sites = [s for layer in fabric_sites(trial.fabric) for s in layer]
    # per part, a β whose softmax is one-hot on the first slot of the costliest source row
    chosen = {name: torch.full((len(sites), len(SLOTS)), float("-inf")) for name in plain}
    for i, site in enumerate(sites):
        rows = sorted(set(site.sources))
        cost: dict[str, list[float]] = {name: [] for name in plain}
        for row in rows:
            slots = [k for k, src in enumerate(site.sources) if src == row]
            saved = {name: fabric.beta.detach().clone() for name, fabric in model.parts.items()}
            with torch.no_grad():
                for fabric in model.parts.values():
                    fabric.beta[i, slots] = float("-inf")
            cut = part_losses() if len(rows) > 1 else plain
            with torch.no_grad():
                for name, fabric in model.parts.items():
                    fabric.beta.copy_(saved[name])
            for name in plain:
                cost[name].append(cut[name] - plain[name])
        for name in plain:
            best = max(range(len(rows)), key=lambda r: (cost[name][r], -r))  # ties: finer row
            chosen[name][i, site.sources.index(rows[best])] = 0.0
    arch = {name: (fabric.alpha, chosen[name]) for name, fabric in model.parts.items()}
    return derive_genotype(trial.fabric, trial.grouping, arch, backbone=trial.backbone.name)


def gain(forced: dict, key: str, part: str) -> float:
    """What the coarser input pays ``part`` in a ``forced_output_row`` readout: its val AP
    gain (``key`` "ap") or val loss fall ("loss") from ``parallel`` to ``below``."""
    below, parallel = forced[part]["below"][key], forced[part]["parallel"][key]
    return below - parallel if key == "ap" else parallel - below


def planted_run(
    root, seed: int, mode: str, sets: tuple[str, ...] = (), removal: bool = False
) -> dict:
    """One search on the ``mode`` set (or the finished one found in its folder); from its final
    softmax(β), the legs' ``lean`` = coarseness(lower_limb) − coarseness(upper_limb): how much
    coarser rows the legs' cells read than the arms' (``confidence.coarseness``; 0 under
    uniform β, as the parts share one geometry); the legs' reliance on context over the arms'
    (``context_reliance``, by a cut and, as ``layout_reliance_lean``, by removing the coarser
    input's layout only) and the same lean of ``beta_pull``; the lean of what the coarser
    output-row input pays in val AP and loss (``forced_output_row``, ``gain``); the derived
    genotype's ``genotype_lean`` and ``genotype_field``; with ``removal``, the lean of the
    ``removal_genotype`` too."""
    import torch

    from nfs_orchestrator.runtime import LocalRuntime
    from nfs_orchestrator.search.loop import STATE_FILE, run_search

    trial = planted_trial(root, seed, mode, sets)
    run_dir = root / f"seed{seed}-{mode}"
    run = LocalRuntime(run_dir, verbose=False)
    metrics = run_search(trial, run)
    state = torch.load(run.latest_checkpoint() / STATE_FILE, weights_only=True)
    history = state["history"]
    last = history[-1]
    c = coarseness(trial.fabric, last)
    genotype = read_genotype(run_dir / "artifacts" / "genotype.json")
    reliance = context_reliance(trial, run, state)
    layout = context_reliance(trial, run, state, ablation="mean")
    pull = beta_pull(trial, run, state)
    forced = forced_output_row(trial, run, state)
    removed = removal_genotype(trial, run, state) if removal else None
    return {
        "lean": c["lower_limb"] - c["upper_limb"],
        "output_row_lean": output_row_lean(trial.fabric, last),
        "output_row_by_epoch": [output_row_lean(trial.fabric, h) for h in history],
        "reliance_lean": reliance["lower_limb"] - reliance["upper_limb"],
        "reliance": reliance,
        "layout_reliance_lean": layout["lower_limb"] - layout["upper_limb"],
        "layout_reliance": layout,
        "beta_pull_lean": pull["lower_limb"] - pull["upper_limb"],
        "forced_ap_lean": gain(forced, "ap", "lower_limb") - gain(forced, "ap", "upper_limb"),
        "forced_loss_lean": gain(forced, "loss", "lower_limb") - gain(forced, "loss", "upper_limb"),
        "forced": forced,
        "genotype_lean": genotype_lean(genotype),
        "genotype_field_lean": genotype_field(genotype),
        "removal_genotype_lean": None if removed is None else genotype_lean(removed),
        "coarseness": c,
        "arch": last,  # softmax(α), softmax(β) per part
        "val_ap": metrics.get("val_ap", float("nan")),
        "part_ap": {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith("val_ap.")},
    }


SEEDS = (0, 1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def flips(tmp_path_factory) -> list[float]:
    """Per seed, the legs' lean on the plant minus their lean on the swap (12 searches, each
    ≈ 30–60 s on 2 idle CPU cores with one thread; 3–5 min under heavy load)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("planted")
    return [
        planted_run(root, seed, MODES[0])["lean"] - planted_run(root, seed, MODES[1])["lean"]
        for seed in SEEDS
    ]


@pytest.mark.slow
def test_the_search_reads_the_planted_roles(flips):
    """Exchanging which limb group is context and which is detail moves the legs' lean (over
    the arms) the same way in every one of 6 seeds: the search's part-specific scale choice
    follows the plant. If the search ignored it, each flip's sign would be a coin toss and 6
    equal signs would happen with probability 2/64 = 0.031."""
    assert all(f < 0 for f in flips) or all(f > 0 for f in flips), flips


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured: at this budget the context group reads FINER rows than the detail "
    "group (benchmarks/RESULTS.md, 'Planted structure: a swap test'); XPASS = it now reads coarser",
)
def test_the_context_group_reads_coarser_rows(flips):
    """The intended preference: the legs lean further toward coarser rows when they are the
    context group than when they are the detail group, in all 6 seeds (chance 1/64)."""
    assert all(f > 0 for f in flips), flips


# The pre-registered longer search (benchmarks/RESULTS.md, "Planted structure: a pre-registered
# longer search"): 384 images, 10 epochs, 2 weight-only warm-up epochs, fresh seeds 12-23.
LONGER = (
    "data.synthetic.train_images=384",
    "search.epochs=10",
    "search.val_every=10",
    "search.arch_start_epoch=2",
)
FRESH_SEEDS = tuple(range(12, 24))


def longer_flips(
    tmp_path_factory, folder: str, seeds, lean: str, modes: tuple[str, str] = MODES
) -> list[float]:
    """Per seed, ``planted_run``'s ``lean`` on the plant minus on the swap (``modes``), at the
    ``LONGER`` budget (two searches per seed, ≈ 45 s each on an idle core with one thread)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp(folder)
    flips = []
    for seed in seeds:
        legs, arms = (planted_run(root, seed, mode, LONGER)[lean] for mode in modes)
        flips.append(legs - arms)
    return flips


@pytest.fixture(scope="module")
def reliance_flips(tmp_path_factory) -> list[float]:
    """Per seed, the legs' reliance on context over the arms' (``context_reliance``) on the
    plant minus on the swap (24 searches)."""
    return longer_flips(tmp_path_factory, "planted-longer", FRESH_SEEDS, "reliance_lean")


@pytest.mark.slow
def test_the_trained_supernet_relies_on_context_for_the_context_group(reliance_flips):
    """The intended preference, read from the trained supernet's weights: cutting the coarser
    input of every output-row cell costs a limb group more when it is the context (ring) group
    than when it is the detail (dot) group. Written down before seeds 12-23 first ran (2026-11-30
    06:36 UTC): ≥ 10 of 12 flips > 0, P = 79/4096 = 0.019 if the weights ignored the plant;
    measured 10 of 12. β does not show it (the whole-fabric flip was < 0 in 10 of the 12), so
    this is what the supernet learnt, not what β or the derived genotype say."""
    assert sum(f > 0 for f in reliance_flips) >= 10, reliance_flips


# Pre-registered 2026-11-30 09:36 UTC (benchmarks/RESULTS.md, "an input-removal derivation, and
# the derived genotype's sign"), before these seeds first ran.
OUTPUT_ROW_SEEDS = tuple(range(48, 72))


@pytest.fixture(scope="module")
def output_row_flips(tmp_path_factory) -> list[float]:
    """Per seed, the output-row β lean on the plant minus on the swap (48 searches)."""
    return longer_flips(tmp_path_factory, "planted-output-row", OUTPUT_ROW_SEEDS, "output_row_lean")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured: 15 of 24 > 0 on seeds 48-71, short of 17 (benchmarks/RESULTS.md, "
    "'an input-removal derivation, and the derived genotype's sign'); XPASS = β now shows it",
)
def test_the_search_weighs_context_higher_at_the_output_row_for_the_context_group(
    output_row_flips,
):
    """The intended preference in β where it reaches the heatmap: the output-row cells weigh
    their coarser input more for a limb group when it is the context (ring) group than when it
    is the detail (dot) group. ≥ 17 of 24 flips > 0 (P = 0.032 if β ignored the plant). Seen
    on seeds 24-47 as a secondary statistic (19 of 24) after failing on seeds 6-11 (2 of 6), so
    these seeds decide it: 15 of 24 (not found)."""
    assert sum(f > 0 for f in output_row_flips) >= 17, output_row_flips


# Pre-registered 2026-11-30 12:22 UTC (benchmarks/RESULTS.md, "Planted structure: one batch of 60
# fresh seeds"), before these seeds first ran: the batches above were too small for an effect of
# about the seed spread (at the rate seen on seeds 24-71, ≈ 0.7, a 24-seed batch passes ≥ 17 with
# probability 0.56; 60 seeds pass ≥ 37 with probability 0.94).
BATCH_SEEDS = tuple(range(72, 132))


@pytest.fixture(scope="module")
def batch_flips(tmp_path_factory) -> list[float]:
    """Per seed, the output-row β lean on the plant minus on the swap (120 searches: about
    90 min on one idle core)."""
    return longer_flips(tmp_path_factory, "planted-batch", BATCH_SEEDS, "output_row_lean")


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured: 33 of 60 > 0 on seeds 72-131, short of 37 (benchmarks/RESULTS.md, "
    "'Planted structure: one batch of 60 fresh seeds'); XPASS = β now shows it",
)
def test_the_search_weighs_context_higher_at_the_output_row_over_60_fresh_seeds(batch_flips):
    """The output-row statistic of the test above, decided by one batch of 60 fresh seeds:
    ≥ 37 of 60 flips > 0 (P = 0.046 if β ignored the plant). Measured: 33 of 60 (not found);
    the weights' reliance was 46 of 60 on the same searches, and β over the whole fabric leaned
    the other way in 52 of 60."""
    assert sum(f > 0 for f in batch_flips) >= 37, batch_flips


# Pre-registered 2026-11-30 14:43 UTC (benchmarks/RESULTS.md, "Planted structure: the sided
# plant"), before these seeds first ran: the same statistic and budget on the plant whose detail
# mark the finest row can see and tell the side of (PLANTS["sided"]); an 8-seed pilot (seeds
# 200-207) gave 6 of 8.
SIDED_SEEDS = tuple(range(300, 340))


@pytest.fixture(scope="module")
def sided_flips(tmp_path_factory) -> list[float]:
    """Per seed, the output-row β lean on the sided plant minus on its swap (80 searches)."""
    return longer_flips(
        tmp_path_factory, "planted-sided", SIDED_SEEDS, "output_row_lean", PLANTS["sided"]
    )


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="measured: 20 of 40 > 0 on seeds 300-339, short of 26 (benchmarks/RESULTS.md, "
    "'Planted structure: the sided plant'); XPASS = β now shows it",
)
def test_the_search_weighs_context_higher_at_the_output_row_on_the_sided_plant(sided_flips):
    """The intended preference in β where it reaches the heatmap, on the sided plant: the
    output-row cells weigh their coarser input more for a limb group when it is the ring
    (context) group than when it carries the ticked disc (detail). ≥ 26 of 40 flips > 0
    (P = 0.040 if β ignored the plant). Measured: 20 of 40 (chance); on the same searches the
    whole-fabric β 16 of 40 and the cut reliance 23 of 40, while the layout readout of the
    test below leaned the intended way in 35 of 40."""
    assert sum(f > 0 for f in sided_flips) >= 26, sided_flips


# Pre-registered 2026-11-30 15:18 UTC (benchmarks/RESULTS.md, "Planted structure: the sided
# plant"), before these seeds first ran: the weights' reliance on the coarser input's layout
# (``context_reliance(ablation="mean")``), which on seeds 300-339 (computed after their batch
# had failed, so exploratory) leaned the intended way in 35 of 40.
LAYOUT_SEEDS = tuple(range(340, 364))


@pytest.fixture(scope="module")
def layout_flips(tmp_path_factory) -> list[float]:
    """Per seed, the legs' layout reliance over the arms' on the sided plant minus on its swap
    (48 searches)."""
    return longer_flips(
        tmp_path_factory, "planted-layout", LAYOUT_SEEDS, "layout_reliance_lean", PLANTS["sided"]
    )


@pytest.mark.slow
def test_the_trained_supernet_relies_on_the_coarser_layout_for_the_ring_group(layout_flips):
    """The intended preference in the trained weights, on the plant whose two marks are
    equally locatable: replacing every output-row cell's coarser input by its per-channel mean
    (its layout gone) costs a limb group more when it carries the rings (context) than when it
    carries the ticked discs (detail). ≥ 17 of 24 flips > 0 (P = 0.032 if the weights ignored
    the plant)."""
    assert sum(f > 0 for f in layout_flips) >= 17, layout_flips


# Pre-registered 2026-12-02 (benchmarks/RESULTS.md, "One-shot selection on the σ = 1 plant"),
# before these seeds first ran: a single-path one-shot search (weights trained on uniformly
# drawn single inputs, search.mode none) whose inputs are selected by random search with weight
# sharing (search.selection: one_shot, search/one_shot.py), on the plant that passes the
# hard-cut oracle (coloured, tiny_local backbone, σ = 1).
ONE_SHOT = (
    "backbone.name=tiny_local",
    "data.sigma=1",
    "data.synthetic.train_images=384",
    "data.synthetic.val_images=64",
    "search.epochs=40",
    "search.val_every=40",
    "search.mode=none",
    "search.input_sampling=gumbel",
    "search.selection=one_shot",
    "search.one_shot_candidates=32",
)
ONE_SHOT_SEEDS = tuple(range(820, 832))


@pytest.fixture(scope="module")
def one_shot_field_flips(tmp_path_factory) -> list[float]:
    """Per seed, the derived genotypes' field lean (``genotype_field``) on the coloured plant
    minus on its swap (24 searches, ≈ 2 min each on an idle core with one thread)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("planted-one-shot")
    flips = []
    for seed in ONE_SHOT_SEEDS:
        legs, arms = (
            planted_run(root, seed, mode, ONE_SHOT)["genotype_field_lean"]
            for mode in PLANTS["coloured"]
        )
        flips.append(legs - arms)
    return flips


@pytest.mark.slow
def test_a_one_shot_search_gives_the_ring_group_the_wider_field(one_shot_field_flips):
    """The planted preference in the derived genotypes: the network a one-shot search keeps
    for a limb group reads a coarser row (sees further) when the group carries the rings
    (context) than when it carries the coloured marks (detail), relative to the other limb
    group. ≥ 10 of 12 flips > 0, ties counting against (P ≤ 0.019 if the search ignored the
    plant, whose flips are then sign-symmetric). Measured: 11 of 12 (one tie), by the
    benchmark's runs and by this test's own (passed, 47 min on one core)."""
    assert sum(f > 0 for f in one_shot_field_flips) >= 10, one_shot_field_flips
