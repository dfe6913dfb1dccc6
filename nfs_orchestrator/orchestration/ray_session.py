"""The Ray session of a posenfs process: environment, start or join, resources, stop signals.

What this is: what a campaign driver (``campaign.py``) and a retrain (``retrain.py``) both do
to run on Ray: set the environment Ray reads at import (``prepare_ray_environment``), start
the embedded cluster or join one (``start_ray``) with a resource plan (``plan_resources``),
the Ray Train worker group of a trial or retrain (``scaling_config``, ``torch_backend``,
``torch_trainer``), what
a Tune trial actor holds (``trial_actor_resources``), relative paths made absolute for
processes that run elsewhere (``absolute``), and SIGINT/SIGTERM handling (``StopSignals``).

What it is not: the Tuner (``campaign.py``) or a trial (``trial.py``). Ray is imported inside
functions only, after ``prepare_ray_environment`` (Ray reads its auth mode at import).
"""

from __future__ import annotations

import logging
import math
import os
import signal
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nfs_orchestrator
from nfs_orchestrator.campaign_spec import BudgetSpec
from nfs_orchestrator.errors import PosenfsError
from nfs_orchestrator.specs import ResourceSpec

ONE_JOB = BudgetSpec(num_trials=1, max_concurrent=1)  # a retrain: one job, alone

# Library noise, stopped where it starts (issue 15 point 7). Each entry says why.
QUIET_ENV = {
    # Ray Train V2 patches print() in its workers to log each line to the root logger, whose
    # console handler writes it again beside the original print (sys.stdout is Ray's stream, not
    # sys.__stdout__, so the patch also tees): every print of a Train worker reached the driver
    # twice. Without the patch a print is a print (to the worker's log and, log_to_driver, here).
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}
PROGRESS_LINES = r"posenfs: trial "  # every trial's progress line (search/loop.py, forecast.py)
QUIET_LOGGERS = {
    # Ray Train's placement-group cleaner (a detached actor per Train run) polls the state API
    # every second and warns on every failed query ("Failed to query Ray Train Controller actor
    # state ... Continuing to monitor"): without a dashboard, or with one slow to answer on a
    # busy machine, a line a second per run, and the next poll simply tries again. Its real
    # failures (the placement group not removed) are logged at ERROR by Ray elsewhere.
    "ray.train.v2._internal.execution.controller.placement_group_cleaner": logging.ERROR,
    # Ray Train's controller asks the cluster autoscaler's coordinator for its worker group's
    # resources with a 5 s timeout and, on a timeout, logs a warning with a whole traceback
    # ("... CPU being overloaded, it's safe to ignore"): the embedded cluster has no autoscaler,
    # and a busy small machine misses the 5 s at every trial start.
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client": logging.ERROR,
}
SETUP_HOOK = "nfs_orchestrator.orchestration.ray_session.quiet_ray_loggers"


class _AtLeast(logging.Filter):
    """Drops records below ``level``. A filter, not only a level: Ray Train's controller and
    workers apply a logging dictConfig to ``ray.train`` after this hook, which resets the
    levels of its existing child loggers (but keeps their filters)."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level


def quiet_ray_loggers() -> None:
    """Ray's ``worker_process_setup_hook`` of the embedded cluster: runs in every worker process
    (Tune trial actors, Train controllers and workers, the placement-group cleaner) once it is
    connected. It sets the levels of ``QUIET_LOGGERS``, and ``RAY_ADDRESS`` to this cluster:
    the state API that the placement-group cleaner polls finds its cluster by ``RAY_ADDRESS``,
    else by looking for Ray processes on the machine; with two Ray instances on one machine
    (two campaigns, a campaign beside tests) it finds several, and the cleaner's thread died
    with a traceback ("Found multiple active Ray instances") and cleaned nothing after it."""
    for name, level in QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.addFilter(_AtLeast(level))
    try:
        import ray

        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 -- a failing hook would stop the worker itself
        pass


def prepare_ray_environment(address: str | None) -> None:
    """Environment Ray reads at import: no usage stats; for a remote cluster, token auth when a
    token is available (RAY-MULTINODE §1: an explicit address never turns auth on by itself);
    for the embedded cluster, no pre-emption watcher and workers that can import this package
    even when it is not installed."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # ours forwards to Tune's SIGUSR1
    for key, value in QUIET_ENV.items():  # Ray Train passes these on to its workers
        os.environ.setdefault(key, value)
    # The driver folds log lines that differ only in numbers and ids across processes into
    # "[repeated Nx across cluster]": one trial's epoch lines would hide another's. Ours are
    # printed as they are (read once, when the driver imports Ray: after this).
    os.environ.setdefault("RAY_DEDUP_LOGS_ALLOW_REGEX", PROGRESS_LINES)
    if address:
        has_token = os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
        has_token = has_token or (Path.home() / ".ray" / "auth_token").is_file()
        if has_token:
            os.environ.setdefault("RAY_AUTH_MODE", "token")
        return
    # One machine, nothing to reclaim: skip Ray Train's pre-emption watcher (an extra actor
    # process per trial, seconds of start-up on a small machine).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    # A worker process starting on a busy small machine (importing torch) can take longer than
    # Ray Train's 60 s default; each timeout restarts the whole worker group.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "240")
    package_parent = str(Path(nfs_orchestrator.__file__).resolve().parent.parent)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_parent not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([package_parent, *paths])


# --------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourcePlan:
    """How a campaign uses the cluster: per-trial resources and how many trials run at once."""

    trial_cpus: float  # the Tune trial (driver) actor
    workers_per_trial: int
    in_trial_actor: bool  # the one worker's search runs in the trial actor (no worker group)
    cpus_per_worker: float
    gpus_per_worker: float
    cpus_per_trial: float  # driver + workers
    gpus_per_trial: float
    cluster_cpus: float
    cluster_gpus: float
    max_concurrent: int
    embedded_num_cpus: int | None  # ray.init(num_cpus=...) for an embedded cluster

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        gpus = f" + {self.gpus_per_trial:g} GPU" if self.gpus_per_trial else ""
        where = " (in the trial actor)" if self.in_trial_actor else ""
        return (
            f"{self.workers_per_trial} worker(s){where} × {self.cpus_per_worker:g} CPU + driver "
            f"{self.trial_cpus:g} CPU = {self.cpus_per_trial:g} CPU{gpus} per trial; "
            f"{self.max_concurrent} trial(s) at once on {self.cluster_cpus:g} CPU / "
            f"{self.cluster_gpus:g} GPU"
        )


def plan_resources(
    resources: ResourceSpec,
    budget: BudgetSpec = ONE_JOB,
    cluster_cpus: float | None = None,
    cluster_gpus: float = 0.0,
) -> ResourcePlan:
    """The resource plan of ``budget``'s trials (default: one job). With ``cluster_cpus`` None
    the cluster is the embedded one: this machine's cores, raised to what
    ``budget.max_concurrent`` trials need (logical CPUs, so a 2-core machine can hold a driver
    plus two fractional workers)."""
    res = resources
    cpus_per_trial = res.trial_cpus + res.workers_per_trial * res.cpus_per_worker
    gpus_per_trial = res.workers_per_trial * res.gpus_per_worker
    wanted = min(budget.max_concurrent, budget.num_trials)
    embedded = None
    if cluster_cpus is None:
        embedded = max(os.cpu_count() or 1, math.ceil(cpus_per_trial * wanted - 1e-9))
        cluster_cpus = float(embedded)
    if cpus_per_trial > cluster_cpus + 1e-9:
        raise PosenfsError(
            f"resources: a trial needs {cpus_per_trial:g} CPUs, the cluster has {cluster_cpus:g}"
        )
    fit = int(cluster_cpus / cpus_per_trial + 1e-9)
    if gpus_per_trial > 0:
        if gpus_per_trial > cluster_gpus + 1e-9:
            raise PosenfsError(
                f"resources: a trial needs {gpus_per_trial:g} GPUs, the cluster has "
                f"{cluster_gpus:g}"
            )
        fit = min(fit, int(cluster_gpus / gpus_per_trial + 1e-9))
    return ResourcePlan(
        trial_cpus=res.trial_cpus,
        workers_per_trial=res.workers_per_trial,
        in_trial_actor=res.search_in_trial_actor,
        cpus_per_worker=res.cpus_per_worker,
        gpus_per_worker=res.gpus_per_worker,
        cpus_per_trial=cpus_per_trial,
        gpus_per_trial=gpus_per_trial,
        cluster_cpus=cluster_cpus,
        cluster_gpus=cluster_gpus,
        max_concurrent=max(1, min(wanted, fit)),
        embedded_num_cpus=embedded,
    )


def start_ray(
    resources: ResourceSpec, budget: BudgetSpec, address: str | None
) -> tuple[ResourcePlan, bool]:
    """Starts (embedded) or joins Ray; returns the resource plan and whether this call started
    Ray (then the caller shuts it down)."""
    import ray

    if ray.is_initialized():
        res = ray.cluster_resources()
        return plan_resources(resources, budget, res.get("CPU", 0.0), res.get("GPU", 0.0)), False
    if address:
        ray.init(address=address, log_to_driver=True)
        res = ray.cluster_resources()
        return plan_resources(resources, budget, res.get("CPU", 0.0), res.get("GPU", 0.0)), True
    plan = plan_resources(resources, budget)
    # The dashboard (127.0.0.1 only) also serves the state API that Ray Train's placement-group
    # cleaner polls; without it that cleaner logs a warning every few seconds.
    dashboard = os.environ.get("POSENFS_RAY_DASHBOARD", "1") != "0"
    ray.init(
        num_cpus=plan.embedded_num_cpus,
        include_dashboard=dashboard,
        log_to_driver=True,
        runtime_env={"worker_process_setup_hook": SETUP_HOOK},
    )
    gpus = ray.cluster_resources().get("GPU", 0.0)
    return plan_resources(resources, budget, None, gpus), True


def scaling_config(resources: ResourceSpec) -> Any:
    """The ``ray.train.ScalingConfig`` of a worker group of ``resources``."""
    import ray.train

    use_gpu = resources.gpus_per_worker > 0
    per_worker: dict[str, float] = {**resources.worker_resources, "CPU": resources.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = resources.gpus_per_worker
    return ray.train.ScalingConfig(
        num_workers=resources.workers_per_trial, use_gpu=use_gpu, resources_per_worker=per_worker
    )


def torch_trainer(train_fn: Callable[[dict[str, Any]], None], **kwargs: Any) -> Any:
    """A ``ray.train.torch.TorchTrainer(train_fn, **kwargs)`` whose controller starts no Ray
    Data ``DatasetManager`` actor. Ray Train V2 starts one for every run, datasets or not: one
    more Python process per trial, importing Ray Data (≈ 2–3 s of CPU on a small machine;
    ``benchmarks/RESULTS.md``). posenfs passes no Ray Datasets (its workers load their own
    data), so that actor has nothing to serve. The controller's other callbacks (accelerator
    and backend set-up, placement-group cleaner, working directory, metrics, the user's) are
    kept; so are the failure policy and the checkpoints. Where Ray no longer has the hook, this
    is a plain TorchTrainer."""
    from ray.train.torch import TorchTrainer

    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
    except ImportError:  # another Ray layout: the plain trainer
        return TorchTrainer(train_fn, **kwargs)
    if not hasattr(TorchTrainer, "_create_default_callbacks"):
        return TorchTrainer(train_fn, **kwargs)

    class NoDatasetsTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list[Any]:
            callbacks = super()._create_default_callbacks()
            return [cb for cb in callbacks if not isinstance(cb, DatasetsCallback)]

    return NoDatasetsTrainer(train_fn, **kwargs)


def torch_backend(resources: ResourceSpec) -> str:
    """The process-group backend: as given, else nccl with GPUs and gloo without."""
    if resources.backend != "auto":
        return resources.backend
    return "nccl" if resources.gpus_per_worker > 0 else "gloo"


def trial_actor_resources(resources: ResourceSpec) -> dict[str, float]:
    """What the Tune trial actor holds: the driver's share, plus the worker's when the search
    runs in the actor (``ResourceSpec.search_in_trial_actor``)."""
    if not resources.search_in_trial_actor:
        return {**resources.trial_resources, "CPU": resources.trial_cpus}
    held = {**resources.worker_resources, "CPU": resources.trial_cpus + resources.cpus_per_worker}
    if resources.gpus_per_worker > 0:
        held["GPU"] = resources.gpus_per_worker
    return held


def absolute(path: str | None, base_dir: str | Path) -> str | None:
    """``path`` resolved against ``base_dir`` (where the user ran posenfs): Ray processes run in
    other folders, possibly on other machines with the same mounts. None and URIs stay."""
    if path is None or "://" in path:
        return path
    p = Path(path)
    return str(p if p.is_absolute() else (Path(base_dir) / p).resolve())


# --------------------------------------------------------------------------------------------
# Stop signals
# --------------------------------------------------------------------------------------------


class StopSignals:
    """SIGINT/SIGTERM while the block runs: the first calls ``on_stop(signum)`` (a graceful
    stop) and is kept in ``received``; a second raises KeyboardInterrupt (stop at once). The
    previous handlers come back on exit."""

    def __init__(self, on_stop: Callable[[int], None]) -> None:
        self.on_stop = on_stop
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signum
        self.on_stop(signum)
