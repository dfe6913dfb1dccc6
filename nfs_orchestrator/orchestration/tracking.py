"""Every MLflow call of posenfs: experiments, runs, tags, params, metrics and artifacts.

What this is: a thin layer over ``mlflow.MlflowClient`` (never the fluent ``mlflow.start_run``,
whose active-run state and ``MLFLOW_RUN_ID`` override, mlflow#15713, do not mix with Ray
processes). One experiment per campaign (``posenfs/<campaign_id>``); in it one parent run per
campaign and one child run per trial, each found again by its tags, so a resumed or retried
campaign reuses its runs instead of duplicating them (``get_or_create_run``). Rank 0 of a trial
logs each epoch's metrics (step = epoch), ``genotype.json`` (latest, plus ``genotype/epoch_NNNN``),
the fabric drawing and the alpha/beta plot, and tags the run with the genotype fingerprint.
Runs end FINISHED, FAILED (with the error as a tag) or KILLED, never left RUNNING by a clean stop.

Default store (embedded campaigns): ``sqlite:///<root>/mlflow.db``, artifacts under
``<root>/mlartifacts/<campaign_id>``. What it is not: the decision of *when* to log (that is
``ray_runtime.py``, ``trial.py`` and the campaign callback).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException

from nfs_orchestrator.specs import CampaignSpec, TrialSpec

TAG_KIND = "nfs.kind"  # "campaign" | "trial"
TAG_CAMPAIGN = "nfs.campaign_id"
TAG_TRIAL = "nfs.trial_id"
TAG_SPEC_FP = "nfs.spec_fp"  # campaign or trial spec fingerprint
TAG_GENOTYPE = "nfs.genotype_fp"  # fingerprint of the latest genotype.json
TAG_EPOCH = "nfs.epoch"  # latest reported epoch (0-based)
TAG_STATUS = "nfs.status"  # running | finished | early_stopped | failed | killed
TAG_ERROR = "nfs.error"
TAG_PREEMPTED = "nfs.preempted"  # "true" on trial runs ended KILLED by a SIGTERM / pre-emption
TAG_LOST = "nfs.lost"  # "true" on trial runs Tune never recorded (campaign.finish_campaign)
TAG_PARENT = "mlflow.parentRunId"

GENOTYPE_ARTIFACT = "genotype.json"
LEDGER_ARTIFACT = "ledger.parquet"


# --------------------------------------------------------------------------------------------
# Stores, experiments and runs
# --------------------------------------------------------------------------------------------


def default_tracking_uri(root: str | Path) -> str:
    """``sqlite:////abs/root/mlflow.db`` (SQLite needs an absolute path; never a ``file:`` store,
    which MLflow ≥ 3.13 refuses)."""
    return "sqlite:///" + str(Path(root).resolve() / "mlflow.db")


def default_artifact_location(root: str | Path, campaign_id: str) -> str:
    return (Path(root).resolve() / "mlartifacts" / campaign_id).as_uri()


def experiment_name(campaign_id: str) -> str:
    return f"posenfs/{campaign_id}"


def scrub_environment() -> None:
    """Drops ``MLFLOW_RUN_ID`` from this process (and the Ray workers it starts): a stray id
    would redirect fluent logging into an unrelated run (mlflow#15713)."""
    if os.environ.pop("MLFLOW_RUN_ID", None):
        print("posenfs: ignoring MLFLOW_RUN_ID from the environment", file=sys.stderr)


@functools.lru_cache(maxsize=8)
def client(tracking_uri: str) -> MlflowClient:
    """One client per store and process."""
    return MlflowClient(tracking_uri=tracking_uri)


def get_or_create_experiment(
    c: MlflowClient, name: str, artifact_location: str | None = None
) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) if absent."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in sorted(tags.items()))


def find_runs(c: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> list[Run]:
    """Runs of the experiment carrying all ``tags``, oldest first."""
    return list(
        c.search_runs(
            [experiment_id], _filter(tags), max_results=1000, order_by=["attributes.start_time ASC"]
        )
    )


def get_or_create_run(
    c: MlflowClient,
    experiment_id: str,
    *,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
) -> str:
    """The id of the run carrying ``tags``: found by them, created once; a run that had ended
    (a resumed or retried trial) is set RUNNING again."""
    runs = find_runs(c, experiment_id, tags)
    if not runs:
        all_tags = dict(tags)
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        run = c.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return run.info.run_id
    run = runs[0]
    if run.info.status != "RUNNING":
        c.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


def end_run(
    c: MlflowClient, run_id: str, status: str, *, label: str | None = None, error: str = ""
) -> None:
    """Ends a run as FINISHED, FAILED or KILLED; ``label`` (e.g. early_stopped) goes to the
    ``nfs.status`` tag, ``error`` (its last 5000 characters) to ``nfs.error``."""
    c.set_tag(run_id, TAG_STATUS, label or status.lower())
    if error:
        c.set_tag(run_id, TAG_ERROR, error[-5000:])
    c.set_terminated(run_id, status)


# --------------------------------------------------------------------------------------------
# Campaign and trial runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingTarget:
    """Where a campaign logs: crosses to Tune drivers and Train workers as a plain dict."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> TrackingTarget:
        return cls(**data)


def open_campaign(
    tracking_uri: str, campaign: CampaignSpec, artifact_location: str | None = None
) -> TrackingTarget:
    """Gets or creates the campaign's experiment and parent run, marks it running and logs the
    campaign's params and resolved spec (idempotent)."""
    c = client(tracking_uri)
    cid = campaign.campaign_id
    exp_id = get_or_create_experiment(c, experiment_name(cid), artifact_location)
    tags = {TAG_KIND: "campaign", TAG_CAMPAIGN: cid}
    run_id = get_or_create_run(c, exp_id, run_name=cid, tags=tags)
    c.set_tag(run_id, TAG_SPEC_FP, campaign.fingerprint())
    c.set_tag(run_id, TAG_STATUS, "running")
    params = {
        "campaign_id": cid,
        "dataset": campaign.data.dataset,
        "fabric": campaign.fabric,
        "grouping": campaign.grouping,
        "backbone": campaign.backbone.name,
        "search_mode": campaign.search.mode,
        "epochs": campaign.search.epochs,
        "num_trials": campaign.budget.num_trials,
        "objectives": ",".join(f"{o.metric}:{o.mode}" for o in campaign.objectives),
        "outer": ",".join(campaign.outer) or "-",
        "seed": campaign.seed,
    }
    c.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    c.log_dict(run_id, campaign.to_dict(), "campaign.json")
    return TrackingTarget(tracking_uri, exp_id, run_id)


def trial_params(trial: TrialSpec) -> dict[str, str]:
    """What a trial run shows as params: the grouping, fabric geometry, op set, learning rates,
    and every outer choice as ``outer.<key>``."""
    s = trial.search
    params: dict[str, Any] = {
        "grouping": trial.grouping.name,
        "num_parts": trial.grouping.num_parts,
        "fabric": trial.fabric.name,
        "depth": trial.fabric.depth,
        "cut": trial.fabric.cut,
        "scales": ",".join(str(v) for v in trial.fabric.scales),
        "channel_factor": trial.fabric.channel_factor,
        "ops": ",".join(trial.fabric.ops),
        "search_mode": s.mode,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "weight_optimizer": s.weight_optimizer.name,
        "weight_lr": s.weight_optimizer.lr,
        "arch_optimizer": s.arch_optimizer.name,
        "arch_lr": s.arch_optimizer.lr,
        "backbone": trial.backbone.name,
        "dataset": trial.data.dataset,
        "input_size": "x".join(str(v) for v in trial.data.input_size),
        "seed": trial.seed,
    }
    for key, value in sorted(trial.params.items()):
        params[f"outer.{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return {k: str(v) for k, v in params.items()}


def open_trial(
    target: TrackingTarget, campaign_id: str, trial_id: str, trial: TrialSpec, run_name: str
) -> str:
    """Gets or creates the trial's child run (found by campaign + trial id), marks it running and
    logs its params (the same values on every resume, so MLflow accepts them again)."""
    c = client(target.tracking_uri)
    tags = {TAG_KIND: "trial", TAG_CAMPAIGN: campaign_id, TAG_TRIAL: trial_id}
    run_id = get_or_create_run(
        c, target.experiment_id, run_name=run_name, tags=tags, parent_run_id=target.parent_run_id
    )
    c.set_tag(run_id, TAG_SPEC_FP, trial.fingerprint())
    c.set_tag(run_id, TAG_STATUS, "running")
    c.log_batch(run_id, params=[Param(k, v) for k, v in trial_params(trial).items()])
    return run_id


def find_trial_run(target: TrackingTarget, campaign_id: str, trial_id: str) -> str | None:
    """The child run of a trial, or None if its driver has not created it yet."""
    tags = {TAG_KIND: "trial", TAG_CAMPAIGN: campaign_id, TAG_TRIAL: trial_id}
    runs = find_runs(client(target.tracking_uri), target.experiment_id, tags)
    return runs[0].info.run_id if runs else None


def genotype_fingerprint(text: str) -> str:
    """The sha256 fingerprint of a ``genotype.json`` text, as the genotype module defines it."""
    from nfs_orchestrator.genotype import Genotype

    return Genotype.from_json(text).fingerprint()


def log_epoch(
    tracking_uri: str,
    run_id: str,
    metrics: Mapping[str, float],
    artifacts: Mapping[str, str | bytes] | None = None,
) -> str | None:
    """Logs one reported epoch into a trial run: numeric metrics at step = epoch, every artifact
    at the run's top level (overwritten: the latest), ``genotype.json`` also as
    ``genotype/epoch_NNNN.json``, and the ``nfs.genotype_fp``/``nfs.epoch`` tags. Returns the
    genotype fingerprint (None without a genotype)."""
    c = client(tracking_uri)
    epoch = int(metrics["epoch"])
    now = int(time.time() * 1000)
    batch = [
        Metric(k, float(v), now, epoch)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    c.log_batch(run_id, metrics=batch)
    fingerprint = None
    if artifacts:
        with tempfile.TemporaryDirectory(prefix="posenfs-art-") as tmp:
            for name, content in artifacts.items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content.encode() if isinstance(content, str) else content)
            genotype = artifacts.get(GENOTYPE_ARTIFACT)
            if genotype is not None:
                text = genotype if isinstance(genotype, str) else genotype.decode()
                fingerprint = genotype_fingerprint(text)
                snapshot = Path(tmp) / "genotype" / f"epoch_{epoch:04d}.json"
                snapshot.parent.mkdir(parents=True, exist_ok=True)
                snapshot.write_text(text)
            c.log_artifacts(run_id, tmp)
    c.set_tag(run_id, TAG_EPOCH, str(epoch))
    if fingerprint:
        c.set_tag(run_id, TAG_GENOTYPE, fingerprint)
    return fingerprint


def log_ledger(target: TrackingTarget, path: str | Path) -> None:
    """Uploads the campaign ledger to the parent run (overwriting the previous copy)."""
    client(target.tracking_uri).log_artifact(target.parent_run_id, str(path))
