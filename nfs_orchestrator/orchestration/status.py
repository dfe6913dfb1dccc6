"""Campaign state on disk, and ``posenfs status`` read from it alone.

What this is: the layout of ``<root>/campaigns/<campaign_id>/`` (``campaign.json``: the resolved
spec and where its state lives, written once; ``state.json``: whether the campaign is running,
finished or interrupted; ``ledger.parquet``: one row per trial) and fast readers over it. Status
never starts Ray, never imports ray, optuna or mlflow, and never contacts a server: it reads files,
so it works while a campaign runs, after it was killed, and on a laptop holding a copied root.

What it is not: the writer of the ledger (``ledger.py`` via the campaign's Tune callback).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfs_orchestrator.errors import PosenfsError
from nfs_orchestrator.orchestration.ledger import DONE_STATUSES, LEDGER_NAME, read_ledger
from nfs_orchestrator.specs import CampaignSpec
from nfs_orchestrator.strict import suggest

RECORD_NAME = "campaign.json"
STATE_NAME = "state.json"


def campaigns_dir(root: str | Path) -> Path:
    return Path(root).resolve() / "campaigns"


@dataclass
class CampaignRecord:
    """What ``campaign.json`` holds: the resolved spec and where the campaign's state lives."""

    campaign_id: str
    spec: CampaignSpec
    root: str  # absolute
    base_dir: str  # where `posenfs search` ran; relative data paths resolve against it
    ray_storage: str
    tracking_uri: str
    experiment_name: str
    parent_run_id: str | None = None
    state: dict[str, Any] = field(default_factory=dict)

    @property
    def folder(self) -> Path:
        return campaigns_dir(self.root) / self.campaign_id

    @property
    def ledger_path(self) -> Path:
        return self.folder / LEDGER_NAME

    def to_json(self) -> str:
        body = {
            "campaign_id": self.campaign_id,
            "spec": self.spec.to_dict(),
            "root": self.root,
            "base_dir": self.base_dir,
            "ray_storage": self.ray_storage,
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.experiment_name,
            "parent_run_id": self.parent_run_id,
        }
        return json.dumps(body, indent=2, sort_keys=True) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_record(record: CampaignRecord) -> Path:
    """Writes ``campaign.json`` (atomically; same content on every resume)."""
    path = record.folder / RECORD_NAME
    _atomic_write(path, record.to_json())
    return path


def read_state(folder: Path) -> dict[str, Any]:
    path = folder / STATE_NAME
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def write_state(folder: Path, status: str, **extra: Any) -> None:
    """Writes ``state.json``: status (running | finished | interrupted | failed), this process's
    pid and host (to tell a killed campaign from a running one), the time, and ``extra``."""
    body = {
        "status": status,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **extra,
    }
    _atomic_write(folder / STATE_NAME, json.dumps(body, indent=2, sort_keys=True) + "\n")


def _read_record(folder: Path) -> CampaignRecord:
    path = folder / RECORD_NAME
    try:
        body = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PosenfsError(f"{path}: unreadable campaign record ({e})") from None
    return CampaignRecord(
        campaign_id=body["campaign_id"],
        spec=CampaignSpec.from_dict(body["spec"], path="campaign.json:spec"),
        root=body["root"],
        base_dir=body["base_dir"],
        ray_storage=body["ray_storage"],
        tracking_uri=body["tracking_uri"],
        experiment_name=body["experiment_name"],
        parent_run_id=body.get("parent_run_id"),
        state=read_state(folder),
    )


def list_records(root: str | Path) -> list[CampaignRecord]:
    """Every campaign under ``root``, sorted by id."""
    base = campaigns_dir(root)
    if not base.is_dir():
        return []
    folders = sorted(p for p in base.iterdir() if (p / RECORD_NAME).is_file())
    return [_read_record(p) for p in folders]


def load_record(root: str | Path, campaign_id: str) -> CampaignRecord:
    """The campaign ``campaign_id`` under ``root``; a unique prefix (e.g. the campaign's name)
    is accepted. Unknown or ambiguous ids are a one-line error listing what exists."""
    base = campaigns_dir(root)
    if (base / campaign_id / RECORD_NAME).is_file():
        return _read_record(base / campaign_id)
    known = [p.name for p in sorted(base.glob("*")) if (p / RECORD_NAME).is_file()]
    matches = [k for k in known if k.startswith(campaign_id)]
    if len(matches) == 1:
        return _read_record(base / matches[0])
    if matches:
        raise PosenfsError(f"campaign id {campaign_id!r} is ambiguous: {matches}")
    raise PosenfsError(
        f"no campaign {campaign_id!r} under {base}{suggest(campaign_id, known)}; known: {known}"
    )


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def effective_status(state: dict[str, Any]) -> str:
    """The recorded status, with a running campaign whose process is gone shown as
    ``stopped`` (killed hard: resume it)."""
    status = state.get("status", "unknown")
    if status == "running" and state.get("host") == socket.gethostname():
        if not _pid_alive(state.get("pid")):
            return "stopped"
    return status


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
            f"  worker-s {s['worker_seconds']:.0f}"
        )
    return "\n".join(lines)


def format_trials(record: CampaignRecord) -> str:
    """The per-trial table of ``posenfs status ID``."""
    s = summarize(record)
    rows = read_ledger(record.ledger_path)
    head = [
        f"campaign {record.campaign_id}: {s['status']} (updated {s['updated']})",
        f"trials {s['trials_done']} done, {s['trials_started']} started, budget {s['budget']}",
        f"ledger {record.ledger_path}",
        "",
    ]
    cols = ["trial_id", "status", "epochs", s["metric"], "grouping", "depth", "scales", "genotype"]
    table = [cols]
    for r in rows:
        table.append(
            [
                r["trial_id"],
                r["status"],
                f"{r['epochs_run']}/{r['epochs']}",
                "-" if r["best"] is None else f"{r['best']:.4g}",
                str(r["grouping"]),
                str(r["depth"]),
                "-".join(str(v) for v in r["scales"] or []),
                (r["genotype_fp"] or "-")[:12],
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in table]
    return "\n".join(head + body)
