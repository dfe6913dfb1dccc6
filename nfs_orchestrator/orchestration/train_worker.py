"""What a Ray Train worker of a search trial runs: ``search_worker``, the core search loop
through a ``RayTrainRuntime``; and ``run_trial_search``, what every runtime of a trial does
around that loop (the one-worker trials that run in their Tune trial actor use it too).

It lives apart from the trial driver (``trial.py``) so that the processes which only need this
function (the Train controller unpickles it, every worker runs it) import torch and Ray Train
and nothing else: no Tune, Optuna or MLflow (rank 0 loads MLflow at its first report). Each
trial starts a controller and its workers afresh, so every import here is paid per trial.

What it is not: the trial driver, or the search loop itself (``search.loop``).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from nfs_orchestrator.orchestration.ray_runtime import RayTrainRuntime, TrialRuntime
from nfs_orchestrator.specs import TrialSpec


class TrialInterrupted(RuntimeError):
    """The search stopped early on a SIGTERM or a pre-emption notice after checkpointing; raised
    so that Ray retries the trial (it resumes from that checkpoint) instead of calling it done."""


def run_trial_search(trial: TrialSpec, runtime: TrialRuntime) -> None:
    """The search of ``trial`` through ``runtime``: raises ``TrialInterrupted`` when it stopped
    early, replays the final result when the run was already complete."""
    from nfs_orchestrator.search.loop import run_search

    try:
        run_search(trial, runtime)
        if runtime.stop_requested:
            raise TrialInterrupted(f"{trial.name}: stopped early on SIGTERM/pre-emption; resumes")
        runtime.replay_final_report()  # a run that was already complete: Tune needs its result
    finally:
        runtime.close()


def search_worker(config: dict[str, Any]) -> None:
    """Runs on every Train worker: the core search loop through a RayTrainRuntime."""
    # from the trial driver's start to here: actor, controller and worker group start-up
    startup_s = time.time() - config.get("driver_started", time.time())
    trial = TrialSpec.from_dict(config["trial"], path="trial")
    torch.set_num_threads(config.get("torch_threads", 1))  # the CPUs this worker holds
    runtime = RayTrainRuntime(
        tracking_uri=config.get("tracking_uri"),
        run_id=config.get("run_id"),
        objectives=config.get("objectives", ()),
        constant_metrics={"startup_s": startup_s},
    )
    run_trial_search(trial, runtime)
