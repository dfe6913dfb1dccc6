"""Pictures of what a search found: the derived fabrics and the α/β trajectories (matplotlib).

``draw_genotype`` draws one panel per part: the fabric as a scale × depth grid (stride 4 on top,
the backbone pyramid as the first column), every cell of the space as a faint circle, the kept
cells solid with their ops, and each kept input as an arrow coloured by its slot (parallel,
above = from the finer row, below = from the coarser row). A kept cell whose op or input
decision is undecided (margin below ``confidence.DECIDED_MARGIN``) is drawn grey with dashed
arrows and a "?" (``confidence.undecided_cells``). ``draw_arch_trajectory`` plots
softmax(α) per op and the mean softmax(β) per slot over epochs, one row per part.
What this is not: the networks; it reads genotypes and the geometry only (no torch modules).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nfs_orchestrator.confidence import undecided_cells  # noqa: E402
from nfs_orchestrator.genotype import Genotype  # noqa: E402
from nfs_orchestrator.geometry import SLOTS, fabric_sites  # noqa: E402

SLOT_COLORS = {"parallel": "#333333", "above": "#1f77b4", "below": "#d62728"}
OP_SHORT = {
    "skip_connect": "skip",
    "sep_conv_3x3": "sep3",
    "sep_conv_5x5": "sep5",
    "atr_conv_3x3": "atr3",
    "atr_conv_5x5": "atr5",
    "avg_pool_3x3": "avg3",
    "max_pool_3x3": "max3",
}


def draw_genotype(genotype: Genotype, path: str | Path) -> Path:
    """Writes the fabric drawing to ``path`` (.png or .svg) and returns it."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg"):
        from nfs_orchestrator.errors import InputError

        raise InputError(f"{path}: the drawing must be .png or .svg")
    space = genotype.space
    layers = fabric_sites(space)
    sites = {(s.scale, s.depth): s for layer in layers for s in layer}
    first = space.cut
    n_parts = len(genotype.parts)
    cols = min(n_parts, 4)
    rows = (n_parts + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in axes.flat[n_parts:]:
        ax.axis("off")
    weak = undecided_cells(genotype) if genotype.confidence or genotype.arch_weights else set()
    for ax, part in zip(axes.flat, genotype.parts):
        kept = {(c.scale, c.depth): c for c in part.cells}
        for lvl, stride in enumerate(space.scales):  # the backbone pyramid column
            ax.scatter(first - 1, lvl, s=260, marker="s", color="#e8e8e8", edgecolor="#999999")
            ax.text(first - 1, lvl, f"/{stride}", ha="center", va="center", fontsize=7)
        for scale, depth in sites:
            ax.scatter(depth, scale, s=420, color="white", edgecolor="#cccccc", zorder=1)
        for (scale, depth), cell in kept.items():
            site = sites[(scale, depth)]
            unsure = (part.name, scale, depth) in weak
            for slot in cell.inputs:
                src = site.sources[SLOTS.index(slot)]
                arrow = {"arrowstyle": "->", "color": SLOT_COLORS[slot], "lw": 1.6}
                if unsure:
                    arrow.update(linestyle="--", alpha=0.6)
                ax.annotate(
                    "",
                    xy=(depth - 0.17, scale),
                    xytext=(depth - 0.83, src),
                    arrowprops=arrow,
                    zorder=2,
                )
            face, edge = ("#dddddd", "#888888") if unsure else ("#fdd49e", "#e6550d")
            ax.scatter(depth, scale, s=420, color=face, edgecolor=edge, zorder=3)
            label = "\n".join(OP_SHORT.get(op, op) for op in cell.ops) + ("?" if unsure else "")
            ax.text(depth, scale, label, ha="center", va="center", fontsize=7, zorder=4)
        last = layers[-1][0]
        ax.annotate(
            "",
            xy=(last.depth + 0.7, 0),
            xytext=(last.depth + 0.2, 0),
            arrowprops={"arrowstyle": "->", "color": "#e6550d", "lw": 1.6},
        )
        ax.text(last.depth + 0.75, 0, "head", va="center", fontsize=8)
        ax.set_title(
            f"{part.name}  ({len(part.keypoints)} kp, {len(part.cells)} cells)", fontsize=9
        )
        ax.set_xlim(first - 1.6, space.depth + 0.6)
        ax.set_ylim(len(space.scales) - 0.4, -0.6)
        ax.set_xticks(range(first - 1, space.depth))
        ax.set_xticklabels(["pyramid"] + [str(d) for d in range(first, space.depth)], fontsize=7)
        ax.set_yticks(range(len(space.scales)))
        ax.set_yticklabels([f"stride {s}" for s in space.scales], fontsize=7)
        ax.set_xlabel("depth", fontsize=8)
    handles = [plt.Line2D([], [], color=c, lw=2, label=s) for s, c in SLOT_COLORS.items()]
    if weak:
        handles.append(plt.Line2D([], [], color="#888888", lw=2, ls="--", label="undecided (?)"))
    fig.legend(
        handles=handles, loc="lower center", fontsize=8, title="kept input", ncol=len(handles)
    )
    size = ""
    if genotype.macs is not None:
        size = f" — {genotype.params / 1e6:.2f}M params, {human(genotype.macs)}MACs"
    fig.suptitle(
        f"genotype {genotype.fingerprint()[:12]} · {space.name} · {genotype.grouping.name}{size}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0.12, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def human(n: float) -> str:
    """1.2e9 → '1.20 G', 3.4e6 → '3.40 M'."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} "


def draw_arch_trajectory(history: Sequence[dict], genotype: Genotype, path: str | Path) -> Path:
    """softmax(α) (per op, mean over edges/cells) and softmax(β) (per slot, mean over cells)
    against epoch, one row per part."""
    path = Path(path)
    parts = [p.name for p in genotype.parts]
    ops = genotype.space.ops
    fig, axes = plt.subplots(len(parts), 2, figsize=(8, 1.9 * len(parts) + 0.6), squeeze=False)
    epochs = list(range(1, len(history) + 1))
    for row, name in enumerate(parts):
        ax_a, ax_b = axes[row]
        for o, op in enumerate(ops):
            series = [sum(r[o] for r in h[name]["alpha"]) / len(h[name]["alpha"]) for h in history]
            ax_a.plot(epochs, series, marker=".", label=OP_SHORT.get(op, op))
        for s, slot in enumerate(SLOTS):
            series = [sum(r[s] for r in h[name]["beta"]) / len(h[name]["beta"]) for h in history]
            ax_b.plot(epochs, series, marker=".", color=SLOT_COLORS[slot], label=slot)
        ax_a.set_ylabel(name, fontsize=8)
        for ax in (ax_a, ax_b):
            ax.set_ylim(0, 1)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
    axes[0][0].set_title("softmax(α) per op", fontsize=9)
    axes[0][1].set_title("softmax(β) per input, mean over cells", fontsize=9)
    axes[0][0].legend(fontsize=7, loc="upper left")
    axes[0][1].legend(fontsize=7, loc="upper left")
    axes[-1][0].set_xlabel("epoch", fontsize=8)
    axes[-1][1].set_xlabel("epoch", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
