"""Side-by-side comparison of a campaign's trials: per grouping, per depth, per scales.

What this is: pure functions over ledger rows (``group_summary``, ``pareto_front``,
``format_table``), one matplotlib figure (``plot_comparison``) and ``compare_campaign``, which reads
a campaign's ledger, writes ``compare.json`` and ``compare.png`` into the campaign folder and logs
both to the campaign's MLflow parent run.

Values: a trial's score on the primary objective is its best value over epochs (``best``); the
Pareto set of a multi-objective campaign uses each trial's *final* values (those Optuna was told),
because the best of each metric may come from different epochs and describe no single network.
What it is not: a selector for promotion (that rule lives with ``promote``).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfs_orchestrator.campaign_spec import Objective
from nfs_orchestrator.orchestration.ledger import final_values

GROUP_KEYS = ("grouping", "depth", "scales")


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
        return "\n".join(lines)


def compare_rows(
    campaign_id: str, rows: Sequence[Mapping[str, Any]], objectives: Sequence[Objective]
) -> Comparison:
    """The comparison of ledger rows (pure)."""
    tables = {key: group_summary(rows, key, objectives[0]) for key in GROUP_KEYS}
    pareto = [dict(r) for r in pareto_front(rows, objectives)]
    return Comparison(campaign_id, list(objectives), tables, pareto, [dict(r) for r in rows])


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
    ax_bar.legend()

    if len(comparison.objectives) > 1:
        x_obj, y_obj = comparison.objectives[1], comparison.objectives[0]
    else:
        x_obj, y_obj = Objective(metric="macs", mode="min"), primary
    pareto_ids = {r["trial_id"] for r in comparison.pareto}
    groupings = sorted({r["grouping"] for r in comparison.rows})
    for grouping in groupings:
        pts = [
            (objective_value(r, x_obj, final=True), objective_value(r, y_obj), r["trial_id"])
            for r in comparison.rows
            if r["grouping"] == grouping
        ]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
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
    if groupings:
        ax_scatter.legend()
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
    }
    return json.dumps(body, sort_keys=True, indent=2)


def compare_campaign(root: str | Path, campaign_id: str, *, log: bool = True) -> Comparison:
    """Reads a campaign's ledger, writes compare.json/compare.png beside it and (``log``) logs
    both to the campaign's MLflow parent run."""
    from nfs_orchestrator.orchestration import store, tracking
    from nfs_orchestrator.orchestration.ledger import read_ledger

    record = store.load_record(root, campaign_id)
    rows = read_ledger(record.ledger_path)
    comparison = compare_rows(record.campaign_id, rows, record.spec.objectives)
    comparison.json_path = record.folder / "compare.json"
    comparison.json_path.write_text(comparison_json(comparison) + "\n")
    comparison.plot_path = plot_comparison(comparison, record.folder / "compare.png")
    if log and record.tracking_uri and record.parent_run_id:
        paths = [comparison.json_path, comparison.plot_path]
        tracking.log_files(record.tracking_uri, record.parent_run_id, paths, "compare")
    return comparison
