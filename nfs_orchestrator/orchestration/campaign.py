"""A campaign: the outer search (Ray Tune + Optuna) over supernet searches, start to summary.

What this is: ``run_campaign(campaign, root, address)``. It writes the campaign record
(``store``: ``<root>/campaigns/<id>/campaign.json``), gets or creates the campaign's MLflow
experiment and parent run, starts or joins Ray (``ray_session``), then either restores the Tune
experiment ``<ray storage>/<campaign_id>`` (``Tuner.restore``: finished trials are kept,
unfinished and errored ones resume from their checkpoints, the Optuna searcher continues from
its saved state) or starts it: ``Tuner(trial_driver, OptunaSearch(define-by-run), ASHA)``.
Multi-objective campaigns give OptunaSearch lists of metrics and modes and run without ASHA
(Ray schedulers are single-metric); their Pareto set is computed here from the ledger.

SIGINT/SIGTERM stop the campaign cleanly: Tune saves its state, trials stop, their registered
checkpoints stay, runs end KILLED, and ``posenfs resume <id>`` continues. A SIGKILL loses nothing
either: the next resume restores the same state.

What it is not: a trial (``trial.py``), the Tune callback that keeps the ledger
(``tune_callback.py``), the record's layout (``store.py``) or the MLflow calls
(``tracking.py``). Ray is imported inside functions only, after the environment is prepared
(Ray reads its auth mode at import).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nfs_orchestrator.campaign_spec import CampaignSpec
from nfs_orchestrator.orchestration import ray_session, store, tracking
from nfs_orchestrator.orchestration.compare import compare_campaign, pareto_front
from nfs_orchestrator.orchestration.ledger import read_ledger, write_ledger
from nfs_orchestrator.orchestration.ray_session import ResourcePlan


def make_record(
    campaign: CampaignSpec, root: str | Path, base_dir: str | Path | None = None
) -> store.CampaignRecord:
    """The campaign's record: where everything lives, from the spec's StorageSpec or under
    ``root`` (the MLflow store by ``tracking.resolve_tracking_uri``). An existing record keeps
    its base_dir, MLflow store and parent run (a re-run resumes in the same runs)."""
    root = Path(root).resolve()
    storage = campaign.storage
    record = store.CampaignRecord(
        campaign_id=campaign.campaign_id,
        spec=campaign,
        root=str(root),
        base_dir=str(Path(base_dir or os.getcwd()).resolve()),
        ray_storage=storage.ray_storage or str(root / "ray"),
        tracking_uri=tracking.resolve_tracking_uri(root, storage.mlflow_uri),
        experiment_name=tracking.experiment_name(campaign.campaign_id),
    )
    if (record.folder / store.RECORD_NAME).is_file():
        old = store.load_record(root, campaign.campaign_id)
        record.base_dir, record.parent_run_id = old.base_dir, old.parent_run_id
        record.tracking_uri = old.tracking_uri
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
    record: store.CampaignRecord
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
# The Tuner
# --------------------------------------------------------------------------------------------


def snapshot_period(campaign: CampaignSpec) -> float:
    """Seconds between Tune's experiment snapshots (its trials and the searcher's state, what
    ``Tuner.restore`` resumes from). A trial started less than this before a hard crash is
    unknown after the restore: its work so far is lost and its MLflow run ends KILLED, tagged
    ``nfs.lost`` (``finish_campaign``). Tune's default, every ≥ 10 s, is longer than a fast
    trial takes to checkpoint. 1 s for budgets up to 50 trials, longer for larger ones: a
    snapshot rewrites every trial's state (≈ 25 KB each), so its cost grows with the budget.
    ``TUNE_GLOBAL_CHECKPOINT_S`` set by the user wins."""
    return min(10.0, max(1.0, campaign.budget.num_trials / 50))


def build_tuner(
    campaign: CampaignSpec,
    record: store.CampaignRecord,
    target: tracking.TrackingTarget,
    plan: ResourcePlan,
) -> Any:
    """``Tuner.restore`` of the campaign's experiment if it exists, else a new Tuner."""
    import ray.tune as tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import Repeater
    from ray.tune.search.optuna import OptunaSearch

    from nfs_orchestrator.orchestration.space import define_by_run
    from nfs_orchestrator.orchestration.trial import DriverContext, trial_driver
    from nfs_orchestrator.orchestration.tune_callback import CampaignCallback

    cid = campaign.campaign_id
    context = DriverContext(
        base_dir=record.base_dir,
        train_storage=_join(record.ray_storage, cid, "train"),
        tracking=target,
    )
    trainable = tune.with_resources(
        tune.with_parameters(trial_driver, campaign=campaign, context=context),
        ray_session.trial_actor_resources(campaign.resources),
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
    if campaign.budget.seeds > 1:  # each suggestion runs as `seeds` trials; Optuna sees the mean
        searcher = Repeater(searcher, repeat=campaign.budget.seeds)
    asha = campaign.budget.asha
    scheduler = None
    early = campaign.budget.early_stopping and campaign.search.epochs > asha.grace_period
    if not multi and early:
        scheduler = ASHAScheduler(
            time_attr="epochs_done",  # 1-based epochs (TrialRuntime adds it to each report)
            max_t=campaign.search.epochs,
            grace_period=asha.grace_period,
            reduction_factor=asha.reduction_factor,
        )
    callback = CampaignCallback(record.root, cid, target.to_dict())
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


def _stop_tune(signum: int) -> None:
    """A campaign's first SIGINT/SIGTERM: the Tune callback stops treating trial errors as
    failures, and Tune gets SIGUSR1 (save state, stop trials, return)."""
    from nfs_orchestrator.orchestration.tune_callback import STOP_REQUESTED

    STOP_REQUESTED.set()
    print(
        f"\nposenfs: {signal.Signals(signum).name}: stopping the campaign; checkpoints are "
        "kept (again to stop at once)",
        flush=True,
    )
    os.kill(os.getpid(), signal.SIGUSR1)


def finish_campaign(
    record: store.CampaignRecord,
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
    for row in rows:
        if row["status"] in ("RUNNING", "PENDING"):
            row["status"] = "KILLED"
    # Every trial run still open: those of an interrupted campaign (including trials that never
    # reported to Tune); after a complete one, those of trials Tune never recorded: started
    # within its last snapshot period (snapshot_period) before a hard crash, so the restored
    # searcher gave their place in the budget to a new trial.
    tags = {}
    if complete:
        tags[tracking.TAG_LOST] = "true"
    elif preempted:  # SIGTERM: a pre-emption notice, not a user's Ctrl-C
        tags[tracking.TAG_PREEMPTED] = "true"
    tracking.end_open_trial_runs(target, record.campaign_id, tags)
    write_ledger(rows, record.ledger_path)
    tracking.log_ledger(target, record.ledger_path)
    if rows:
        try:
            compare_campaign(record.root, record.campaign_id)
        except Exception as e:  # noqa: BLE001 - a plot must not fail a finished campaign
            print(f"posenfs: comparison not written ({e!r})", file=sys.stderr)
    parent_status = {"finished": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}[outcome]
    c = tracking.client(target.tracking_uri)
    tracking.end_run(c, target.parent_run_id, parent_status, label=outcome, error=error)
    store.write_state(record.folder, outcome, trials=len(rows), done=len(done))
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
    store.write_record(record)
    store.write_state(record.folder, "running")

    ray_session.prepare_ray_environment(address)
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", f"{snapshot_period(campaign):g}")
    import ray

    started_ray = False
    try:
        plan, started_ray = ray_session.start_ray(campaign.resources, campaign.budget, address)
        print(f"posenfs: campaign {campaign.campaign_id}: {plan.describe()}", flush=True)
        tuner = build_tuner(campaign, record, target, plan)
        from nfs_orchestrator.orchestration.tune_callback import STOP_REQUESTED

        STOP_REQUESTED.clear()
        with ray_session.StopSignals(_stop_tune) as stop:
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
