"""Benchmark: which preference does the planted data itself reward, by retraining?

The planted-structure tests (tests/unit/test_planted.py) ask whether the search's β leans a limb
group toward coarser rows when that group carries the rings (context) rather than the detail
marks. That presumes the data rewards it. This is the oracle that checks the premise without
any search: for each ``--seeds`` value and each set of the plant's pair (``--plant``, as in
``planted_signal.py``), it retrains, under one retrain spec (``--retrain``, default the
quickstart's, on that planted set), two hand-made genotypes of the test's single-op fabric
(``test_planted.FABRIC``, every input kept, the threshold rule) that differ only at the output
row (``test_planted.output_row_cells``):

    coarse   every output-row cell keeps its coarser input (``below``)
    fine     no output-row cell keeps it (the rest of the fabric identical)

and measures each part's heatmap loss on the set's val images (and its val AP). Per part

    gain   = loss(fine) − loss(coarse)                    (> 0: the coarser input helps it)
    lean   = gain(lower_limb) − gain(upper_limb)           (per set)
    flip   = lean(legs carry the rings) − lean(arms carry the rings)   (per seed)

so flip > 0 means the data rewards the coarser input more for the ring group: the planted
preference the search is asked to find. ``--arms mixture`` replaces the two derived networks by
what β actually chooses between: the planted trial's supernet (``test_planted.LONGER`` budget,
64 val images) trained with weights only (``search.mode: none``) at a fixed β, uniform but for
``below`` at every output-row cell, with softmax weight 0.6 (coarse) or 1/7 (fine);
``--rows all`` sets it so at every cell whose ``below`` is a coarser row (``coarser_cells``: the
whole fabric, what the whole-fabric β lean of the searches weighs). The same flips for AP.
Each seed's line also gives the val AP of the ring group and of the detail group under each
arm. Finished runs are read back (same arm, seed and set under ``--root``). The hardware comes
first, one JSON line last.

    python benchmarks/planted_oracle.py --plant sided --seeds 400 401 402 403 --root /tmp/oracle
    python benchmarks/planted_oracle.py --plant coloured --redraw LOG [LOG ...] --plot oracle.png

Measured (benchmarks/RESULTS.md, "Planted structure: what the data rewards"): on the test's
fabric the derived fine arm is a dead network (AP ≤ 0.013 for every part on every plant and on
the unplanted set), so its flips compare a working network with a dead one; the mixture arms
both work, and on the coloured plant the two groups gain alike from the coarser input.

This measures; it asserts nothing. ``benchmarks/RESULTS.md`` ("Planted structure") records figures.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from planted_signal import (  # also puts the repository on sys.path
    REPO,
    flip_panel,
    last_outputs,
    seed_rows,
    tail,
)

from nfs_orchestrator.data.dataset import build_dataset
from nfs_orchestrator.genotype import derive_genotype
from nfs_orchestrator.geometry import SLOTS, fabric_sites
from nfs_orchestrator.hardware import detect
from nfs_orchestrator.model_io import load_model
from nfs_orchestrator.retrain.loop import MODEL_FILE, run_retrain
from nfs_orchestrator.runtime import LocalRuntime
from nfs_orchestrator.specs import DerivationRule, load_retrain, replace
from tests.unit.test_planted import (
    LONGER,
    PLANTS,
    mean_part_losses,
    output_row_cells,
    plant_sets,
    planted_trial,
)

ARMS = ("coarse", "fine")
BELOW = SLOTS.index("below")
# ``--arms mixture``: β of ``below`` at every output-row cell, ± this (the cell's other slots at
# 0): softmax weight 0.6 for the coarser input (coarse) or 1/7 (fine), both working supernets
MIXTURE_LOGIT = math.log(3)


def genotypes(trial) -> dict[str, object]:
    """The two arms' genotypes: every input kept (uniform β, threshold 0.3), and the fine arm
    with ``below`` cut (softmax weight 0) at every output-row cell."""
    space = replace(
        trial.fabric,
        derivation=DerivationRule(ops="argmax_nonzero", inputs="threshold", beta_threshold=0.3),
    )
    n_cells = sum(len(layer) for layer in fabric_sites(space))
    out = {}
    for arm in ARMS:
        beta = torch.zeros(n_cells, len(SLOTS))
        if arm == "fine":
            beta[output_row_cells(space), BELOW] = float("-inf")
        arch = {p.name: (torch.zeros(1, 1), beta.clone()) for p in trial.grouping.parts}
        out[arm] = derive_genotype(space, trial.grouping, arch, backbone=trial.backbone.name)
    return out


def record(
    done: Path, model, data_spec, grouping, run, metrics: dict, started: float, **extra
) -> dict:
    """What one arm's run measured, written to ``done`` (read back by a later call): each
    part's mean val loss (eval mode, ``mean_part_losses``) and val AP, ``extra``, the wall
    time."""
    model.eval()
    data = build_dataset(data_spec, grouping.schema, "val", train=False)
    body = {
        "loss": mean_part_losses(model, data, list(range(len(data))), grouping, run),
        "ap": {k.split(".", 1)[1]: v for k, v in metrics.items() if k.startswith("val_ap.")},
        "val_ap": metrics.get("val_ap"),
        **extra,
        "wall_s": round(time.monotonic() - started, 1),
    }
    done.write_text(json.dumps(body) + "\n")
    return body


def derived_arms(
    retrain: str,
    root: Path,
    seed: int,
    mode: str,
    sets: tuple[str, ...] = (),
    retrain_sets: tuple[str, ...] = (),
) -> dict[str, dict]:
    """``--arms derived`` for one set: each arm's genotype (``genotypes``) retrained under the
    ``retrain`` spec on the ``mode`` set, in fp32 as the planted searches (``retrained``);
    ``sets`` override both the trial and the retrain spec (keys they share, e.g. backbone),
    ``retrain_sets`` the retrain spec alone (e.g. epochs)."""
    trial = planted_trial(root / "fabric", seed, mode, sets)
    spec = load_retrain(
        retrain,
        (
            f"data.root={root / 'data'}",
            f"data.synthetic.planted={mode}",
            f"seed={seed}",
            "precision=fp32",  # as the planted searches (test_planted.SETTINGS)
            "memory_format=contiguous",
            *plant_sets(mode),
            *sets,
            *retrain_sets,
        ),
    )
    return {arm: retrained(spec, g, trial.grouping, root) for arm, g in genotypes(trial).items()}


def retrained(spec, genotype, grouping, root: Path) -> dict:
    """Per-part val loss and AP of ``genotype`` retrained under ``spec`` (read back if done)."""
    run_dir = root / f"retrain-{genotype.fingerprint()[:12]}-{spec.fingerprint()[:12]}"
    done = run_dir / "oracle.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.monotonic()
    run = LocalRuntime(run_dir, verbose=False)
    metrics = run_retrain(spec, genotype, run)
    model = load_model(run.latest_checkpoint() / MODEL_FILE)
    return record(done, model, spec.data, grouping, run, metrics, started)


def coarser_cells(space) -> list[int]:
    """Every cell whose ``below`` reads a coarser row, as indices in β's row order."""
    sites = [s for layer in fabric_sites(space) for s in layer]
    return [i for i, s in enumerate(sites) if s.sources[BELOW] > s.scale]


def mixture_trained(
    root: Path, seed: int, mode: str, arm: str, where: str = "output", sets: tuple[str, ...] = ()
) -> dict:
    """Per-part val loss and AP of the planted trial's supernet (``LONGER`` budget, 64 val
    images, then ``sets``) trained with weights only (``search.mode: none``) at a fixed β:
    uniform but for ``below`` at every output-row cell (``where="all"``: every
    ``coarser_cells`` cell), ``±MIXTURE_LOGIT`` by ``arm``; read back when done.
    The β is set by wrapping ``search.loop.init_arch`` for this one run (no option sets it)."""
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from nfs_orchestrator.search import loop

    run_dir = (
        root / f"mixture-{arm}-seed{seed}-{mode}"
        if where == "output"
        else (root / f"mixture-{where}-{arm}-seed{seed}-{mode}")
    )
    done = run_dir / "oracle.json"
    if done.is_file():
        return json.loads(done.read_text())
    started = time.monotonic()
    trial = planted_trial(
        root, seed, mode, (*LONGER, "search.mode=none", "data.synthetic.val_images=64", *sets)
    )
    rows = output_row_cells(trial.fabric) if where == "output" else coarser_cells(trial.fabric)
    logit = MIXTURE_LOGIT * (1 if arm == "coarse" else -1)
    original = loop.init_arch

    def init_arch(model, search) -> None:
        original(model, search)
        with torch.no_grad():
            for fabric in model.parts.values():
                fabric.beta[rows, BELOW] = logit

    run = LocalRuntime(run_dir, verbose=False)
    loop.init_arch = init_arch
    try:
        metrics = loop.run_search(trial, run)
    finally:
        loop.init_arch = original
    state = torch.load(run.latest_checkpoint() / loop.STATE_FILE, weights_only=True)
    model = PoseSupernet(
        trial.fabric, trial.grouping, build_backbone(trial.backbone.name, random_init=True)
    )
    model.load_state_dict(state["model"])
    below = float(torch.softmax(model.parts["head"].beta[rows[0]], -1)[BELOW])  # the arm's β
    return record(done, model, trial.data, trial.grouping, run, metrics, started, below=below)


def by_group(rows: list[dict], legs_mode: str, arms_mode: str, key: str) -> dict:
    """Per arm and group (rings, detail): each seed's ``key`` (loss or ap) of that group, the
    mean over the plant and its swap (the legs carry the rings in ``legs_mode``)."""
    sides = ((legs_mode, "lower_limb", "upper_limb"), (arms_mode, "upper_limb", "lower_limb"))
    return {
        arm: {
            group: [
                statistics.fmean(
                    r["lean"][mode]["arms"][arm][key][rings if group == "rings" else detail]
                    for mode, rings, detail in sides
                )
                for r in rows
            ]
            for group in ("rings", "detail")
        }
        for arm in ARMS
    }


def summarise(rows: list[dict]) -> dict:
    """Prints, and returns, each flip's count > 0, its sign-test P and mean ± sd."""
    summary = {}
    for key in ("loss", "ap"):
        values = [r["flip"][key] for r in rows]
        k = sum(v > 0 for v in values)
        sd = statistics.stdev(values) if len(values) > 1 else float("nan")
        summary[key] = {"positive": k, "n": len(values), "p_chance": tail(k, len(values))}
        print(f"{key}-gain flip > 0 in {k} of {len(values)} (P = {tail(k, len(values)):.3f}); "
              f"mean {statistics.fmean(values):+.5f} ± {sd:.5f}")  # fmt: skip
    return summary


def draw(rows: list[dict], plant: str, title: str, path: Path) -> None:
    """The two flips per seed (> 0: the coarser input pays the ring group more), then each
    group's val AP and heatmap loss with and without the coarser input (mean ± sd, seeds as
    points): what the accuracy rewards beside what the loss rewards."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    legs_mode, arms_mode = PLANTS[plant]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    for ax, key in zip(axes, ("ap", "loss")):
        flip_panel(ax, rows, [r["flip"][key] for r in rows], f"{key}-gain flip")
    axes[0].set_ylabel("rings' gain − detail's (> 0: rings gain more)")
    for ax, key, label in zip(axes[2:], ("ap", "loss"), ("val AP", "val heatmap loss")):
        groups = by_group(rows, legs_mode, arms_mode, key)
        for g, group in enumerate(("rings", "detail")):
            for a, arm in enumerate(ARMS):
                x = 3 * g + a
                values = groups[arm][group]
                mean, sd = statistics.fmean(values), statistics.pstdev(values)
                ax.bar(x, mean, yerr=sd, color="#9ecae1" if arm == "coarse" else "#fdae6b")
                ax.scatter([x] * len(values), values, s=6, color="#333333", zorder=3)
                ax.text(x, 0, f"{group}\n{'with' if arm == 'coarse' else 'without'}",
                        ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set_xticks([])
        ax.set_ylabel(label)
        ax.set_title(f"{label} with / without the coarser input", fontsize=9)
    fig.suptitle(f"planted oracle, {plant} plant, {title}, {len(rows)} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--root", default=None, help="work folder (needed unless --redraw)")
    parser.add_argument("--plant", choices=list(PLANTS), default="sided")
    parser.add_argument("--retrain", default=str(REPO / "experiments" / "retrain_quickstart.yaml"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--arms",
        choices=["derived", "mixture"],
        default="derived",
        help="retrained derived networks, or supernets trained at a fixed output-row β",
    )
    parser.add_argument(
        "--rows",
        choices=["output", "all"],
        default="output",
        help="--arms mixture: fix β of the coarser input at the output row, or at every cell",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a trial override after the budget's (--arms derived: of the retrain spec too; "
        "e.g. backbone.name=tiny_local); finished runs are read back by seed and arm, so use a "
        "--root per setting",
    )
    parser.add_argument(
        "--retrain-set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="--arms derived: an override of the retrain spec alone (e.g. epochs=24)",
    )
    parser.add_argument("--plot", default=None, metavar="PNG", help="draw the flips and gains")
    parser.add_argument(
        "--redraw",
        nargs="+",
        default=None,
        metavar="LOG",
        help="train nothing: merge the rows of earlier outputs of this benchmark (their last "
        "JSON line), print the flips, draw --plot",
    )
    args = parser.parse_args()
    if args.redraw:  # the settings come from the logs (those of the first)
        outputs = last_outputs(args.redraw)
        rows = seed_rows(outputs)
        summarise(rows)
        if args.plot:
            first = outputs[0]
            sets = [*first.get("sets", []), *first.get("retrain_sets", [])]
            title = f"{first['arms']} arms, {' '.join(sets) or 'as shipped'}"
            draw(rows, first["plant"], title, Path(args.plot))
        return
    title = f"{args.arms} arms, {' '.join([*args.set, *args.retrain_set]) or 'as shipped'}"
    if args.root is None:
        parser.error("--root is needed unless --redraw")
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    hw = detect("cpu")
    print(f"hardware: {hw.name}, {hw.usable_cpus} usable CPUs, torch {hw.torch}, "
          f"{args.threads} thread(s)", flush=True)  # fmt: skip
    legs_mode, arms_mode = PLANTS[args.plant]
    rows = []
    for seed in args.seeds:
        lean = {}
        for mode in (legs_mode, arms_mode):
            if args.arms == "mixture":
                arms = {
                    arm: mixture_trained(root, seed, mode, arm, args.rows, tuple(args.set))
                    for arm in ARMS
                }
            else:
                arms = derived_arms(
                    args.retrain, root, seed, mode, tuple(args.set), tuple(args.retrain_set)
                )
            gain = {
                key: {
                    part: (arms["fine"][key][part] - arms["coarse"][key][part])
                    * (1 if key == "loss" else -1)
                    for part in arms["fine"][key]
                }
                for key in ("loss", "ap")
            }
            lean[mode] = {k: g["lower_limb"] - g["upper_limb"] for k, g in gain.items()}
            lean[mode]["arms"] = arms
        flip = {k: lean[legs_mode][k] - lean[arms_mode][k] for k in ("loss", "ap")}
        # val AP of the ring group and the detail group under each arm (legs carry the rings in
        # legs_mode, the arms in arms_mode)
        by_mark = {
            arm: {
                "rings": (lean[legs_mode]["arms"][arm]["ap"]["lower_limb"]
                          + lean[arms_mode]["arms"][arm]["ap"]["upper_limb"]) / 2,
                "detail": (lean[legs_mode]["arms"][arm]["ap"]["upper_limb"]
                           + lean[arms_mode]["arms"][arm]["ap"]["lower_limb"]) / 2,
            }
            for arm in ARMS
        }  # fmt: skip
        rows.append({"seed": seed, "flip": flip, "ap_by_mark": by_mark, "lean": lean})
        print(f"seed {seed}: AP rings / detail: coarse {by_mark['coarse']['rings']:.3f} / "
              f"{by_mark['coarse']['detail']:.3f}, fine {by_mark['fine']['rings']:.3f} / "
              f"{by_mark['fine']['detail']:.3f}; loss-gain flip {flip['loss']:+.5f}, AP-gain "
              f"flip {flip['ap']:+.4f}", flush=True)  # fmt: skip
    summary = summarise(rows)
    if args.plot:
        draw(rows, args.plant, title, Path(args.plot))
    print(json.dumps({"hardware": hw.to_dict(), "plant": args.plant, "arms": args.arms,
                      "fixed_rows": args.rows, "sets": args.set,
                      "retrain_sets": args.retrain_set, "summary": summary,
                      "rows": rows}, default=str))  # fmt: skip


if __name__ == "__main__":
    main()
