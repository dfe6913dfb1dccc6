"""The campaign ledger: one row per trial, in a fixed Parquet schema.

What this is: ``LEDGER_SCHEMA`` and pure functions that make, update, write and read ledger rows.
A row describes the trial (grouping, fabric, depth, scales, ops, the outer choices as JSON), how
far it got (status, epochs run, the epoch it last resumed at), what it scored (best value of the
primary objective, the final value of every objective, best val_ap/val_pckh/val_loss), what it
derived (MACs, params, genotype fingerprint), what it cost (wall time, worker-seconds held) and
its latest per-part metrics (``parts_json``: every reported metric with a dot in its name).
The schema is fixed, so ledgers of different campaigns concatenate.

The columns that describe a trial (``trial_columns``) are computed once, by the trial driver
from the TrialSpec it built, and reach the ledger's writer in every result of the trial
(``update_with_result``); until a trial's first result its row holds only its outer choices.

Writes are atomic (``files.write_atomic_with``), so a reader (``posenfs status``) never sees half a
file. What it is not: the code that decides when to write (the campaign's Tune callback,
``tune_callback.py``) or the MLflow upload (``tracking.py``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from nfs_orchestrator.campaign_spec import Objective
from nfs_orchestrator.files import write_atomic_with
from nfs_orchestrator.specs import TrialSpec

LEDGER_SCHEMA = pa.schema(
    [
        ("campaign_id", pa.string()),
        ("trial_id", pa.string()),
        ("run_id", pa.string()),  # MLflow child run
        ("status", pa.string()),  # one of STATUSES
        ("grouping", pa.string()),
        ("num_parts", pa.int32()),
        ("fabric", pa.string()),
        ("depth", pa.int32()),
        ("scales", pa.list_(pa.int32())),
        ("ops", pa.list_(pa.string())),
        ("seed", pa.int64()),  # the trial's seed (budget.seeds: one configuration, many seeds)
        ("params_json", pa.string()),  # the outer choices, canonical JSON
        ("epochs", pa.int32()),  # planned
        ("epochs_run", pa.int32()),  # epochs reported so far
        ("start_epoch", pa.int32()),  # the epoch the latest attempt resumed at
        ("objective", pa.string()),  # metric of the primary objective
        ("best", pa.float64()),  # its best value over epochs
        ("best_epoch", pa.int32()),
        ("final_json", pa.string()),  # latest value of every objective metric, JSON
        ("val_ap", pa.float64()),  # best over epochs (absent metrics stay null)
        ("val_pckh", pa.float64()),
        ("val_loss", pa.float64()),  # lowest over epochs
        ("macs", pa.int64()),  # of the latest derived network
        ("params", pa.int64()),
        ("genotype_fp", pa.string()),  # of the latest genotype
        # the latest genotype's confidence (confidence.py): share of decided decisions, median
        # margin, and whether it is undecided (too few decisions above the noise threshold)
        ("decided_share", pa.float64()),
        ("margin_median", pa.float64()),
        ("undecided", pa.bool_()),
        # why a trial stopped before its planned epochs, when the search said so (a collapse
        # monitor, search.collapse); ASHA's stops are the status EARLY_STOPPED
        ("stop_reason", pa.string()),
        # for each metric whose best is kept (the primary objective, val_ap, val_pckh,
        # val_loss): {metric: [epoch, genotype fingerprint]} of the epoch that scored it
        ("best_genotypes_json", pa.string()),
        ("wall_time_s", pa.float64()),
        ("worker_seconds", pa.float64()),  # wall time × workers held
        ("gpu_seconds", pa.float64()),  # wall time × GPUs held (workers × GPUs per worker)
        # latest value of every per-part metric (val_ap.<part>, macs.<part>, …), JSON; a
        # ledger written before this column reads it as null
        ("parts_json", pa.string()),
    ]
)

STATUSES = ("PENDING", "RUNNING", "FINISHED", "EARLY_STOPPED", "FAILED", "KILLED")
DONE_STATUSES = ("FINISHED", "EARLY_STOPPED", "FAILED")
LEDGER_NAME = "ledger.parquet"

_BEST_MAX = ("val_ap", "val_pckh")
_BEST_MIN = ("val_loss",)


TRIAL_COLUMNS = ("grouping", "num_parts", "fabric", "depth", "scales", "ops", "seed", "epochs")


def trial_columns(trial: TrialSpec) -> dict[str, Any]:
    """The ledger columns that describe ``trial`` (``TRIAL_COLUMNS``)."""
    return {
        "grouping": trial.grouping.name,
        "num_parts": trial.grouping.num_parts,
        "fabric": trial.fabric.name,
        "depth": trial.fabric.depth,
        "scales": list(trial.fabric.scales),
        "ops": list(trial.fabric.ops),
        "seed": trial.seed,
        "epochs": trial.search.epochs,
    }


def pending_row(
    campaign_id: str, trial_id: str, params: Mapping[str, Any], objective: Objective
) -> dict:
    """A PENDING row of a trial known only by its outer choices ``params``."""
    row: dict[str, Any] = {name: None for name in LEDGER_SCHEMA.names}
    row.update(
        campaign_id=campaign_id,
        trial_id=trial_id,
        status="PENDING",
        params_json=json.dumps(params, sort_keys=True, separators=(",", ":")),
        epochs_run=0,
        objective=objective.metric,
        wall_time_s=0.0,
        worker_seconds=0.0,
        gpu_seconds=0.0,
    )
    return row


def new_row(campaign_id: str, trial_id: str, trial: TrialSpec, objective: Objective) -> dict:
    """A PENDING row describing ``trial`` before it reports anything."""
    return {**pending_row(campaign_id, trial_id, trial.params, objective), **trial_columns(trial)}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _better(new: float, old: float | None, mode: str) -> bool:
    return old is None or (new > old if mode == "max" else new < old)


def update_with_result(
    row: Mapping[str, Any], result: Mapping[str, Any], objectives: Sequence[Objective]
) -> dict:
    """The row after one reported epoch ``result`` (the metrics of ``runtime.report``).

    Epochs are 0-based in results; ``epochs_run`` counts them. A re-reported epoch (a resume
    redoing the last one) only updates values, never the count.
    """
    out = dict(row)
    if isinstance(result.get("trial_columns"), str):
        described = json.loads(result["trial_columns"])
        out.update((k, described[k]) for k in TRIAL_COLUMNS if k in described)
    epoch = int(result.get("epoch", -1))
    out["epochs_run"] = max(int(out.get("epochs_run") or 0), epoch + 1)
    if "start_epoch" in result:
        out["start_epoch"] = int(result["start_epoch"])
    primary = objectives[0]
    fp = result.get("genotype_fp") if isinstance(result.get("genotype_fp"), str) else None
    sources = json.loads(out["best_genotypes_json"]) if out.get("best_genotypes_json") else {}
    value = _finite(result.get(primary.metric))
    if value is not None and _better(value, out.get("best"), primary.mode):
        out["best"], out["best_epoch"] = value, epoch
        sources[primary.metric] = [epoch, fp]
    final = json.loads(out["final_json"]) if out.get("final_json") else {}
    for objective in objectives:
        v = _finite(result.get(objective.metric))
        if v is not None:
            final[objective.metric] = v
    out["final_json"] = json.dumps(final, sort_keys=True)
    for name in _BEST_MAX + _BEST_MIN:
        v = _finite(result.get(name))
        if v is not None and _better(v, out.get(name), "max" if name in _BEST_MAX else "min"):
            out[name] = v
            sources[name] = [epoch, fp]
    out["best_genotypes_json"] = json.dumps(sources, sort_keys=True)
    for name in ("macs", "params"):
        v = _finite(result.get(name))
        if v is not None:
            out[name] = int(v)
    for column, key in (
        ("decided_share", "confidence_decided"),
        ("margin_median", "margin_median"),
    ):
        v = _finite(result.get(key))
        if v is not None:
            out[column] = v
    share = _finite(result.get("collapse_share"))
    if share is not None:
        action = "stopped" if result.get("arch_frozen_at") is None else "froze α/β"
        out["stop_reason"] = (
            f"collapse at epoch {epoch}: parameter-free share {share:.2f} ({action})"
        )
    if _finite(result.get("undecided")) is not None:
        out["undecided"] = bool(result["undecided"])
    if isinstance(result.get("genotype_fp"), str) and result["genotype_fp"]:
        out["genotype_fp"] = result["genotype_fp"]
    out["parts_json"] = updated_parts_json(out.get("parts_json"), result)
    return out


def updated_parts_json(parts_json: str | None, result: Mapping[str, Any]) -> str | None:
    """``parts_json`` with the finite values of ``result``'s dotted metrics (``val_ap.head``)
    written over the earlier ones; None while no result had any. A flattened Tune key
    (``config/fabric.depth``) is no metric."""
    parts = json.loads(parts_json) if parts_json else {}
    for name, value in result.items():
        v = _finite(value)
        if "." in name and "/" not in name and v is not None:
            parts[name] = v
    return json.dumps(parts, sort_keys=True) if parts else None


def part_values(row: Mapping[str, Any]) -> dict[str, float]:
    """The latest per-part metrics of a row (empty without any)."""
    return json.loads(row["parts_json"]) if row.get("parts_json") else {}


def final_values(row: Mapping[str, Any]) -> dict[str, float]:
    """The latest value of every objective metric of a row (empty before the first report)."""
    return json.loads(row["final_json"]) if row.get("final_json") else {}


def to_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows (sorted by trial id) as a table of exactly ``LEDGER_SCHEMA``."""
    ordered = sorted(rows, key=lambda r: str(r["trial_id"]))
    columns = {name: [r.get(name) for r in ordered] for name in LEDGER_SCHEMA.names}
    return pa.table(columns, schema=LEDGER_SCHEMA)


def write_ledger(rows: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Writes the ledger atomically: the file is either the old one or the new one."""
    table = to_table(rows)
    return write_atomic_with(path, lambda tmp: pq.write_table(table, tmp))


def best_genotype(row: Mapping[str, Any], metric: str) -> tuple[int | None, str | None]:
    """The epoch and genotype fingerprint behind the row's best ``metric`` (a metric whose best
    is kept); (None, latest fingerprint) for any other metric, whose value is the latest."""
    sources = json.loads(row["best_genotypes_json"]) if row.get("best_genotypes_json") else {}
    if metric == "best":
        metric = row.get("objective") or metric
    if metric in sources:
        epoch, fp = sources[metric]
        return int(epoch), fp
    return None, row.get("genotype_fp")


def seed_groups(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """The configurations (same outer choices: ``params_json``) that finished, or were stopped
    early, with a genotype in at least two seeds: {params_json: their rows, by trial id},
    sorted by params_json (``budget.seeds``)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        done = row.get("status") in ("FINISHED", "EARLY_STOPPED")
        if done and row.get("genotype_fp") and row.get("run_id"):
            groups.setdefault(row.get("params_json") or "{}", []).append(row)
    return {
        params: sorted(members, key=lambda r: r["trial_id"])
        for params, members in sorted(groups.items())
        if len({r.get("seed") for r in members}) >= 2
    }


def read_ledger(path: str | Path) -> list[dict]:
    """The rows of a ledger file (an absent file is an empty ledger). A ledger written before
    a column existed reads with that column empty. The file is read through one open handle:
    given a path, pyarrow stats it and opens it separately, so a ledger replaced in between (the
    campaign writes it every result) read as a torn file. Read on this thread: with pyarrow's
    threaded scan of a file object, a process that read twice could abort at exit ("terminate
    called without an active exception", apache/arrow#34314; pyarrow 25: 47 of 60 bare
    two-read processes, 13 of 60 running what `posenfs status` runs), and a ledger is a few
    hundred rows."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, "rb") as f:  # this inode, whatever replaces the path meanwhile
        table = pq.read_table(f, use_threads=False)
    for name in LEDGER_SCHEMA.names:
        if name not in table.column_names:
            field = LEDGER_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(LEDGER_SCHEMA.names).cast(LEDGER_SCHEMA).to_pylist()
