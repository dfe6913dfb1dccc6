"""What an exiting trial process does with its search (``TrialRuntime._on_exit``, the hook
Ray's SIGTERM handler runs in the main thread), without Ray: the search runs in a thread, as
in a Tune trial actor, and reports synchronously, as Tune's function trials do."""

from __future__ import annotations

import signal
import threading

import pytest
import torch

from nfs_orchestrator.orchestration import tracking, train_worker
from nfs_orchestrator.orchestration.train_worker import TrialRuntime


class SynchronousReports(TrialRuntime):
    """A report returns only once the driver calls the process again (``driver_called``)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(rank=0, world_size=1, device=torch.device("cpu"), **kwargs)
        self.driver_called = threading.Event()

    def _publish(self, row, checkpoint_dir, epoch) -> None:
        self._wait_on_driver(self.driver_called.wait)


@pytest.fixture
def runtime(tmp_path):
    c = tracking.client(tracking.default_tracking_uri(tmp_path))
    run = c.create_run(c.create_experiment("exit-hold"))
    handler = signal.getsignal(signal.SIGTERM)  # the runtime chains its own onto it
    runtime = SynchronousReports(
        tracking_uri=tracking.default_tracking_uri(tmp_path), run_id=run.info.run_id
    )
    yield runtime
    runtime.driver_called.set()
    runtime.close()
    signal.signal(signal.SIGTERM, handler)


def test_an_exit_between_epochs_ends_the_run_preempted_instead_of_waiting_for_a_step(
    runtime, monkeypatch
):
    """The search waits in its epoch's report for the driver, whose call cannot come while the
    main thread holds the exit: the hook ends the run KILLED, tagged, with no preempted_step
    (no step of the next epoch ran), and returns long before its grace."""
    monkeypatch.setattr(train_worker, "PREEMPTION_GRACE_S", 3600.0)
    search = threading.Thread(target=runtime.report, args=({"epoch": 0.0},), daemon=True)
    search.start()
    assert runtime._waiting_on_driver.wait(30)

    exiting = threading.Thread(target=runtime._on_exit, daemon=True)
    exiting.start()
    exiting.join(60)
    assert not exiting.is_alive(), "the exit hook waited for a step boundary that cannot come"

    c = tracking.client(runtime.tracking_uri)
    run = c.get_run(runtime.run_id)
    assert run.info.status == "KILLED"
    assert run.data.tags[tracking.TAG_PREEMPTED] == "true"
    assert "preempted_step" not in run.data.metrics
    assert search.is_alive()  # still in its report: the process exits around it


def test_an_exit_within_an_epoch_waits_for_the_step_boundary(runtime):
    """Outside a report the hook waits until the search has stopped at its next step boundary
    (``interrupt``), which ends the run with the step it reached."""
    exiting = threading.Thread(target=runtime._on_exit, daemon=True)
    exiting.start()
    exiting.join(0.5)
    assert exiting.is_alive()  # no step boundary yet
    assert runtime.should_stop_step()  # what the search reads after its step
    runtime.interrupt(None, 1, 7)  # no checkpoint folder: only the hold is released
    exiting.join(60)
    assert not exiting.is_alive()
    run = tracking.client(runtime.tracking_uri).get_run(runtime.run_id)
    assert run.info.status == "RUNNING"  # rank 0 ends the run only with its checkpoint
