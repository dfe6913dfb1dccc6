"""One trial of a campaign: the Tune function trial that runs the search, in its own actor or
through a Ray Train run.

What this is: ``trial_driver`` (runs in the Tune trial actor) turns the trial's Optuna choices
into a ``TrialSpec`` and gets or creates the trial's MLflow child run. Then, with several
workers (or ``resources.worker_group: always``), it builds and fits a ``TorchTrainer`` whose
workers run ``train_worker.search_worker``; with one worker it runs the same search right here
through an ``ActorRuntime`` (rank 0 of 1, results by ``ray.tune.report``, checkpoints in
``RunCheckpoints``), which saves the Train controller and worker start of every trial (and Tune
reuses the actor for the next trial: ``campaign.build_tuner``). The run's
name is derived from the campaign id and the Tune trial id only, never from time, so a retried
or restored trial finds its own checkpoints and resumes (Ray Train V2 reloads
``checkpoint_manager_snapshot.json``; ``RunCheckpoints`` its ``latest.json``; both under the
campaign's train storage). Inside this driver only ``ray.tune.*`` is used; ``ray.train.*`` only
inside the workers.

Failure layers: ``budget.worker_retries`` restarts the worker group inside the trial
(``ray.train.FailureConfig``); ``budget.trial_retries`` re-runs the whole driver
(``tune.FailureConfig``, set by the campaign); a search in the trial actor has only the latter.
Both resume from the latest registered checkpoint.

What it is not: the search loop (``search.loop``) or the campaign (``campaign.py``).
"""

from __future__ import annotations

import gc
import os
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.tune as tune
import torch
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from nfs_orchestrator.orchestration import space, tracking
from nfs_orchestrator.orchestration.ray_runtime import TrialRuntime
from nfs_orchestrator.orchestration.run_checkpoints import RunCheckpoints
from nfs_orchestrator.orchestration.train_worker import (
    TrialInterrupted,
    run_trial_search,
    search_worker,
)
from nfs_orchestrator.specs import CampaignSpec, ResourceSpec, TrialSpec, replace

TRAIN_POLL_S = "0.5"  # see search_on_train_workers


@dataclass(frozen=True)
class DriverContext:
    """Campaign-level constants every trial driver needs (a plain dict across processes)."""

    base_dir: str  # relative data/weights paths of the spec resolve against it
    train_storage: str  # where trials checkpoint: Ray Train's storage_path, RunCheckpoints'
    tracking: dict[str, str]  # TrackingTarget.to_dict()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriverContext:
        return cls(**data)


def run_name(campaign_id: str, trial_id: str) -> str:
    """The Train run name and MLflow run name of a trial: deterministic, never time-based."""
    return f"{campaign_id}-{trial_id}"


def _absolute(path: str, base_dir: str) -> str:
    p = Path(path)
    return str(p if p.is_absolute() else (Path(base_dir) / p).resolve())


def build_trial(
    campaign: CampaignSpec, params: dict[str, Any], trial_id: str, base_dir: str
) -> TrialSpec:
    """The trial's TrialSpec, with relative data root and backbone weights made absolute
    (workers run in other folders, possibly on other machines with the same mounts)."""
    trial = campaign.trial(params, name=run_name(campaign.campaign_id, trial_id))
    data = replace(trial.data, root=_absolute(trial.data.root, base_dir))
    backbone = trial.backbone
    if backbone.weights:
        backbone = replace(backbone, weights=_absolute(backbone.weights, base_dir))
    return replace(trial, data=data, backbone=backbone)


def scaling_config(resources: ResourceSpec) -> ray.train.ScalingConfig:
    use_gpu = resources.gpus_per_worker > 0
    per_worker: dict[str, float] = {**resources.worker_resources, "CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=resources.workers_per_trial, use_gpu=use_gpu, resources_per_worker=per_worker
    )


def trial_actor_resources(resources: ResourceSpec) -> dict[str, float]:
    """What the Tune trial actor holds: the driver's share, plus the worker's when the search
    runs in the actor (``ResourceSpec.search_in_trial_actor``)."""
    if not resources.search_in_trial_actor:
        return {**resources.trial_resources, "CPU": resources.trial_cpus}
    held = {**resources.worker_resources, "CPU": resources.trial_cpus + resources.cpus_per_worker}
    if resources.gpus_per_worker > 0:
        held["GPU"] = resources.gpus_per_worker
    return held


class ActorRuntime(TrialRuntime):
    """The Runtime of a one-worker trial that runs its search in the Tune trial actor: rank 0
    of 1, results through ``ray.tune.report``, checkpoints in ``RunCheckpoints`` (written before
    the result is reported, so a result Tune saw always has its checkpoint)."""

    def __init__(self, checkpoints: RunCheckpoints, device: torch.device, **kwargs: Any) -> None:
        super().__init__(rank=0, world_size=1, device=device, **kwargs)
        self.checkpoints = checkpoints

    def _publish(self, row: dict[str, Any], checkpoint_dir: Path | None, epoch: int) -> None:
        if checkpoint_dir is not None:
            self.checkpoints.save(checkpoint_dir, epoch)
        tune.report(row)

    def _fetch_latest(self) -> Path | None:
        entry = self.checkpoints.latest()
        return None if entry is None else self.checkpoints.download(entry)


def torch_backend(resources: ResourceSpec) -> str:
    if resources.backend != "auto":
        return resources.backend
    return "nccl" if resources.gpus_per_worker > 0 else "gloo"


def trial_driver(
    config: dict[str, Any], campaign: dict[str, Any] | None = None, context: dict | None = None
) -> None:
    """The Tune function trial (use with ``tune.with_parameters(campaign=..., context=...)``)."""
    driver_started = time.time()
    spec = CampaignSpec.from_dict(campaign, path="campaign")
    ctx = DriverContext.from_dict(context or {})
    trial_id = tune.get_context().get_trial_id()
    trial = build_trial(spec, space.decode_params(spec.outer, config), trial_id, ctx.base_dir)
    target = tracking.TrackingTarget.from_dict(ctx.tracking)
    run_id = tracking.open_trial(target, spec.campaign_id, trial_id, trial, run_name=trial.name)
    worker_config = {
        "trial": trial.to_dict(),
        "tracking_uri": target.tracking_uri,
        "run_id": run_id,
        "objectives": [o.metric for o in spec.objectives],
        "torch_threads": max(1, int(spec.resources.cpus_per_worker)),  # the CPUs a worker holds
        "driver_started": driver_started,
    }
    search = search_here if spec.resources.search_in_trial_actor else search_on_train_workers
    client = tracking.client(target.tracking_uri)
    try:
        search(trial, worker_config, spec, ctx)
    except Exception:
        # Other errors leave the run RUNNING: the campaign's callback ends it FAILED, or KILLED
        # when the error is Tune stopping the campaign (its controller dies with the trial's
        # placement group, which from here looks like any other failure).
        error = traceback.format_exc()
        if TrialInterrupted.__name__ in error:  # SIGTERM/pre-emption: resumes on the retry
            client.set_tag(run_id, tracking.TAG_PREEMPTED, "true")
            tracking.end_run(client, run_id, "KILLED", label="preempted", error=error)
        raise
    tracking.end_run(client, run_id, "FINISHED")


def search_here(
    trial: TrialSpec, config: dict[str, Any], spec: CampaignSpec, ctx: DriverContext
) -> None:
    """The one-worker search in this Tune trial actor, through an ActorRuntime."""
    torch.set_num_threads(config["torch_threads"])
    runtime = ActorRuntime(
        RunCheckpoints(ctx.train_storage, trial.name, spec.resources.checkpoints_to_keep),
        torch.device("cuda" if spec.resources.gpus_per_worker > 0 else "cpu"),
        tracking_uri=config["tracking_uri"],
        run_id=config["run_id"],
        objectives=config["objectives"],
        constant_metrics={"startup_s": time.time() - config["driver_started"]},
    )
    try:
        run_trial_search(trial, runtime)
    finally:
        # Tune runs the next trial in this actor (reuse_actors): free what this one cached,
        # e.g. CUDA blocks sized for another architecture
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def search_on_train_workers(
    trial: TrialSpec, config: dict[str, Any], spec: CampaignSpec, ctx: DriverContext
) -> None:
    """The search on a Ray Train worker group (``search_worker`` on every worker, which
    receives ``trial`` in ``config``)."""
    # Ray Train's controller polls its workers for reports and completion every 2 s by default;
    # every epoch report and the trial's end wait for that poll. Ray propagates this variable
    # from here to the controller and the workers; a value set by the user wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)
    trainer = TorchTrainer(
        search_worker,
        train_loop_config=config,
        scaling_config=scaling_config(spec.resources),
        torch_config=TorchConfig(backend=torch_backend(spec.resources)),
        run_config=ray.train.RunConfig(
            name=trial.name,
            storage_path=ctx.train_storage,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.resources.checkpoints_to_keep
            ),
            failure_config=ray.train.FailureConfig(max_failures=spec.budget.worker_retries),
        ),
    )
    trainer.fit()
