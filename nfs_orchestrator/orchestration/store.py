"""The campaign's record on disk: where it lives, what it is, whether it runs.

What this is: the layout of ``<root>/campaigns/<campaign_id>/``: ``campaign.json``
(``CampaignRecord``: the resolved spec and where the campaign's state lives — Ray storage, the
MLflow store, the parent run; written by the campaign driver, the same content on every
resume), ``state.json`` (running, finished, interrupted or failed, with the driver's pid and
host) and the path of ``ledger.parquet``; and the readers over them (``load_record`` by id or
unique prefix, ``list_records``, ``effective_status``). Reading never imports ray, optuna or
mlflow and never contacts a server, so it works while a campaign runs, after it was killed, and
on a laptop holding a copied root.

What it is not: the ledger's rows (``ledger.py``) or how ``posenfs status`` shows them
(``status.py``).
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfs_orchestrator.campaign_spec import CampaignSpec
from nfs_orchestrator.errors import PosenfsError
from nfs_orchestrator.files import write_atomic
from nfs_orchestrator.orchestration.ledger import LEDGER_NAME
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


def write_record(record: CampaignRecord) -> Path:
    """Writes ``campaign.json`` (atomically; same content on every resume)."""
    path = record.folder / RECORD_NAME
    write_atomic(path, record.to_json())
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
    write_atomic(folder / STATE_NAME, json.dumps(body, indent=2, sort_keys=True) + "\n")


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
