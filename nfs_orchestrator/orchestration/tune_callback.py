"""The campaign's Tune callback: keeps the ledger and the trials' MLflow runs in step with Tune.

What this is: ``CampaignCallback``, run by Tune in the campaign process. On every trial start,
result, completion and error it updates that trial's ledger row (``ledger.update_with_result``)
and rewrites ``ledger.parquet`` atomically, so ``posenfs status`` is current while the campaign
runs. When a trial ends it ends the trial's MLflow child run (FINISHED, labelled
``early_stopped`` when ASHA stopped it, or FAILED with the error) and uploads the ledger to the
parent run. It is the only place a trial run is ended FAILED: the trial driver cannot tell a
failure from Tune tearing it down. And a trial stopped by the scheduler is killed: code after its
``fit()`` never runs, so its run would otherwise stay RUNNING.

A row starts from the trial's outer choices (``ledger.pending_row``); the columns describing the
trial come with its results, as the trial driver built them (``ledger.trial_columns``): the
trial is never derived again here.

The callback holds only plain data until ``setup`` (Tune pickles it with the Tuner and restores it
on ``Tuner.restore``: the root and campaign id, to read the campaign's record with ``store``,
and where it logs); ``setup`` reloads the rows from the ledger on disk. What it is not: the
ledger schema (``ledger.py``) or the MLflow layer (``tracking.py``).

It also prints the campaign's progress, ``trials: done D / running R / left L · ETA h:mm:ss``,
at most every ``ETA_EVERY_S`` seconds on a result and at every trial's end: the ETA comes from
the epoch times measured so far (the time between a trial's successive results), the running
trials' remaining epochs and the trials left at ASHA's expected share of epochs
(``forecast.campaign_eta``, ``forecast.asha_simulation``).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray.tune as tune

from nfs_orchestrator.campaign_spec import decode_params
from nfs_orchestrator.forecast import asha_simulation, campaign_eta, eta_line
from nfs_orchestrator.orchestration import store, tracking
from nfs_orchestrator.orchestration.ledger import pending_row, read_ledger, update_with_result
from nfs_orchestrator.orchestration.ledger import write_ledger as write_rows

# Set by the campaign's SIGINT/SIGTERM handler in this process. Tune then tears the running trials
# down (their placement groups go, so their Train controllers die with an error); those errors are
# the stop, not failures: the rows stay RUNNING and ``finish_campaign`` ends them KILLED.
STOP_REQUESTED = threading.Event()

ETA_EVERY_S = 30.0  # the campaign's progress line at most this often on results


class CampaignCallback(tune.Callback):
    """Ledger rows and MLflow run statuses per Tune trial (see the module docstring)."""

    def __init__(self, root: str, campaign_id: str, target: dict[str, str]):
        self.root = root
        self.campaign_id = campaign_id
        self.target_dict = target

    # -- state rebuilt in every process that runs the experiment --------------------------

    def setup(self, **info: Any) -> None:
        record = store.load_record(self.root, self.campaign_id)
        self.spec = record.spec
        self.ledger_path = str(record.ledger_path)
        self.target = tracking.TrackingTarget.from_dict(self.target_dict)
        self.rows = {r["trial_id"]: r for r in read_ledger(self.ledger_path)}
        self.clock: dict[str, tuple[float, float]] = {}  # trial -> (start, wall time before)
        self.warned = False
        # progress: each running trial's epochs done and last result time; epoch times seen
        self.epochs_done: dict[str, int] = {}
        self.last_result: dict[str, float] = {}
        self.epoch_times: list[float] = []
        self.eta_printed = 0.0
        b, s = self.spec.budget, self.spec.search
        self.epochs_per_trial = float(s.epochs)  # expected, for the trials not started yet
        if b.early_stopping and not self.spec.multi_objective and b.asha.grace_period < s.epochs:
            asha = asha_simulation(
                b.num_trials, b.asha.grace_period, b.asha.reduction_factor, s.epochs, draws=500
            )
            self.epochs_per_trial = s.epochs * asha.epoch_fraction

    def __getstate__(self) -> dict[str, Any]:
        keep = ("root", "campaign_id", "target_dict")
        return {k: v for k, v in self.__dict__.items() if k in keep}

    # -- helpers ---------------------------------------------------------------------------

    def _row(self, trial: Any) -> dict[str, Any]:
        tid = trial.trial_id
        if tid not in self.rows:
            params = decode_params(self.spec.outer, trial.config)
            objective = self.spec.objectives[0]
            self.rows[tid] = pending_row(self.spec.campaign_id, tid, params, objective)
        row = self.rows[tid]
        if not row.get("run_id"):
            row["run_id"] = self._safe(
                tracking.find_trial_run, self.target, row["campaign_id"], tid
            )
        return row

    def _tick(self, row: dict[str, Any]) -> None:
        start, before = self.clock.setdefault(
            row["trial_id"], (time.monotonic(), row.get("wall_time_s") or 0.0)
        )
        row["wall_time_s"] = before + time.monotonic() - start
        resources = self.spec.resources
        row["worker_seconds"] = row["wall_time_s"] * resources.workers_per_trial
        row["gpu_seconds"] = row["worker_seconds"] * resources.gpus_per_worker

    def _write(self) -> None:
        write_rows(self.rows.values(), self.ledger_path)

    def _safe(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """MLflow calls from the callback: a failure is reported once, never stops Tune."""
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001
            if not self.warned:
                print(f"posenfs: MLflow call failed ({e!r}); continuing", file=sys.stderr)
                self.warned = True
            return None

    def _progress(self, trials: list, ended: str | None = None) -> None:
        """Prints the campaign's progress line when due (see the module docstring); a trial
        that ``ended`` counts as done whatever Tune's status says yet."""
        now = time.monotonic()
        if ended is None and now - self.eta_printed < ETA_EVERY_S:
            return
        self.eta_printed = now
        finished = [t.status in ("TERMINATED", "ERROR") or t.trial_id == ended for t in trials]
        done = sum(finished)
        running = [t for t, f in zip(trials, finished) if t.status == "RUNNING" and not f]
        left = max(0, self.spec.budget.num_trials - done - len(running))
        eta = None
        if self.epoch_times:
            epoch_s = sorted(self.epoch_times)[len(self.epoch_times) // 2]  # median
            epochs = self.spec.search.epochs
            running_left = [epochs - self.epochs_done.get(t.trial_id, 0) for t in running]
            eta = campaign_eta(
                epoch_s, running_left, left, self.epochs_per_trial, max(1, len(running))
            )
        print(f"posenfs: {eta_line(done, len(running), left, eta)}", flush=True)

    def _end(self, row: dict[str, Any], status: str, label: str, error: str = "") -> None:
        self._tick(row)
        row["status"] = label.upper()
        self.clock.pop(row["trial_id"], None)
        self._write()
        if row.get("run_id"):
            client = tracking.client(self.target.tracking_uri)
            self._safe(tracking.end_run, client, row["run_id"], status, label=label, error=error)
        self._safe(tracking.log_ledger, self.target, self.ledger_path)

    # -- Tune events -----------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        row["status"] = "RUNNING"
        self.clock.pop(trial.trial_id, None)
        self._tick(row)
        self._write()

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        row = update_with_result(self._row(trial), result, self.spec.objectives)
        row["status"] = "RUNNING"
        self.rows[trial.trial_id] = row
        self._tick(row)
        self._write()
        tid, now = trial.trial_id, time.monotonic()
        if tid in self.last_result:  # the wall time of one epoch, reporting included
            self.epoch_times.append(now - self.last_result[tid])
        elif result.get("epoch_time_s"):
            self.epoch_times.append(float(result["epoch_time_s"]))
        self.last_result[tid] = now
        self.epochs_done[tid] = int(result.get("epochs_done", result.get("epoch", -1) + 1))
        self._progress(trials)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        row = self._row(trial)
        early = (row.get("epochs_run") or 0) < (row.get("epochs") or self.spec.search.epochs)
        self._end(row, "FINISHED", "early_stopped" if early else "finished")
        self.last_result.pop(trial.trial_id, None)
        self._progress(trials, ended=trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if STOP_REQUESTED.is_set():
            return
        row = self._row(trial)
        error = ""
        if trial.error_file and Path(trial.error_file).is_file():
            error = Path(trial.error_file).read_text()
        if "TrialInterrupted" in error:  # pre-empted with no retry left: resumable, not failed
            self._end(row, "KILLED", "killed", error=error)  # keeps its nfs.preempted tag
            return
        self._end(row, "FAILED", "failed", error=error)
        self.last_result.pop(trial.trial_id, None)
        self._progress(trials, ended=trial.trial_id)
