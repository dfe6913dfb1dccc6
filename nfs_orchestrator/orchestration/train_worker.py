"""The Ray Train worker side of a trial, and the runtime every search trial shares.

What this is: ``search_worker``, what each Ray Train worker of a search trial runs (the core
search loop through a ``RayTrainRuntime``); ``run_trial_search``, what every runtime of a trial
does around that loop (the one-worker trials that run in their Tune trial actor use it too);
and the runtimes:

- ``TrialRuntime`` holds what every runtime of a search trial does the same way, whoever runs
  it. ``report`` logs the epoch to the trial's MLflow child run (rank 0: metrics at step =
  epoch, genotype.json, fabric drawing, alpha/beta plot, genotype fingerprint tag), then
  publishes the result and rank 0's checkpoint (``_publish``). Tune requires the objective
  metrics in every result, but the loop validates only every ``val_every`` epochs: an objective
  missing from an epoch repeats its last value in the Ray report (NaN before the first one,
  which ASHA never stops on); MLflow gets only what the loop measured. Every result also
  carries ``trial_columns``, the trial's description for its ledger row as the driver built it
  (the campaign's Tune callback reads it instead of deriving the trial again). Each checkpoint
  keeps its epoch's report (``posenfs_report.json``): a trial killed after its last checkpoint
  but before Tune saw the result resumes with nothing left to run, and
  ``replay_final_report`` hands Tune that result again. ``should_stop`` agrees across ranks on
  "a SIGTERM reached some rank, or Ray announced a pre-emption" at an epoch's end,
  ``should_stop_step`` after every step (see "Pre-emption" below).
- ``RayTrainRuntime`` is the one of a Ray Train worker: rank and world size from
  ``ray.train.get_context()``, the device from ``ray.train.torch.get_device()``, collectives
  over the process group the TorchTrainer set up, checkpoints through ``ray.train.report`` /
  ``get_checkpoint`` under ``epoch_NNNN``. Inside Train workers only ``ray.train.*`` is used
  (never ``ray.tune.*``); the runtime of a trial without a worker group is
  ``trial.ActorRuntime``. ``retrain.py``'s workers use it as well.

Pre-emption at step granularity. Both a Tune trial actor and a Ray Train worker run the search
in a thread (Tune's and Train's runner threads), so the search cannot install a SIGTERM handler
(only the main thread may). What reaches the process is Ray's own handler in the main thread: it
raises ``SystemExit``, the worker's task loop ends and the interpreter exits, running the
``atexit`` hooks first (verified with Ray 2.60: a daemon thread keeps running during them). A
``TrialRuntime`` holds that exit while its search runs, inside Ray's handler
(``_hold_ray_exit``, before the raylet learns the worker exits) and in an ``atexit`` hook as a
fallback: it sets the SIGTERM flag and waits (``PREEMPTION_GRACE_S`` at most) until the search
has written its mid-epoch checkpoint at the next step boundary and ended its MLflow run KILLED
with ``nfs.preempted=true`` (``interrupt``). A one-worker trial in its Tune trial actor reports
synchronously: between epochs its search waits in ``tune.report`` until Tune calls the actor's
main thread again, which cannot happen while that thread holds the exit; there the hook ends the
run itself (the epoch's checkpoint is written before the report) instead of waiting out the
grace for a step that never comes (``_wait_on_driver``). A node pre-emption notice without a
signal (Ray 2.60 drains a node that got SIGTERM, or one the cloud reclaims) is seen by polling
Ray's drain table for this process's node (at most once per ``DRAIN_POLL_S``; the table Ray
Train's own ``get_preemption_info`` reads). With several ranks, one all-reduce of the flag per
step makes every rank stop at the same step; rank 0 writes the checkpoint (every rank holds the
same weights; each rank's RNG states are gathered into it). Where it goes: ``ActorRuntime``'s
``RunCheckpoints``; for Train workers a ``RunCheckpoints`` beside Ray Train's
(``interrupted_store``), taken on resume when it is newer than Ray's latest.
A retry or resume continues at that step (``search.loop``).

This module lives apart from the trial driver (``trial.py``) so that the processes which only
need it (the Train controller unpickles ``search_worker``, every worker runs it) import torch
and Ray Train and nothing else: no Tune, Optuna or MLflow (rank 0 loads MLflow at its first
report). Each trial starts a controller and its workers afresh, so every import here is paid
per trial.

What it is not: the trial driver (``trial.py``) or the search loop itself (``search.loop``).
"""

from __future__ import annotations

import atexit
import json
import math
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

from nfs_orchestrator.runtime import DistributedOps, RunCheckpoints, checkpoint_name
from nfs_orchestrator.specs import TrialSpec

REPORT_FILE = "posenfs_report.json"  # the Ray report of a checkpoint's epoch, kept inside it

PREEMPTION_GRACE_S = 60.0  # the longest a SIGTERM'd process waits for its mid-epoch checkpoint
EXIT_POLL_S = 0.05  # how often an exiting process looks whether the search can still stop
DRAIN_POLL_S = 1.0  # how often a search asks Ray whether its node is being drained
INTERRUPTED_DIR = "posenfs_interrupted"  # mid-epoch checkpoints of a Train run, in its folder

# Shown first, in this order, so that Ray's progress table (first 4 metrics) is useful.
LEADING_METRICS = ("epoch",)


def ordered_metrics(metrics: Mapping[str, float], leading: Sequence[str]) -> dict[str, Any]:
    """``metrics`` with ``epoch``, then the objectives, first; ``epochs_done`` (1-based, the
    scheduler's time axis) added."""
    first = [k for k in (*LEADING_METRICS, *leading) if k in metrics]
    row: dict[str, Any] = {k: metrics[k] for k in dict.fromkeys(first)}
    row.update((k, v) for k, v in metrics.items() if k not in row)
    row["epochs_done"] = int(metrics["epoch"]) + 1
    return row


class TrialRuntime(DistributedOps):
    """What every runtime of a search trial shares; subclasses say where results and
    checkpoints go (``_publish``), where the latest checkpoint comes from (``_fetch_latest``)
    and whether Ray announced a pre-emption (``_preempted``)."""

    def __init__(
        self,
        *,
        rank: int,
        world_size: int,
        device: torch.device,
        tracking_uri: str | None = None,
        run_id: str | None = None,
        objectives: Sequence[str] = (),
        constant_metrics: Mapping[str, float] | None = None,
        trial_columns: str | None = None,
    ) -> None:
        self.rank = rank
        self.world_size = world_size
        self.device = device
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.objectives = tuple(objectives)
        self.constant_metrics = dict(constant_metrics or {})  # added to every report
        self.trial_columns = trial_columns  # added to every Ray result (not to MLflow)
        self.stop_requested = False  # True once should_stop() said so
        self._sigterm = threading.Event()
        self._checkpoint: Path | None = None
        self._checkpoint_loaded = False
        self._tracking_warned = False
        self._objective_values: dict[str, float] = {}
        self.reports = 0  # results published by this process
        self._interrupted = threading.Event()  # the mid-epoch checkpoint is written
        self._waiting_on_driver = threading.Event()  # in a report that the driver must release
        self._next_drain_poll = 0.0
        self._draining = False
        self._install_sigterm_handler()
        self._release_ray_exit = self._hold_ray_exit()  # undone by close()
        atexit.register(self._on_exit)  # removed again by close()

    def _publish(self, row: dict[str, Any], checkpoint_dir: Path | None, epoch: int) -> None:
        """Hands one epoch's result, and rank 0's checkpoint folder, to Ray."""
        raise NotImplementedError

    def _fetch_latest(self) -> Path | None:
        """A fresh local copy of the run's latest complete checkpoint, or None."""
        raise NotImplementedError

    def _preempted(self) -> bool:
        return False

    def _save_interrupted(self, checkpoint_dir: Path, epoch: int, step: int) -> None:
        """Keeps rank 0's mid-epoch checkpoint as the run's latest."""
        raise NotImplementedError

    def _on_exit(self) -> None:
        """The process is exiting while the search runs (Ray's SIGTERM handler raised
        SystemExit in the main thread): ask for a stop at the next step boundary and wait for
        its checkpoint. Between epochs, while the search waits in a report for the driver's
        next call (which cannot reach a process that is exiting), there is no step boundary to
        wait for: the epoch's checkpoint is written already, so the run is ended here."""
        if self._sigterm.is_set():
            return  # the first hook waited already
        self._sigterm.set()
        print("posenfs: exiting; the search stops at its next step boundary", file=sys.stderr)
        sys.stderr.flush()
        deadline = time.monotonic() + PREEMPTION_GRACE_S
        while not (done := self._interrupted.wait(EXIT_POLL_S)):
            if self._waiting_on_driver.is_set():
                self._end_run_preempted()
                print("posenfs: pre-empted between epochs (the epoch's checkpoint stands)",
                      file=sys.stderr, flush=True)  # fmt: skip
                return
            if time.monotonic() > deadline:
                break
        print(f"posenfs: exit hook done (checkpoint written: {done})", file=sys.stderr, flush=True)

    def _wait_on_driver(self, report: Callable[[], None]) -> None:
        """Calls ``report``, one that returns only once the driver calls this process again
        (Tune's function trials report synchronously), marked for ``_on_exit``."""
        self._waiting_on_driver.set()
        try:
            report()
        finally:
            self._waiting_on_driver.clear()

    def _node_draining(self) -> bool:
        """Whether Ray drains this process's node (a pre-emption notice), asked at most once per
        ``DRAIN_POLL_S``. Ray's drain table is private API (``ray._private.state``), the one
        Ray Train's preemption watcher reads."""
        now = time.monotonic()
        if now < self._next_drain_poll:
            return self._draining
        self._next_drain_poll = now + DRAIN_POLL_S
        if not ray.is_initialized():  # not in a Ray process (and never start one from here)
            return False
        try:
            from ray._private.state import state

            node = ray.get_runtime_context().get_node_id()
            self._draining = node in (state.get_draining_nodes() or {})
        except Exception:  # noqa: BLE001 - no notice is no reason to stop
            self._draining = False
        return self._draining

    def _install_sigterm_handler(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Train runs the worker function in a thread: signals are Ray's there
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum: int, frame: Any) -> None:
            self._sigterm.set()
            if callable(previous):
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _hold_ray_exit(self) -> Any:
        """In a Ray worker process whose search runs in a thread: makes Ray's SIGTERM handler
        (main thread) wait for the mid-epoch checkpoint before it raises ``SystemExit``. Ray's
        handler calls ``ray._private.worker.raise_sys_exit_with_custom_error_message`` (private,
        Ray 2.60); wrapping it holds the process before Ray tells its raylet that the worker
        exits, so a retry cannot start and read the checkpoints before this one is written (the
        ``atexit`` hook alone runs after that). Returns what undoes it (None: nothing done)."""
        if threading.current_thread() is threading.main_thread():
            return None
        try:
            import ray._private.worker as ray_worker

            original = ray_worker.raise_sys_exit_with_custom_error_message
        except (ImportError, AttributeError):
            return None

        def held(*args: Any, **kwargs: Any) -> None:
            self._on_exit()
            original(*args, **kwargs)

        ray_worker.raise_sys_exit_with_custom_error_message = held

        def release() -> None:
            ray_worker.raise_sys_exit_with_custom_error_message = original

        return release

    def close(self) -> None:
        """Removes the exit hooks and the local copy of the resume checkpoint."""
        self._interrupted.set()
        atexit.unregister(self._on_exit)
        if self._release_ray_exit is not None:
            self._release_ray_exit()
        if self._checkpoint is not None:
            shutil.rmtree(self._checkpoint, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        """A local copy of the run's latest committed checkpoint (downloaded once), or None."""
        if not self._checkpoint_loaded:
            self._checkpoint_loaded = True
            self._checkpoint = self._fetch_latest()
        return self._checkpoint

    def report(
        self,
        metrics: Mapping[str, float],
        checkpoint_dir: Path | None = None,
        artifacts: Mapping[str, str | bytes] | None = None,
    ) -> None:
        metrics = {**metrics, **self.constant_metrics}
        row = ordered_metrics(metrics, self.objectives)
        for name in self.objectives:  # an objective not measured this epoch repeats its last
            if name in row:
                self._objective_values[name] = row[name]
            else:
                row[name] = self._objective_values.get(name, math.nan)
        epoch = int(row["epoch"])
        if self.rank == 0:
            fingerprint = self._log_to_mlflow(metrics, artifacts)
            if fingerprint:
                row["genotype_fp"] = fingerprint  # rank 0's metrics are the ones Tune sees
        if self.trial_columns is not None:
            row["trial_columns"] = self.trial_columns
        checkpoint = Path(checkpoint_dir) if self.rank == 0 and checkpoint_dir else None
        if checkpoint is not None:
            (checkpoint / REPORT_FILE).write_text(json.dumps(row, sort_keys=True))
        self._publish(row, checkpoint, epoch)
        self.reports += 1
        if checkpoint_dir is not None:
            shutil.rmtree(checkpoint_dir, ignore_errors=True)  # persisted by now

    def replay_final_report(self) -> bool:
        """After a loop that had nothing left to do (its run was already complete when it
        resumed), reports the last epoch's result again from the checkpoint, so that Tune sees
        the trial's metrics and completes it. Collective like ``report``; True if it reported."""
        checkpoint = self.latest_checkpoint()
        if self.reports or checkpoint is None or not (checkpoint / REPORT_FILE).is_file():
            return False
        row = json.loads((checkpoint / REPORT_FILE).read_text())
        self._publish(row, None, int(row["epoch"]))
        return True

    def _log_to_mlflow(
        self, metrics: Mapping[str, float], artifacts: Mapping[str, str | bytes] | None
    ) -> str | None:
        """Rank 0's MLflow logging. A tracking failure is reported once and training goes on:
        the epoch's metrics and checkpoint still reach Ray."""
        if not (self.tracking_uri and self.run_id):
            return None
        from nfs_orchestrator.orchestration import tracking  # rank 0 only loads MLflow

        try:
            return tracking.log_epoch(self.tracking_uri, self.run_id, metrics, artifacts)
        except Exception as e:  # noqa: BLE001 - tracking must never kill a search
            if not self._tracking_warned:
                print(f"posenfs: MLflow logging failed ({e!r}); continuing", file=sys.stderr)
                self._tracking_warned = True
            return None

    def should_stop(self) -> bool:
        """True on every rank when any rank got SIGTERM or Ray announced a pre-emption of a node
        of this worker group. Collective: every rank calls it once per epoch."""
        local = 1.0 if (self._sigterm.is_set() or self._preempted()) else 0.0
        stop = self.all_reduce_mean({"stop": local})["stop"] > 0.0
        self.stop_requested = self.stop_requested or stop
        return stop

    def should_stop_step(self) -> bool:
        """True on every rank when a SIGTERM reached some rank or some rank's node is being
        drained. One rank: a flag read (a drain poll at most once a second); several: one
        all-reduce of one number per step."""
        local = self._sigterm.is_set() or self._node_draining()
        if self.world_size == 1:
            return local
        return self.all_reduce_mean({"stop": float(local)})["stop"] > 0.0

    def interrupt(self, checkpoint_dir: Path | None, epoch: int, step: int) -> None:
        """Rank 0 keeps the mid-epoch checkpoint and ends the MLflow run KILLED, tagged
        ``nfs.preempted`` (with ``preempted_step``, the steps done in ``epoch``); then every
        rank lets its exit hook go (after a barrier: a SIGTERM'd rank 1 must not exit before
        rank 0 has written)."""
        if self.rank == 0 and checkpoint_dir is not None:
            self._save_interrupted(checkpoint_dir, epoch, step)
            self._end_run_preempted(epoch, step)
        self.all_reduce_mean({"interrupted": 1.0})
        print(
            f"posenfs: pre-empted after step {step} of epoch {epoch}", file=sys.stderr, flush=True
        )
        self.stop_requested = True
        self._interrupted.set()

    def _end_run_preempted(self, epoch: int | None = None, step: int | None = None) -> None:
        """Ends the MLflow run KILLED, tagged ``nfs.preempted``; ``preempted_step`` (the steps
        done in ``epoch``) is logged for a stop within an epoch."""
        if not (self.tracking_uri and self.run_id):
            return
        from nfs_orchestrator.orchestration import tracking

        try:
            c = tracking.client(self.tracking_uri)
            if epoch is not None and step is not None:
                c.log_metric(self.run_id, "preempted_step", float(step), step=epoch)
            tracking.end_run(
                c, self.run_id, "KILLED", label="preempted", tags={tracking.TAG_PREEMPTED: "true"}
            )
        except Exception as e:  # noqa: BLE001 - the checkpoint is what matters now
            print(f"posenfs: MLflow logging failed ({e!r})", file=sys.stderr)


class RayTrainRuntime(TrialRuntime):
    """The Runtime of one Ray Train worker; construct it inside the worker function."""

    def __init__(self, interrupted: RunCheckpoints | None = None, **kwargs: Any) -> None:
        context = ray.train.get_context()
        super().__init__(
            rank=context.get_world_rank(),
            world_size=context.get_world_size(),
            device=torch.device(ray.train.torch.get_device()),
            **kwargs,
        )
        self.interrupted = interrupted  # mid-epoch checkpoints (``interrupted_store``)

    def _publish(self, row: dict[str, Any], checkpoint_dir: Path | None, epoch: int) -> None:
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = ray.train.Checkpoint.from_directory(str(checkpoint_dir))
        # a barrier: every rank calls it
        ray.train.report(row, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_name(epoch))

    def _fetch_latest(self) -> Path | None:
        """Ray Train's latest checkpoint, or the mid-epoch one when it is newer (an epoch Ray
        has no checkpoint of yet)."""
        checkpoint = ray.train.get_checkpoint()
        local, done = None, -1  # the last epoch Ray's checkpoint completed
        if checkpoint is not None:
            local = Path(tempfile.mkdtemp(prefix="posenfs-resume-"))
            checkpoint.to_directory(str(local))
            report = local / REPORT_FILE
            done = json.loads(report.read_text())["epoch"] if report.is_file() else math.inf
        entry = self.interrupted.latest() if self.interrupted is not None else None
        if entry is not None and entry["epoch"] > done:
            if local is not None:
                shutil.rmtree(local, ignore_errors=True)
            return self.interrupted.download(entry)
        return local

    def _save_interrupted(self, checkpoint_dir: Path, epoch: int, step: int) -> None:
        if self.interrupted is None:
            raise RuntimeError("no store for mid-epoch checkpoints")
        self.interrupted.save(checkpoint_dir, epoch, step)

    def _preempted(self) -> bool:
        return ray.train.get_preemption_info() is not None


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


@dataclass(frozen=True)
class SearchLaunch:
    """What the trial driver hands the search of one trial, wherever it runs: the trial built
    once, its MLflow run, and how the runtime reports. Crosses to Train workers as one plain dict
    (``to_dict``), decoded once there (``from_dict``)."""

    trial: TrialSpec
    tracking_uri: str
    run_id: str
    objectives: tuple[str, ...]
    torch_threads: int  # the CPUs a worker holds
    driver_started: float  # time.time() when the trial driver started
    trial_columns: str  # the ledger columns describing the trial, JSON (ledger.trial_columns)
    train_storage: str = ""  # the campaign's train storage (mid-epoch checkpoints of Train runs)

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "trial": self.trial.to_dict(), "objectives": list(self.objectives)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchLaunch:
        body = dict(data)
        trial = TrialSpec.from_dict(body.pop("trial"), path="trial")
        return cls(trial=trial, **{**body, "objectives": tuple(body["objectives"])})

    def runtime_options(self, startup_s: float) -> dict[str, Any]:
        """The keyword arguments of a ``TrialRuntime`` for this trial."""
        return {
            "tracking_uri": self.tracking_uri,
            "run_id": self.run_id,
            "objectives": self.objectives,
            "constant_metrics": {"startup_s": startup_s},
            "trial_columns": self.trial_columns,
        }


def interrupted_store(train_storage: str, run_name: str) -> RunCheckpoints | None:
    """Where the Train run ``run_name`` keeps its mid-epoch checkpoint: a ``RunCheckpoints`` in
    its own folder (``posenfs_interrupted``), the latest one only."""
    if not train_storage:
        return None
    return RunCheckpoints(train_storage, f"{run_name}/{INTERRUPTED_DIR}", keep=1)


def search_worker(config: dict[str, Any]) -> None:
    """Runs on every Train worker: the core search loop through a RayTrainRuntime
    (``config`` is ``SearchLaunch.to_dict()``)."""
    launch = SearchLaunch.from_dict(config)
    # from the trial driver's start to here: actor, controller and worker group start-up
    startup_s = time.time() - launch.driver_started
    torch.set_num_threads(launch.torch_threads)  # the CPUs this worker holds
    runtime = RayTrainRuntime(
        interrupted_store(launch.train_storage, launch.trial.name),
        **launch.runtime_options(startup_s),
    )
    run_trial_search(launch.trial, runtime)
