"""Draws α and β entropy drop per epoch of finished `search_signal.py` runs, one colour per arm
(a `--root` of that benchmark), one thin line per seed, the arm's mean thick; one row per part
grouping. Made for the no-feedback control (`search.weight_mixture: uniform`) beside the
shipped search (benchmarks/RESULTS.md, "Where α/β's movement comes from"), it reads any roots.

    python benchmarks/feedback_picture.py --arm "arch lr 0.05 (shipped)=/tmp/s13/f_ship" \\
        --arm "arch lr 0.025=/tmp/s13/f_lr025" --arm "uniform weight mixture=/tmp/s13/f_uni" \\
        --out /tmp/s13/feedback.png

Reads each root's `seed*/metrics.jsonl` (one row per epoch) and `artifacts/genotype.json` (the
grouping); prints what it read and each arm's last-epoch mean. Measures nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

METRICS = ("alpha_entropy_drop", "beta_entropy_drop")
COLORS = ("#d62728", "#1f77b4", "#7f7f7f", "#2ca02c", "#9467bd")
CRITERION = 0.05  # issue 14's quickstart criterion: entropy drop ≥ 0.05


def read_runs(root: Path) -> dict[str, list[list[dict]]]:
    """grouping name -> per run, its epoch rows (runs in seed-folder order)."""
    runs: dict[str, list[list[dict]]] = {}
    for run in sorted(root.glob("seed*/metrics.jsonl")):
        genotype = run.parent / "artifacts" / "genotype.json"
        grouping = json.loads(genotype.read_text())["grouping"]["name"]
        rows = [json.loads(line) for line in run.read_text().splitlines()]
        runs.setdefault(grouping, []).append(rows)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arm", action="append", required=True, metavar="LABEL=ROOT")
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    arms = {}
    for arm in args.arm:
        label, sep, root = arm.partition("=")
        if not sep or not Path(root).is_dir():
            parser.error(f"--arm {arm!r}: want LABEL=ROOT, ROOT a search_signal.py --root")
        arms[label] = read_runs(Path(root))
    groupings = sorted({g for runs in arms.values() for g in runs})
    if not groupings:
        parser.error("no finished runs (seed*/metrics.jsonl) under any --arm root")

    fig, axes = plt.subplots(
        len(groupings), 2, figsize=(10, 3.2 * len(groupings)), squeeze=False, sharex=True
    )
    for row, grouping in enumerate(groupings):
        for col, metric in enumerate(METRICS):
            ax = axes[row][col]
            for color, (label, runs) in zip(COLORS, arms.items()):
                curves = [[r[metric] for r in rows] for rows in runs.get(grouping, [])]
                if not curves:
                    continue
                for curve in curves:  # one seed
                    ax.plot(range(1, len(curve) + 1), curve, color=color, lw=0.7, alpha=0.45)
                epochs = min(len(c) for c in curves)
                mean = [statistics.fmean(c[e] for c in curves) for e in range(epochs)]
                ax.plot(range(1, epochs + 1), mean, color=color, lw=2.2, label=label)
                print(
                    f"{grouping} {metric} {label}: {len(curves)} runs, last epoch mean "
                    f"{mean[-1]:.4f} (min {min(c[-1] for c in curves):.4f})"
                )
            ax.axhline(CRITERION, color="black", lw=0.6, ls=":")
            ax.set_title(f"{grouping}: {metric.replace('_', ' ')}", fontsize=10)
            ax.set_xlabel("epoch")
            ax.set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("α/β entropy drop per epoch (thin: one seed; thick: mean; dotted: 0.05)")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
