"""A campaign: the outer search (Ray Tune + Optuna) over supernet searches, start to summary.

What this is: ``run_campaign(campaign, root, address)``. It writes the campaign record
(``<root>/campaigns/<id>/campaign.json``), gets or creates the campaign's MLflow experiment and
parent run, starts Ray (embedded: ``ray.init()`` here with enough logical CPUs for the spec's
fractional resources; or connects to ``address``), then either restores the Tune experiment
``<ray storage>/<campaign_id>`` (``Tuner.restore``: finished trials are kept, unfinished and errored
ones resume from their checkpoints, the Optuna searcher continues from its saved state) or starts
it: ``Tuner(trial_driver, OptunaSearch(define-by-run), ASHA)``. Multi-objective campaigns give
OptunaSearch lists of metrics and modes and run without ASHA (Ray schedulers are single-metric);
their Pareto set is computed here from the ledger.

SIGINT/SIGTERM stop the campaign cleanly: Tune saves its state, trials stop, their registered
checkpoints stay, runs end KILLED, and ``posenfs resume <id>`` continues. A SIGKILL loses nothing
either: the next resume restores the same state.

What it is not: a trial (``trial.py``) or the ledger/tracking code (``ledger.py``, ``tracking.py``).
Ray is imported inside ``run_campaign`` only, after the environment is prepared (Ray reads its
auth mode at import).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nfs_orchestrator
from nfs_orchestrator.errors import PosenfsError
from nfs_orchestrator.orchestration import status, tracking
from nfs_orchestrator.orchestration.compare import compare_campaign, pareto_front
from nfs_orchestrator.orchestration.ledger import read_ledger, write_ledger
from nfs_orchestrator.specs import CampaignSpec


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
    campaign: CampaignSpec, cluster_cpus: float | None = None, cluster_gpus: float = 0.0
) -> ResourcePlan:
    """The resource plan. With ``cluster_cpus`` None the cluster is the embedded one: this
    machine's cores, raised to what ``budget.max_concurrent`` trials need (logical CPUs, so a
    2-core machine can hold a driver plus two fractional workers)."""
    res, budget = campaign.resources, campaign.budget
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


def make_record(
    campaign: CampaignSpec, root: str | Path, base_dir: str | Path | None = None
) -> status.CampaignRecord:
    """The campaign's record: where everything lives, from the spec's StorageSpec or under
    ``root``. An existing record keeps its base_dir and parent run (a re-run resumes)."""
    root = Path(root).resolve()
    storage = campaign.storage
    record = status.CampaignRecord(
        campaign_id=campaign.campaign_id,
        spec=campaign,
        root=str(root),
        base_dir=str(Path(base_dir or os.getcwd()).resolve()),
        ray_storage=storage.ray_storage or str(root / "ray"),
        tracking_uri=storage.mlflow_uri or tracking.default_tracking_uri(root),
        experiment_name=tracking.experiment_name(campaign.campaign_id),
    )
    if (record.folder / status.RECORD_NAME).is_file():
        old = status.load_record(root, campaign.campaign_id)
        record.base_dir, record.parent_run_id = old.base_dir, old.parent_run_id
    return record


def _join(storage: str, *parts: str) -> str:
    """Joins a local path or URI (s3://, gs://) with parts."""
    return "/".join([storage.rstrip("/"), *parts])


@dataclass
class CampaignResult:
    """What ``run_campaign`` returns: final status, ledger rows, best trial / Pareto set."""

    campaign_id: str
    status: str  # finished | interrupted
    rows: list[dict[str, Any]]
    best: dict[str, Any] | None
    pareto: list[dict[str, Any]]
    record: status.CampaignRecord
    plan: ResourcePlan
    wall_time_s: float
    failed: list[str] = field(default_factory=list)

    @property
    def ledger_path(self) -> Path:
        return self.record.ledger_path

    @property
    def num_trials(self) -> int:
        return len(self.rows)


def best_row(rows: list[dict[str, Any]], campaign: CampaignSpec) -> dict[str, Any] | None:
    """The trial with the best value of the primary objective (None before any result)."""
    primary = campaign.objectives[0]
    scored = [r for r in rows if r.get("best") is not None]
    if not scored:
        return None
    return (max if primary.mode == "max" else min)(scored, key=lambda r: r["best"])


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------


def prepare_ray_environment(address: str | None) -> None:
    """Environment Ray reads at import: no usage stats; for a remote cluster, token auth when a
    token is available (RAY-MULTINODE §1: an explicit address never turns auth on by itself);
    for the embedded cluster, no pre-emption watcher and workers that can import this package
    even when it is not installed."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # ours forwards to Tune's SIGUSR1
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


def snapshot_period(campaign: CampaignSpec) -> float:
    """Seconds between Tune's experiment snapshots (its trials and the searcher's state, what
    ``Tuner.restore`` resumes from). A trial started less than this before a hard crash is
    unknown after the restore: its work so far is lost and its MLflow run ends KILLED, tagged
    ``nfs.lost`` (``finish_campaign``). Tune's default, every ≥ 10 s, is longer than a fast
    trial takes to checkpoint. 1 s for budgets up to 50 trials, longer for larger ones: a
    snapshot rewrites every trial's state (≈ 25 KB each), so its cost grows with the budget.
    ``TUNE_GLOBAL_CHECKPOINT_S`` set by the user wins."""
    return min(10.0, max(1.0, campaign.budget.num_trials / 50))


def start_ray(campaign: CampaignSpec, address: str | None) -> tuple[ResourcePlan, bool]:
    """Starts or joins Ray; returns the resource plan and whether this call started Ray."""
    import ray

    if ray.is_initialized():
        res = ray.cluster_resources()
        return plan_resources(campaign, res.get("CPU", 0.0), res.get("GPU", 0.0)), False
    if address:
        ray.init(address=address, log_to_driver=True)
        res = ray.cluster_resources()
        return plan_resources(campaign, res.get("CPU", 0.0), res.get("GPU", 0.0)), True
    plan = plan_resources(campaign)
    # The dashboard (127.0.0.1 only) also serves the state API that Ray Train's placement-group
    # cleaner polls; without it that cleaner logs a warning every few seconds.
    dashboard = os.environ.get("POSENFS_RAY_DASHBOARD", "1") != "0"
    ray.init(num_cpus=plan.embedded_num_cpus, include_dashboard=dashboard, log_to_driver=True)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    return plan_resources(campaign, None, gpus), True


def build_tuner(
    campaign: CampaignSpec,
    record: status.CampaignRecord,
    target: tracking.TrackingTarget,
    plan: ResourcePlan,
) -> Any:
    """``Tuner.restore`` of the campaign's experiment if it exists, else a new Tuner."""
    import ray.tune as tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from nfs_orchestrator.orchestration.progress import CampaignCallback
    from nfs_orchestrator.orchestration.space import define_by_run
    from nfs_orchestrator.orchestration.trial import (
        DriverContext,
        trial_actor_resources,
        trial_driver,
    )

    cid = campaign.campaign_id
    context = DriverContext(
        base_dir=record.base_dir,
        train_storage=_join(record.ray_storage, cid, "train"),
        tracking=target.to_dict(),
    )
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, campaign=campaign.to_dict(), context=context.to_dict()),
        trial_actor_resources(campaign.resources),
    )
    experiment = _join(record.ray_storage, cid)
    if tune.Tuner.can_restore(experiment):
        return tune.Tuner.restore(
            experiment, trainable=trainable, resume_unfinished=True, resume_errored=True
        )

    metrics = [o.metric for o in campaign.objectives]
    modes = [o.mode for o in campaign.objectives]
    multi = campaign.multi_objective
    searcher = OptunaSearch(
        space=define_by_run(campaign.outer),
        metric=metrics if multi else metrics[0],
        mode=modes if multi else modes[0],
        seed=campaign.seed,
        study_name=cid,
        storage=campaign.storage.optuna_storage,
    )
    asha = campaign.budget.asha
    scheduler = None
    if not multi and asha.enabled and campaign.search.epochs > asha.grace_period:
        scheduler = ASHAScheduler(
            time_attr="epochs_done",  # 1-based epochs (TrialRuntime adds it to each report)
            max_t=campaign.search.epochs,
            grace_period=asha.grace_period,
            reduction_factor=asha.reduction_factor,
        )
    callback = CampaignCallback(campaign.to_dict(), str(record.ledger_path), target.to_dict())
    return tune.Tuner(
        trainable,
        param_space={},  # every domain lives in the define-by-run function
        tune_config=tune.TuneConfig(
            metric=None if multi else metrics[0],
            mode=None if multi else modes[0],
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=campaign.budget.num_trials,
            max_concurrent_trials=plan.max_concurrent,
            # A trial actor that ran its search itself is reused for the next trial (no process
            # start, no imports). Not one that drove a TorchTrainer: a trial ASHA stops is still
            # tearing the trainer down when Tune resets the actor (reset_config waits 2 s), and
            # the next trial then errors.
            reuse_actors=campaign.resources.search_in_trial_actor,
        ),
        run_config=tune.RunConfig(
            name=cid,
            storage_path=record.ray_storage,
            failure_config=tune.FailureConfig(max_failures=campaign.budget.trial_retries),
            callbacks=[callback],
            verbose=1,
        ),
    )


# --------------------------------------------------------------------------------------------
# Stopping and finishing
# --------------------------------------------------------------------------------------------


class _StopSignals:
    """SIGINT/SIGTERM → Tune's graceful stop (SIGUSR1: save state, stop trials, return); a
    second signal stops at once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        from nfs_orchestrator.orchestration.progress import STOP_REQUESTED

        self._stop_requested = STOP_REQUESTED
        STOP_REQUESTED.clear()
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
        self._stop_requested.set()
        print(
            f"\nposenfs: {signal.Signals(signum).name}: stopping the campaign; checkpoints are "
            "kept (again to stop at once)",
            flush=True,
        )
        os.kill(os.getpid(), signal.SIGUSR1)


def finish_campaign(
    record: status.CampaignRecord,
    target: tracking.TrackingTarget,
    interrupted: bool,
    error: str = "",
    preempted: bool = False,
) -> tuple[str, list[dict[str, Any]]]:
    """Final ledger and statuses: trials still RUNNING/PENDING become KILLED, their runs too
    (tagged ``nfs.preempted`` after a SIGTERM, ``nfs.lost`` after a complete campaign); the
    parent run ends FINISHED, KILLED or FAILED; the ledger and the comparison go to the parent
    run."""
    rows = read_ledger(record.ledger_path)
    spec = record.spec
    done = [r for r in rows if r["status"] in ("FINISHED", "EARLY_STOPPED", "FAILED")]
    complete = len(done) >= spec.budget.num_trials and not interrupted and not error
    outcome = "finished" if complete else ("failed" if error else "interrupted")
    c = tracking.client(target.tracking_uri)
    for row in rows:
        if row["status"] in ("RUNNING", "PENDING"):
            row["status"] = "KILLED"
    # Every trial run still open: those of an interrupted campaign (including trials that never
    # reported to Tune); after a complete one, those of trials Tune never recorded: started
    # within its last snapshot period (snapshot_period) before a hard crash, so the restored
    # searcher gave their place in the budget to a new trial.
    tags = {tracking.TAG_KIND: "trial", tracking.TAG_CAMPAIGN: record.campaign_id}
    for run in tracking.find_runs(c, target.experiment_id, tags):
        if run.info.status == "RUNNING":
            if complete:
                c.set_tag(run.info.run_id, tracking.TAG_LOST, "true")
            elif preempted:  # SIGTERM: a pre-emption notice, not a user's Ctrl-C
                c.set_tag(run.info.run_id, tracking.TAG_PREEMPTED, "true")
            tracking.end_run(c, run.info.run_id, "KILLED")
    write_ledger(rows, record.ledger_path)
    tracking.log_ledger(target, record.ledger_path)
    if rows:
        try:
            compare_campaign(record.root, record.campaign_id)
        except Exception as e:  # noqa: BLE001 - a plot must not fail a finished campaign
            print(f"posenfs: comparison not written ({e!r})", file=sys.stderr)
    parent_status = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}[outcome]
    tracking.end_run(c, target.parent_run_id, parent_status, label=outcome, error=error)
    status.write_state(record.folder, outcome, trials=len(rows), done=len(done))
    return outcome, rows


def run_campaign(
    campaign: CampaignSpec,
    root: str | Path,
    address: str | None = None,
    *,
    base_dir: str | Path | None = None,
) -> CampaignResult:
    """Runs (or resumes) ``campaign`` until its budget of trials is done or it is stopped."""
    started = time.monotonic()
    record = make_record(campaign, root, base_dir)
    record.folder.mkdir(parents=True, exist_ok=True)
    tracking.scrub_environment()
    artifacts = None
    if not campaign.storage.mlflow_uri:
        artifacts = tracking.default_artifact_location(record.root, campaign.campaign_id)
    target = tracking.open_campaign(record.tracking_uri, campaign, artifacts)
    record.parent_run_id = target.parent_run_id
    status.write_record(record)
    status.write_state(record.folder, "running")

    prepare_ray_environment(address)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", f"{snapshot_period(campaign):g}")
    import ray

    started_ray = False
    try:
        plan, started_ray = start_ray(campaign, address)
        print(f"posenfs: campaign {campaign.campaign_id}: {plan.describe()}", flush=True)
        tuner = build_tuner(campaign, record, target, plan)
        with _StopSignals() as stop:
            try:
                tuner.fit()
            except KeyboardInterrupt:  # a second signal: stop at once
                stop.received = stop.received or signal.SIGINT
        interrupted = stop.received is not None
        preempted = stop.received == signal.SIGTERM
    except Exception as e:
        try:
            finish_campaign(record, target, False, error=f"{type(e).__name__}: {e}")
        except Exception as inner:  # noqa: BLE001 - the first error is the one to show
            print(f"posenfs: could not record the failure ({inner!r})", file=sys.stderr)
        raise
    finally:
        if started_ray:
            ray.shutdown()
    outcome, rows = finish_campaign(record, target, interrupted, preempted=preempted)
    return CampaignResult(
        campaign_id=campaign.campaign_id,
        status=outcome,
        rows=rows,
        best=best_row(rows, campaign),
        pareto=[dict(r) for r in pareto_front(rows, campaign.objectives)],
        record=record,
        plan=plan,
        wall_time_s=time.monotonic() - started,
        failed=[r["trial_id"] for r in rows if r["status"] == "FAILED"],
    )
