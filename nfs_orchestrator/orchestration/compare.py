"""Side-by-side comparison of a campaign's trials: per grouping, per depth, per scales.

What this is: pure functions over ledger rows (``group_summary``, ``pareto_front``,
``format_table``), one matplotlib figure (``plot_comparison``) and ``compare_campaign``, which reads
a campaign's ledger, writes ``compare.json`` and ``compare.png`` into the campaign folder and logs
both to the campaign's MLflow parent run.

Values: a trial's score on the primary objective is its best value over epochs (``best``); the
Pareto set of a multi-objective campaign uses each trial's *final* values (those Optuna was told),
because the best of each metric may come from different epochs and describe no single network.
Per part (``part_summary``, ``plot_parts``): each part's accuracy (``val_ap.<part>`` or
``val_pckh.<part>``) and MACs (``macs.<part>``), as the latest values in the ledger's
``parts_json``, averaged over a grouping's trials: a part × grouping table and heatmap
(``compare_parts.png``).
Per configuration run with several seeds (``budget.seeds``): how far the seeds' genotypes agree
and their consensus genotype (mean α/β weights), written to ``consensus/<configuration id>.json``
in the campaign folder and logged to the parent run under ``compare/consensus``.
What it is not: a selector for promotion (that rule lives with ``promote``).
"""

from __future__ import annotations

import hashlib
import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfs_orchestrator.campaign_spec import Objective
from nfs_orchestrator.orchestration.ledger import final_values, part_values

GROUP_KEYS = ("grouping", "depth", "scales")
CONSENSUS_DIR = "consensus"  # <campaign folder>/consensus/<configuration id>.json


def objective_value(row: Mapping[str, Any], objective: Objective, *, final: bool = False) -> Any:
    """A row's value on ``objective``: the best over epochs for the row's own primary objective,
    else (or with ``final``) the latest reported value; None when never reported."""
    if not final and row.get("objective") == objective.metric and row.get("best") is not None:
        return row["best"]
    value = final_values(row).get(objective.metric)
    if value is None and objective.metric in ("macs", "params"):
        value = row.get(objective.metric)
    return value


def group_label(row: Mapping[str, Any], key: str) -> str:
    """The group a row belongs to under ``key``: scales print as ``4-8-16``."""
    value = row.get(key)
    if isinstance(value, (list, tuple)):
        return "-".join(str(v) for v in value)
    return str(value)


def group_summary(
    rows: Sequence[Mapping[str, Any]], key: str, objective: Objective
) -> list[dict[str, Any]]:
    """Per group under ``key``: trials, trials with a value, best and median value, and the best
    trial's MACs, params, genotype fingerprint and id. Groups are sorted by best value."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(group_label(row, key), []).append(row)
    table = []
    for label, members in groups.items():
        scored = [(objective_value(r, objective), r) for r in members]
        scored = [(v, r) for v, r in scored if v is not None]
        entry: dict[str, Any] = {key: label, "trials": len(members), "scored": len(scored)}
        entry["worker_s"] = sum(r.get("worker_seconds") or 0.0 for r in members)
        entry["gpu_h"] = sum(r.get("gpu_seconds") or 0.0 for r in members) / 3600
        if scored:
            best_value, best_row = (max if objective.mode == "max" else min)(
                scored, key=lambda vr: vr[0]
            )
            entry.update(
                best=best_value,
                median=statistics.median(v for v, _ in scored),
                macs=best_row.get("macs"),
                params=best_row.get("params"),
                genotype_fp=best_row.get("genotype_fp"),
                trial_id=best_row.get("trial_id"),
            )
        else:
            entry.update(best=None, median=None, macs=None, params=None)
            entry.update(genotype_fp=None, trial_id=None)
        table.append(entry)
    sign = -1.0 if objective.mode == "max" else 1.0
    table.sort(key=lambda e: (e["best"] is None, sign * (e["best"] or 0.0), e[key]))
    return table


def dominates(a: Sequence[float], b: Sequence[float], modes: Sequence[str]) -> bool:
    """Whether point ``a`` is at least as good as ``b`` everywhere and better somewhere."""
    better = False
    for x, y, mode in zip(a, b, modes):
        if (x < y) if mode == "max" else (x > y):
            return False
        if x != y:
            better = True
    return better


def pareto_front(
    rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]
) -> list[Mapping[str, Any]]:
    """Rows not dominated by any other on the objectives' final values (rows lacking a value
    are left out). With one objective: the best row(s)."""
    points = []
    for row in rows:
        values = [objective_value(row, o, final=len(objectives) > 1) for o in objectives]
        if all(v is not None for v in values):
            points.append((values, row))
    modes = [o.mode for o in objectives]
    return [
        row
        for values, row in points
        if not any(dominates(other, values, modes) for other, _ in points)
    ]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value / 1e6:.2f}M"
    return str(value)


def format_table(entries: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table (header + one line per entry), columns left-aligned."""
    cells = [[str(c) for c in columns]] + [[_fmt(e.get(c)) for c in columns] for e in entries]
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in cells)


@dataclass
class Comparison:
    """What ``posenfs compare`` shows and writes."""

    campaign_id: str
    objectives: list[Objective]
    tables: dict[str, list[dict[str, Any]]]
    pareto: list[dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)
    plot_path: Path | None = None
    json_path: Path | None = None
    parts: dict[str, Any] = field(default_factory=dict)  # part_summary
    parts_plot_path: Path | None = None
    # per configuration run with several seeds (budget.seeds): confidence.seed_agreement
    seed_agreement: list[dict[str, Any]] = field(default_factory=list)
    controls: dict[str, Any] | None = None  # controls.json, once `posenfs controls` ran

    def text(self) -> str:
        primary = self.objectives[0]
        lines = [
            f"campaign {self.campaign_id}: {len(self.rows)} trials, by {primary.metric} "
            f"({primary.mode})"
        ]
        cols = ["trials", "scored", "best", "median", "macs", "params", "trial_id", "genotype_fp"]
        cols += ["worker_s", "gpu_h"]
        for key, entries in self.tables.items():
            lines += ["", f"per {key}:", format_table(entries, [key, *cols])]
        if len(self.objectives) > 1:
            names = [o.metric for o in self.objectives]
            entries = [
                {"trial_id": r["trial_id"], "grouping": r["grouping"], **final_values(r)}
                for r in self.pareto
            ]
            lines += ["", f"Pareto set over {names}:"]
            lines.append(format_table(entries, ["trial_id", "grouping", *names]))
        if self.parts.get("parts"):
            lines += ["", format_part_table(self.parts)]
        if self.seed_agreement:
            lines += ["", "agreement across seeds (trials of one configuration):"]
            for g in self.seed_agreement:
                equal, both = g["decided_equal"], g["decided_both"]
                decided = f"{equal} of {both} equal ({equal / both:.2f})" if both else "none"
                lines.append(
                    f"  {g['params']}  {g['seeds']} seeds: all decisions {g['all']:.2f} "
                    f"(chance {g['all_chance']:.2f}), ops {g['ops']:.2f} "
                    f"(chance {g['ops_chance']:.2f}), inputs {g['inputs']:.2f} "
                    f"(chance {g['inputs_chance']:.2f}); decided in both seeds: {decided}"
                )
                c = g["consensus"]
                verdict = "UNDECIDED" if c["undecided"] else "decided"
                lines.append(
                    f"    consensus of the {g['seeds']} seeds (mean α/β weights): genotype "
                    f"{c['fingerprint'][:12]}, {verdict} ({c['decided_share']:.0%} of decisions "
                    f"decided), {CONSENSUS_DIR}/{c['configuration']}.json; promote it with "
                    f"`posenfs promote --consensus`"
                )
        if self.controls:
            from nfs_orchestrator.orchestration.controls import format_controls

            lines += ["", format_controls(self.controls)]
        return "\n".join(lines)


def compare_rows(
    campaign_id: str, rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]
) -> Comparison:
    """The comparison of ledger rows (pure)."""
    tables = {key: group_summary(rows, key, objectives[0]) for key in GROUP_KEYS}
    pareto = [dict(r) for r in pareto_front(rows, objectives)]
    return Comparison(
        campaign_id,
        list(objectives),
        tables,
        pareto,
        [dict(r) for r in rows],
        parts=part_summary(rows),
    )


def plot_comparison(comparison: Comparison, path: str | Path) -> Path:
    """Two panels: best and median objective per grouping; objective vs MACs per trial with the
    Pareto set ringed (multi-objective: the first two objectives against each other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    primary = comparison.objectives[0]
    fig, (ax_bar, ax_scatter) = plt.subplots(1, 2, figsize=(11, 4.2))
    entries = [e for e in comparison.tables["grouping"] if e["best"] is not None]
    names = [e["grouping"] for e in entries]
    xs = range(len(entries))
    ax_bar.bar([x - 0.2 for x in xs], [e["best"] for e in entries], width=0.4, label="best")
    ax_bar.bar([x + 0.2 for x in xs], [e["median"] for e in entries], width=0.4, label="median")
    ax_bar.set_xticks(list(xs), names)
    ax_bar.set_ylabel(primary.metric)
    ax_bar.set_title("per part grouping")

    if len(comparison.objectives) > 1:
        x_obj, y_obj = comparison.objectives[1], comparison.objectives[0]
    else:
        x_obj, y_obj = Objective(metric="macs", mode="min"), primary
    pareto_ids = {r["trial_id"] for r in comparison.pareto}
    for grouping in sorted({r["grouping"] for r in comparison.rows}):
        pts = [
            (objective_value(r, x_obj, final=True), objective_value(r, y_obj), r["trial_id"])
            for r in comparison.rows
            if r["grouping"] == grouping
        ]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if not pts:
            continue  # no finished trial of this grouping
        ax_scatter.scatter([p[0] for p in pts], [p[1] for p in pts], label=grouping)
        ringed = [p for p in pts if p[2] in pareto_ids]
        ax_scatter.scatter(
            [p[0] for p in ringed],
            [p[1] for p in ringed],
            s=160,
            facecolors="none",
            edgecolors="black",
        )
    ax_scatter.set_xlabel(x_obj.metric)
    ax_scatter.set_ylabel(y_obj.metric)
    ax_scatter.set_title(
        "trials (ringed: Pareto set)" if len(comparison.objectives) > 1 else "trials (ringed: best)"
    )
    for ax in (ax_bar, ax_scatter):
        if ax.get_legend_handles_labels()[0]:  # a legend of nothing only warns
            ax.legend()
    fig.suptitle(comparison.campaign_id)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def comparison_json(comparison: Comparison) -> str:
    """The tables and Pareto set as canonical JSON (what ``compare.json`` holds)."""
    body = {
        "campaign_id": comparison.campaign_id,
        "objectives": [{"metric": o.metric, "mode": o.mode} for o in comparison.objectives],
        "tables": comparison.tables,
        "pareto": [r["trial_id"] for r in comparison.pareto],
        "parts": comparison.parts,
        "seed_agreement": comparison.seed_agreement,
    }
    return json.dumps(body, sort_keys=True, indent=2)


def compare_campaign(root: str | Path, campaign_id: str, *, log: bool = True) -> Comparison:
    """Reads a campaign's ledger, writes compare.json/compare.png (and compare_parts.png when
    trials reported per-part metrics) beside it and (``log``) logs them to the campaign's MLflow
    parent run."""
    from nfs_orchestrator.orchestration import store, tracking
    from nfs_orchestrator.orchestration.ledger import read_ledger

    record = store.load_record(root, campaign_id)
    rows = read_ledger(record.ledger_path)
    comparison = compare_rows(record.campaign_id, rows, record.spec.objectives)
    comparison.seed_agreement = seed_agreement(record.tracking_uri, rows, record.folder)
    controls = record.folder / "controls.json"
    comparison.controls = json.loads(controls.read_text()) if controls.is_file() else None
    comparison.json_path = record.folder / "compare.json"
    comparison.json_path.write_text(comparison_json(comparison) + "\n")
    comparison.plot_path = plot_comparison(comparison, record.folder / "compare.png")
    comparison.parts_plot_path = plot_parts(comparison, record.folder / "compare_parts.png")
    if log and record.tracking_uri and record.parent_run_id:
        paths = [comparison.json_path, comparison.plot_path]
        paths += [comparison.parts_plot_path] if comparison.parts_plot_path else []
        tracking.log_files(record.tracking_uri, record.parent_run_id, paths, "compare")
        consensus = [Path(g["consensus"]["path"]) for g in comparison.seed_agreement]
        if consensus:
            where = f"compare/{CONSENSUS_DIR}"
            tracking.log_files(record.tracking_uri, record.parent_run_id, consensus, where)
    return comparison


def seed_agreement(
    tracking_uri: str, rows: Sequence[Mapping[str, Any]], folder: Path | None = None
) -> list[dict]:
    """For every configuration (same outer choices) that finished with several seeds: how far
    their latest genotypes agree (``confidence.seed_agreement``), read from the trial runs, and
    their consensus genotype (``confidence.consensus_genotype``): its fingerprint, decided share
    and verdict, written to ``<folder>/consensus/<configuration id>.json`` when ``folder``."""
    from nfs_orchestrator.confidence import consensus_genotype
    from nfs_orchestrator.confidence import seed_agreement as agreement
    from nfs_orchestrator.orchestration import tracking
    from nfs_orchestrator.orchestration.ledger import seed_groups

    out = []
    for params, members in seed_groups(rows).items():
        genotypes = tracking.latest_genotypes(tracking_uri, members)
        consensus = consensus_genotype(genotypes)
        c, config = consensus.confidence, configuration_id(params)
        entry = {
            "params": params,
            **agreement(genotypes),
            "consensus": {
                "configuration": config,
                "fingerprint": consensus.fingerprint(),
                "decided_share": c["decided_share"],
                "margin_median": c["margin_median"],
                "undecided": c["undecided"],
            },
        }
        if folder is not None:
            path = folder / CONSENSUS_DIR / f"{config}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(consensus.to_json())
            entry["consensus"]["path"] = str(path)
        out.append(entry)
    return out


def configuration_id(params_json: str) -> str:
    """A short deterministic id of one configuration (a ledger row's ``params_json``)."""
    return hashlib.sha256(params_json.encode()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# Per part
# --------------------------------------------------------------------------------------------

ACCURACY_METRICS = ("val_ap", "val_pckh")  # COCO OKS AP (fraction), MPII PCKh@0.5 (percent)


def _grouping_order(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Groupings by number of parts, then name."""
    parts = {}
    for r in rows:
        parts.setdefault(str(r.get("grouping")), r.get("num_parts") or 0)
    return sorted(parts, key=lambda g: (parts[g], g))


def _part_order(grouping: str, seen: Sequence[str]) -> list[str]:
    """The parts ``seen`` of a grouping in its file's order when it is a shipped (or readable)
    grouping, else alphabetically."""
    try:
        from nfs_orchestrator.keypoints import load_grouping

        order = [p.name for p in load_grouping(grouping).parts]
    except Exception:  # noqa: BLE001 - a grouping file not found here: any order will do
        order = []
    return sorted(seen, key=lambda p: (order.index(p) if p in order else len(order), p))


def part_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Each part's accuracy and MACs per grouping: the mean over the grouping's trials of the
    latest ``<metric>.<part>`` in ``parts_json`` (``metric`` is ``val_ap`` or ``val_pckh``,
    whichever the trials report). Parts are rows, in grouping order then each grouping's own
    order; a part its grouping lacks has no cell. Empty when no trial reported a part."""
    per_part = [(r, part_values(r)) for r in rows]
    reported = {name.split(".", 1)[0] for _, values in per_part for name in values}
    metric = next((m for m in ACCURACY_METRICS if m in reported), None)
    if metric is None:
        return {}
    groupings = _grouping_order([r for r, values in per_part if values])
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    parts: list[str] = []
    for grouping in groupings:
        members = [values for r, values in per_part if str(r.get("grouping")) == grouping]
        seen = sorted({n.split(".", 1)[1] for v in members for n in v if "." in n})
        for part in _part_order(grouping, seen):
            acc = [v[f"{metric}.{part}"] for v in members if f"{metric}.{part}" in v]
            macs = [v[f"macs.{part}"] for v in members if f"macs.{part}" in v]
            if not acc and not macs:
                continue
            if part not in parts:
                parts.append(part)
            cells.setdefault(part, {})[grouping] = {
                "value": statistics.fmean(acc) if acc else None,
                "macs": statistics.fmean(macs) if macs else None,
                "trials": len(acc),
            }
    groupings = [g for g in groupings if any(g in c for c in cells.values())]
    return {"metric": metric, "groupings": groupings, "parts": parts, "cells": cells}


def format_part_table(summary: Mapping[str, Any]) -> str:
    """The part × grouping table of ``part_summary``: mean latest accuracy (trials)."""
    groupings, cells = summary["groupings"], summary["cells"]
    decimals = 1 if summary["metric"] == "val_pckh" else 3
    entries = []
    for part in summary["parts"]:
        entry: dict[str, Any] = {"part": part}
        for g in groupings:
            cell = cells[part].get(g)
            if cell is not None and cell["value"] is not None:
                entry[g] = f"{cell['value']:.{decimals}f} ({cell['trials']})"
        entries.append(entry)
    title = f"per part: mean over trials of the latest {summary['metric']}.<part> (trials)"
    return title + "\n" + format_table(entries, ["part", *groupings])


def plot_parts(comparison: Comparison, path: str | Path) -> Path | None:
    """Heatmap of ``comparison.parts``: parts down, groupings across, each cell the mean latest
    part accuracy with its MACs and trial count; None (nothing written) without per-part
    values."""
    summary = comparison.parts
    if not summary.get("parts"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    parts, groupings, cells = summary["parts"], summary["groupings"], summary["cells"]
    values = np.full((len(parts), len(groupings)), np.nan)
    for i, part in enumerate(parts):
        for j, g in enumerate(groupings):
            cell = cells[part].get(g)
            if cell is not None and cell["value"] is not None:
                values[i, j] = cell["value"]
    fig, ax = plt.subplots(
        figsize=(2.2 + 1.9 * len(groupings), 1.2 + 0.55 * len(parts)), layout="constrained"
    )
    ax.set_facecolor("#eeeeee")  # a part its grouping does not have
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high - low < 1e-9:
        low, high = low - 0.5 * max(abs(low), 1e-3), high + 0.5 * max(abs(high), 1e-3)
    image = ax.imshow(
        np.ma.masked_invalid(values), cmap="viridis", vmin=low, vmax=high, aspect="auto"
    )
    percent = summary["metric"] == "val_pckh"
    for i, part in enumerate(parts):
        for j, g in enumerate(groupings):
            cell = cells[part].get(g)
            if cell is None:
                continue
            lines = ["-" if cell["value"] is None else f"{cell['value']:.{1 if percent else 3}f}"]
            detail = f"n={cell['trials']}"
            if cell["macs"] is not None:
                detail += f" · {cell['macs'] / 1e6:.2f}M MACs"
            shade = 0.5 if not np.isfinite(values[i, j]) else (values[i, j] - low) / (high - low)
            colour = "black" if shade > 0.6 else "white"
            ax.text(j, i - 0.12, lines[0], ha="center", va="center", fontsize=10, color=colour)
            ax.text(j, i + 0.22, detail, ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(groupings)), groupings)
    ax.set_yticks(range(len(parts)), parts)
    ax.xaxis.tick_top()
    ax.set_xticks(np.arange(len(groupings) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(parts) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=2)
    ax.tick_params(which="both", length=0)
    ax.set_xlabel("grey: the grouping has no such part", fontsize=8, color="#666666")
    fig.colorbar(image, ax=ax, label=f"{summary['metric']}.<part> (mean of latest)")
    ax.set_title(f"{comparison.campaign_id}: per-part accuracy", fontsize=10, pad=24)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
