"""Benchmark: does the part-specific search find the planted preference, and flip it?

For each ``--seeds`` value it runs the same small in-process search (``LocalRuntime``, coco-p3,
the test's settings ``tests/unit/test_planted.py::SETTINGS`` plus any ``--set``) twice: on the
``context_legs`` set (legs marked by rings: context; arms by dots: detail) and on the
``context_arms`` set (roles exchanged; ``data/synthetic.py``); with ``--plant sided`` on their
``_sided`` variants, whose detail mark is a larger disc with a tick telling its side (with
``--plant coloured`` the ``_coloured`` ones, whose right detail joints have colours of their
own; flip augmentation off, ``test_planted.plant_sets``). From the
final softmax(β) of each run it takes ``confidence.coarseness`` per part and prints

    lean   = coarseness(lower_limb) − coarseness(upper_limb)     (per run; 0 under uniform β)
    flip   = lean(context_legs) − lean(context_arms)             (per seed; > 0 = found)

and the same flip for more leans: the output row's alone (``output_row_lean``: the mean
softmax(β) of ``below`` over the row-0 cells); the weights' reliance on context
(``context_reliance``: how much each part's loss rises when no row-0 cell reads its coarser
input; a readout of the trained supernet, not of β), once by cutting that input and once by
keeping only its per-channel mean (its layout removed: less of the break a cut causes in every
part); and the β gradient at those cells on the trained supernet (``beta_pull``: how the DARTS
objective still pulls them toward their coarser input); and what the coarser input pays each
part when every row-0 cell reads it alone rather than its own row alone (``forced_output_row``,
val AP and loss: two candidate networks on the shared weights, meant for supernets trained on
drawn single inputs). The derived genotypes' flips come in two forms: ``genotype_lean`` (mean
row offset of the kept inputs) and ``genotype_field`` (the coarsest row the derived network
reads: on single-input paths, which come back to row 0, the lean is 0 and the field is what
differs; the statistic of ``search.selection: one_shot``). With ``--removal`` it also derives
each run's genotype by input removal (``test_planted.removal_genotype``: per cell the input
whose removal costs its part most) and prints that genotype's flip beside β's.

The fabric is the tiny one with a single op (``test_planted.FABRIC``), so β (the scale each
cell reads) is the whole search. Under the null (the search ignores the plant) a flip's sign
is a coin toss, so "flip > 0 in k of n seeds" has the binomial tail P(X ≥ k | n, 1/2) printed
beside it; the derived genotypes' flip is compared with uniformly random genotypes. The
hardware comes first, one JSON line last.

    python benchmarks/planted_signal.py --seeds 0 1 2 3 4 5 --root /tmp/planted

This measures; it asserts nothing. ``benchmarks/RESULTS.md`` ("Planted structure") records figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from math import comb
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nfs_orchestrator.genotype import Genotype, derive_genotype, read_genotype  # noqa: E402
from nfs_orchestrator.hardware import detect  # noqa: E402
from tests.unit.test_planted import PLANTS, SETTINGS, genotype_lean, planted_run  # noqa: E402


def genotype_chance(like: Genotype, draws: int = 4000) -> tuple[float, float]:
    """P(flip > 0) and P(flip = 0) of the genotype lean when both searches return a uniformly
    random genotype (β drawn i.i.d., so every cell's kept input is uniform; α is one op)."""
    g = torch.Generator().manual_seed(0)
    n_cells = len(like.arch_weights[like.grouping.parts[0].name]["beta"])

    def lean() -> float:
        arch = {
            p.name: (torch.zeros(1, len(like.space.ops)), torch.randn(n_cells, 3, generator=g))
            for p in like.grouping.parts
        }
        return genotype_lean(derive_genotype(like.space, like.grouping, arch))

    flips = [lean() - lean() for _ in range(draws)]
    return sum(f > 0 for f in flips) / draws, sum(f == 0 for f in flips) / draws


def tail(k: int, n: int) -> float:
    """P(X ≥ k) for X ~ Binomial(n, 1/2)."""
    return sum(comb(n, i) for i in range(k, n + 1)) / 2**n


def last_outputs(logs: list[str]) -> list[dict]:
    """The last JSON line of each earlier output of a planted benchmark (``--redraw``)."""
    return [json.loads(Path(log).read_text().splitlines()[-1]) for log in logs]


def seed_rows(outputs: list[dict]) -> list[dict]:
    """Every output's per-seed rows, merged, by seed."""
    return sorted((row for out in outputs for row in out["rows"]), key=lambda r: r["seed"])


def flip_panel(ax, rows: list[dict], values: list[float], name: str) -> None:
    """One flip per seed as a point (green > 0, red otherwise), with its count > 0 and the
    sign test's chance P in the title."""
    n, k = len(values), sum(v > 0 for v in values)
    colors = ["#2ca02c" if v > 0 else "#d62728" for v in values]
    ax.scatter([r["seed"] for r in rows], values, c=colors, s=14)
    ax.axhline(0, color="#555555", lw=0.8)
    ax.set_title(f"{name}\n> 0 in {k} of {n} (chance P(≥{k}) = {tail(k, n):.3g})", fontsize=9)
    ax.set_xlabel("seed")


def _limbs(run: dict) -> str:
    ap = run["part_ap"]
    return f"{ap.get('lower_limb', float('nan')):.3f}/{ap.get('upper_limb', float('nan')):.3f}"


def spread(values: list[float]) -> str:
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{m:+.4f} ± {sd:.4f} (min {min(values):+.4f}, max {max(values):+.4f}, n={len(values)})"


FLIPS = (  # per-seed statistic, the planted_run lean it is the flip of, its printed name
    ("flip", "lean", "whole-fabric β flip"),
    ("output_row_flip", "output_row_lean", "output-row β flip"),
    ("reliance_flip", "reliance_lean", "reliance flip (weights)"),
    ("layout_reliance_flip", "layout_reliance_lean", "layout-reliance flip (weights)"),
    ("beta_pull_flip", "beta_pull_lean", "β-gradient flip (end of search)"),
    ("forced_ap_flip", "forced_ap_lean", "forced output row, AP-gain flip (weights)"),
    ("forced_loss_flip", "forced_loss_lean", "forced output row, loss-gain flip (weights)"),
    ("genotype_field_flip", "genotype_field_lean", "genotype field flip (derived networks)"),
)


def with_flips(rows: list[dict], modes: tuple[str, str]) -> list[dict]:
    """``rows`` with each ``FLIPS`` statistic whose lean both runs of a seed carry (an output
    from before a statistic carries neither)."""
    for row in rows:
        for key, lean, _ in FLIPS:
            if lean in row[modes[0]] and lean in row[modes[1]]:
                row[key] = row[modes[0]][lean] - row[modes[1]][lean]
    return rows


def part_ap_by_mark(rows: list[dict], modes: tuple[str, str]) -> dict[str, dict[str, list]]:
    """Per limb group, its supernet val AP in each seed when it carries the rings (context)
    and when it carries the detail mark: {"legs": {"rings": [...], "detail": [...]}, "arms": …}."""
    legs_ctx, arms_ctx = modes
    return {
        "legs": {
            "rings": [r[legs_ctx]["part_ap"]["lower_limb"] for r in rows],
            "detail": [r[arms_ctx]["part_ap"]["lower_limb"] for r in rows],
        },
        "arms": {
            "rings": [r[arms_ctx]["part_ap"]["upper_limb"] for r in rows],
            "detail": [r[legs_ctx]["part_ap"]["upper_limb"] for r in rows],
        },
    }


def draw(rows: list[dict], modes: tuple[str, str], plant: str, path: Path) -> None:
    """One panel per flip statistic (each seed a point, > 0 = the intended direction, with
    its count and sign-test P) and one of the limb groups' val AP by mark (mean ± sd, seeds
    as points): is each mark locatable, and does the search lean the intended way?"""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(rows)
    flips = [(key, name) for key, _, name in FLIPS if key in rows[0]]  # older outputs lack some
    cols = min(5, len(flips) + 1)  # a grid of at most five panels a row
    lines = -(-(len(flips) + 1) // cols)
    fig, grid = plt.subplots(lines, cols, figsize=(4.2 * cols, 3.8 * lines), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[len(flips) + 1 :]:
        ax.set_visible(False)
    for ax, (key, name) in zip(axes, flips):
        flip_panel(ax, rows, [r[key] for r in rows], name)
    for line in grid:
        line[0].set_ylabel("plant − swap (> 0: the intended way)")
    ax = axes[len(flips)]
    for g, (group, marks) in enumerate(part_ap_by_mark(rows, modes).items()):
        for m, (mark, values) in enumerate(marks.items()):
            x = 3 * g + m
            mean, sd = statistics.fmean(values), statistics.pstdev(values)
            ax.bar(x, mean, yerr=sd, color="#9ecae1" if mark == "rings" else "#fdae6b")
            ax.scatter([x] * len(values), values, s=6, color="#333333", zorder=3)
            ax.text(x, 0.01, f"{group}\n{mark}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks([])
    ax.set_ylabel("supernet val AP of the group")
    ax.set_title("is each mark locatable? (mean ± sd)", fontsize=9)
    fig.suptitle(f"planted structure, {plant} plant ({modes[0]} vs {modes[1]}), {n} seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--root", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--removal", action="store_true", help="also the removal genotypes")
    parser.add_argument("--plant", choices=list(PLANTS), default="dot",
                        help="the detail mark (test_planted.PLANTS; default: dot)")  # fmt: skip
    parser.add_argument("--plot", default=None, metavar="PNG", help="draw the flips and AP here")
    parser.add_argument(
        "--redraw",
        nargs="+",
        default=None,
        metavar="LOG",
        help="search nothing: merge the rows of earlier outputs of this benchmark (their last "
        "JSON line), print the flips, draw --plot",
    )
    args = parser.parse_args()
    modes = PLANTS[args.plant]
    if args.redraw:
        rows = with_flips(seed_rows(last_outputs(args.redraw)), modes)
        report(rows, modes, args.plot, args.plant)
        return
    torch.set_num_threads(args.threads)
    hw = detect("cpu")
    print(f"hardware: {hw.name}, {hw.usable_cpus} usable CPUs, torch {hw.torch}, "
          f"{args.threads} thread(s)")  # fmt: skip
    print(f"plant: {args.plant} {modes}; settings: {[*SETTINGS, *args.sets]}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="posenfs-planted-") as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        for seed in args.seeds:
            row: dict = {"seed": seed}
            for mode in modes:
                started = time.monotonic()
                row[mode] = planted_run(root, seed, mode, tuple(args.sets), args.removal)
                row[mode]["wall_s"] = round(time.monotonic() - started, 1)
            with_flips([row], modes)
            by_epoch = [
                a - b
                for a, b in zip(
                    row[modes[0]]["output_row_by_epoch"], row[modes[1]]["output_row_by_epoch"]
                )
            ]
            rows.append(row)
            like = read_genotype(root / f"seed{seed}-{modes[0]}" / "artifacts" / "genotype.json")
            print(
                f"seed {seed}: lean legs-context {row[modes[0]]['lean']:+.4f}  "
                f"arms-context {row[modes[1]]['lean']:+.4f}  flip {row['flip']:+.4f}  "
                f"output-row flip {row['output_row_flip']:+.4f} "
                f"(by epoch {' '.join(f'{v:+.3f}' for v in by_epoch)})  "
                f"reliance flip {row['reliance_flip']:+.5f} "
                f"(layout only {row['layout_reliance_flip']:+.5f}) | "
                f"val_ap {row[modes[0]]['val_ap']:.3f} {row[modes[1]]['val_ap']:.3f} "
                f"(legs, arms: {_limbs(row[modes[0]])} {_limbs(row[modes[1]])}) | "
                f"{row[modes[0]]['wall_s']:.0f} s + "
                f"{row[modes[1]]['wall_s']:.0f} s",
                flush=True,
            )
    n = len(rows)
    summary = {"plant": args.plant, "settings": [*SETTINGS, *args.sets], "hardware": hw.to_dict(),
               "rows": rows}  # fmt: skip
    for mode in modes:
        print(f"lean on {mode}: {spread([r[mode]['lean'] for r in rows])}")
    above, tie = genotype_chance(like)
    for key, name in (("genotype_lean", "genotype"), ("removal_genotype_lean", "removal genotype")):
        if rows[0][modes[0]][key] is None:
            continue
        # leans are means of integer row offsets: round away the float residue of k/3 − k/3
        flips = [round(r[modes[0]][key] - r[modes[1]][key], 9) for r in rows]
        k_g, ties, k_neg = (
            sum(f > 0 for f in flips),
            sum(f == 0 for f in flips),
            sum(f < 0 for f in flips),
        )
        summary[f"{name.replace(' ', '_')}_flip"] = {"values": flips, "positive": k_g, "ties": ties,
                                "chance_positive": above, "chance_tie": tie}  # fmt: skip
        print(
            f"{name} flip: {[round(f, 3) for f in flips]}; > 0 in {k_g} of {n}, = 0 in {ties}, "
            f"< 0 in {k_neg} (uniform random genotypes: P(> 0) = {above:.3f}, P(= 0) = {tie:.3f}; "
            f"without ties, chance P(≥{k_g} of {k_g + k_neg}) = {tail(k_g, k_g + k_neg):.4f})"
        )
    summary.update(report(rows, modes, args.plot, args.plant))
    print(json.dumps(summary, sort_keys=True))


def report(rows: list[dict], modes: tuple[str, str], plot: str | None, plant: str) -> dict:
    """Prints each ``FLIPS`` statistic against chance and the limb groups' AP by mark, draws
    them to ``plot`` when given; returns the counts."""
    n, counts = len(rows), {}
    for key, _, name in FLIPS:
        if key not in rows[0]:  # an output of this benchmark from before the statistic
            continue
        values = [r[key] for r in rows]
        k, ties = sum(v > 0 for v in values), sum(v == 0 for v in values)
        counts[key] = {"positive": k, "ties": ties, "n": n, "p_chance": tail(k, n)}
        tied = f", = 0 in {ties} (counted as not > 0)" if ties else ""
        print(f"{name}: {spread(values)}; > 0 in {k} of {n}{tied} "
              f"(chance P(≥{k}) = {tail(k, n):.4f})")  # fmt: skip
    if all(r[m]["part_ap"] for r in rows for m in modes):  # a reused finished run has none
        for group, marks in part_ap_by_mark(rows, modes).items():
            print(f"val AP of the {group}: " + ", ".join(
                f"with {mark} {spread(values)}" for mark, values in marks.items()))  # fmt: skip
        if plot:
            draw(rows, modes, plant, Path(plot))
            print(f"picture: {plot}")
    return counts


if __name__ == "__main__":
    main()
