"""The Tune trial actor side of a trial: the function trial that runs one supernet search.

What this is: ``trial_driver`` (runs in the Tune trial actor) builds the trial's ``TrialSpec``
once from its Optuna choices (``build_trial``), gets or creates the trial's MLflow child run and
hands both to the search as a ``train_worker.SearchLaunch``. With several workers (or
``resources.worker_group: always``) it builds and fits a ``TorchTrainer`` whose workers run
``train_worker.search_worker``; with one worker it runs the same search right here through an
``ActorRuntime`` (rank 0 of 1, results by ``ray.tune.report``, checkpoints in
``runtime.RunCheckpoints``), which saves the Train controller and worker start of every trial
(and Tune reuses the actor for the next trial: ``campaign.build_tuner``). The run's name is
derived from the campaign id and the Tune trial id only, never from time, so a retried or
restored trial finds its own checkpoints and resumes (Ray Train V2 reloads
``checkpoint_manager_snapshot.json``; ``RunCheckpoints`` its ``latest.json``; both under the
campaign's train storage). Inside this driver only ``ray.tune.*`` is used; ``ray.train.*`` only
inside the workers.

Failure layers: ``budget.worker_retries`` restarts the worker group inside the trial
(``ray.train.FailureConfig``); ``budget.trial_retries`` re-runs the whole driver
(``tune.FailureConfig``, set by the campaign); a search in the trial actor has only the latter.
Both resume from the latest registered checkpoint.

What it is not: the Train worker side (``train_worker.py``), the search loop (``search.loop``)
or the campaign (``campaign.py``).
"""

from __future__ import annotations

import gc
import json
import os
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.tune as tune
import torch
from ray.train.torch import TorchConfig
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search.repeater import TRIAL_INDEX

from nfs_orchestrator.campaign_spec import CampaignSpec, decode_params
from nfs_orchestrator.orchestration import ray_session, tracking
from nfs_orchestrator.orchestration.ledger import trial_columns
from nfs_orchestrator.orchestration.train_worker import (
    SearchLaunch,
    TrialInterrupted,
    TrialRuntime,
    run_trial_search,
    search_worker,
)
from nfs_orchestrator.runtime import RunCheckpoints
from nfs_orchestrator.specs import TrialSpec, replace

TRAIN_POLL_S = "0.5"  # see search_on_train_workers


@dataclass(frozen=True)
class DriverContext:
    """Campaign-level constants every trial driver needs."""

    base_dir: str  # relative data/weights paths of the spec resolve against it
    train_storage: str  # where trials checkpoint: Ray Train's storage_path, RunCheckpoints'
    tracking: tracking.TrackingTarget


def run_name(campaign_id: str, trial_id: str) -> str:
    """The Train run name and MLflow run name of a trial: deterministic, never time-based."""
    return f"{campaign_id}-{trial_id}"


def build_trial(
    campaign: CampaignSpec, params: dict[str, Any], trial_id: str, base_dir: str
) -> TrialSpec:
    """The trial's TrialSpec, with relative data root and backbone weights made absolute
    (workers run in other folders, possibly on other machines with the same mounts)."""
    trial = campaign.trial(params, name=run_name(campaign.campaign_id, trial_id))
    data = replace(trial.data, root=ray_session.absolute(trial.data.root, base_dir))
    backbone = trial.backbone
    if backbone.weights:
        backbone = replace(backbone, weights=ray_session.absolute(backbone.weights, base_dir))
    return replace(trial, data=data, backbone=backbone)


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
        self._wait_on_driver(lambda: tune.report(row))  # until Tune's next call to this actor

    def _fetch_latest(self) -> Path | None:
        entry = self.checkpoints.latest()
        return None if entry is None else self.checkpoints.download(entry)

    def _save_interrupted(self, checkpoint_dir: Path, epoch: int, step: int) -> None:
        self.checkpoints.save(checkpoint_dir, epoch, step)  # the run's latest, as any other


def trial_driver(config: dict[str, Any], *, campaign: CampaignSpec, context: DriverContext) -> None:
    """The Tune function trial (use with ``tune.with_parameters(campaign=..., context=...)``:
    the typed campaign and context reach every trial actor through Ray's object store)."""
    driver_started = time.time()
    trial_id = tune.get_context().get_trial_id()
    params = decode_params(campaign.outer, config)
    trial = build_trial(campaign, params, trial_id, context.base_dir)
    seed_index = int(config.get(TRIAL_INDEX, 0))  # set by Tune's Repeater (budget.seeds)
    if seed_index:
        trial = replace(trial, seed=trial.seed + seed_index)
    target = context.tracking
    run_id = tracking.open_trial(target, campaign.campaign_id, trial_id, trial, run_name=trial.name)
    launch = SearchLaunch(
        trial=trial,
        tracking_uri=target.tracking_uri,
        run_id=run_id,
        objectives=tuple(o.metric for o in campaign.objectives),
        torch_threads=max(1, int(campaign.resources.cpus_per_worker)),
        driver_started=driver_started,
        trial_columns=json.dumps(trial_columns(trial), sort_keys=True),
        train_storage=context.train_storage,
    )
    in_actor = campaign.resources.search_in_trial_actor
    search = search_here if in_actor else search_on_train_workers
    client = tracking.client(target.tracking_uri)
    try:
        search(launch, campaign, context)
    except Exception:
        # Other errors leave the run RUNNING: the campaign's callback ends it FAILED, or KILLED
        # when the error is Tune stopping the campaign (its controller dies with the trial's
        # placement group, which from here looks like any other failure).
        error = traceback.format_exc()
        if TrialInterrupted.__name__ in error:  # SIGTERM/pre-emption: resumes on the retry
            tracking.end_run(
                client,
                run_id,
                "KILLED",
                label="preempted",
                error=error,
                tags={tracking.TAG_PREEMPTED: "true"},
            )
        raise
    tracking.end_run(client, run_id, "FINISHED")


def search_here(launch: SearchLaunch, campaign: CampaignSpec, context: DriverContext) -> None:
    """The one-worker search in this Tune trial actor, through an ActorRuntime."""
    torch.set_num_threads(launch.torch_threads)
    runtime = ActorRuntime(
        RunCheckpoints(
            context.train_storage, launch.trial.name, campaign.resources.checkpoints_to_keep
        ),
        torch.device("cuda" if campaign.resources.gpus_per_worker > 0 else "cpu"),
        **launch.runtime_options(startup_s=time.time() - launch.driver_started),
    )
    try:
        run_trial_search(launch.trial, runtime)
    finally:
        # Tune runs the next trial in this actor (reuse_actors): free what this one cached,
        # e.g. CUDA blocks sized for another architecture
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def search_on_train_workers(
    launch: SearchLaunch, campaign: CampaignSpec, context: DriverContext
) -> None:
    """The search on a Ray Train worker group (``search_worker`` on every worker, which
    receives ``launch`` as one plain dict)."""
    # Ray Train's controller polls its workers for reports and completion every 2 s by default;
    # every epoch report and the trial's end wait for that poll. Ray propagates this variable
    # from here to the controller and the workers; a value set by the user wins.
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", TRAIN_POLL_S)
    resources = campaign.resources
    trainer = ray_session.torch_trainer(
        search_worker,
        train_loop_config=launch.to_dict(),
        scaling_config=ray_session.scaling_config(resources),
        torch_config=TorchConfig(backend=ray_session.torch_backend(resources)),
        run_config=ray.train.RunConfig(
            name=launch.trial.name,
            storage_path=context.train_storage,
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=resources.checkpoints_to_keep),
            failure_config=ray.train.FailureConfig(max_failures=campaign.budget.worker_retries),
        ),
    )
    trainer.fit()
