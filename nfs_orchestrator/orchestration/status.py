"""``posenfs status``: campaigns and their trials, formatted from the files on disk alone.

What this is: ``summarize`` (one campaign at a glance), ``format_campaigns`` (the table without
an id) and ``format_trials`` (one campaign's trials), over the record (``store.py``) and the
ledger (``ledger.py``). It never starts Ray, never imports ray, optuna or mlflow and never
contacts a server.

What it is not: the record's layout (``store.py``) or the ledger's writer (the campaign's Tune
callback, ``tune_callback.py``).
"""

from __future__ import annotations

from typing import Any

from nfs_orchestrator.orchestration.ledger import DONE_STATUSES, read_ledger
from nfs_orchestrator.orchestration.store import CampaignRecord, effective_status


def summarize(record: CampaignRecord) -> dict[str, Any]:
    """One campaign at a glance: status, trials done/started/budget, best so far."""
    rows = read_ledger(record.ledger_path)
    primary = record.spec.objectives[0]
    scored = [r for r in rows if r.get("best") is not None]
    best = None
    if scored:
        pick = max if primary.mode == "max" else min
        best = pick(scored, key=lambda r: r["best"])
    return {
        "campaign_id": record.campaign_id,
        "status": effective_status(record.state),
        "updated": record.state.get("updated", "-"),
        "trials_done": sum(r["status"] in DONE_STATUSES for r in rows),
        "trials_started": len(rows),
        "budget": record.spec.budget.num_trials,
        "metric": primary.metric,
        "best": best["best"] if best else None,
        "best_trial": best["trial_id"] if best else None,
        "best_grouping": best["grouping"] if best else None,
        "worker_seconds": sum(r.get("worker_seconds") or 0.0 for r in rows),
        "gpu_hours": sum(r.get("gpu_seconds") or 0.0 for r in rows) / 3600,
    }


def format_campaigns(records: list[CampaignRecord]) -> str:
    """The table of ``posenfs status`` without an id."""
    if not records:
        return "no campaigns"
    lines = []
    for s in (summarize(r) for r in records):
        best = "-" if s["best"] is None else f"{s['best']:.4g} ({s['best_trial']}, "
        best += "" if s["best"] is None else f"{s['best_grouping']})"
        lines.append(
            f"{s['campaign_id']:<36} {s['status']:<12} trials {s['trials_done']}/{s['budget']}"
            f" (started {s['trials_started']})  best {s['metric']} {best}"
            f"  worker-s {s['worker_seconds']:.0f}  GPU-h {s['gpu_hours']:.2f}"
        )
    return "\n".join(lines)


def format_trials(record: CampaignRecord) -> str:
    """The per-trial table of ``posenfs status ID``."""
    s = summarize(record)
    rows = read_ledger(record.ledger_path)
    head = [
        f"campaign {record.campaign_id}: {s['status']} (updated {s['updated']})",
        f"trials {s['trials_done']} done, {s['trials_started']} started, budget {s['budget']}",
        f"cost so far: {s['worker_seconds']:.0f} worker-seconds, {s['gpu_hours']:.2f} GPU-hours",
        f"ledger {record.ledger_path}",
        "",
    ]
    cols = ["trial_id", "status", "epochs", s["metric"], "grouping", "depth", "scales", "seed"]
    cols += ["genotype", "decided", "worker-s", "GPU-h"]
    table = [cols]
    for r in rows:
        table.append(
            [
                r["trial_id"],
                r["status"],
                f"{r['epochs_run']}/{r['epochs'] or '-'}",
                "-" if r["best"] is None else f"{r['best']:.4g}",
                str(r["grouping"] or "-"),
                str(r["depth"] or "-"),
                "-".join(str(v) for v in r["scales"] or []),
                "-" if r.get("seed") is None else str(r["seed"]),
                (r["genotype_fp"] or "-")[:12],
                _decided(r),
                f"{r.get('worker_seconds') or 0.0:.0f}",
                f"{(r.get('gpu_seconds') or 0.0) / 3600:.2f}",
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(head + body)


def _decided(row: dict[str, Any]) -> str:
    """A trial's confidence at a glance: the share of decided decisions, UNDECIDED flagged."""
    share = row.get("decided_share")
    if share is None:
        return "-"
    return f"{share:.0%}" + (" UNDECIDED" if row.get("undecided") else "")
