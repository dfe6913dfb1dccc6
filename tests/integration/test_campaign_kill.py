"""A campaign killed hard mid-trial resumes where it stopped.

`posenfs search` runs in a subprocess (its own session); once one trial has finished and the
next is in Tune's experiment snapshot (at most ``snapshot_period``, here 1 s, after its start)
with a registered checkpoint (one worker, in its trial actor: ``RunCheckpoints``'s
``latest.json``), the whole session gets SIGKILL: no handler runs, no state is flushed.
`posenfs resume ID` must then: rerun no finished trial, resume the interrupted one at the epoch
after its registered checkpoint (its ``start_epoch`` metric in MLflow), run exactly the budget's
number of trials (the Optuna searcher continues from its saved state), and create no duplicate
MLflow run.

Run inside a loopback-only network namespace:
    unshare -rn sh -c 'ip link set lo up && .venv/bin/pytest -q \
        tests/integration/test_campaign_kill.py'
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import psutil
import pytest

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.orchestration import tracking
from nfs_orchestrator.orchestration.ledger import read_ledger
from tests.integration.helpers import (
    POSENFS,
    local_ray_env,
    one_worker_smoke,
    registered_epoch,
    search_in_background,
    tune_recorded,
)

# the ray_tmpdir fixture (a short private RAY_TMPDIR, leftovers killed) is in conftest.py

pytestmark = pytest.mark.ray

EPOCHS = 6
TRIALS = 3


def kill_session(leader: subprocess.Popen) -> None:
    """SIGKILL to every process of the session ``leader`` leads (the CLI and the Ray it started);
    the leader is reaped by Popen (so its return code is kept), the others by psutil."""
    others = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.pid) == leader.pid:
                proc.send_signal(signal.SIGKILL)
                if proc.pid != leader.pid:
                    others.append(proc)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    leader.wait()
    psutil.wait_procs(others, timeout=30)


def test_sigkill_mid_trial_then_resume(tmp_path, ray_tmpdir):
    spec_path = one_worker_smoke(tmp_path, "killed", trials=TRIALS, epochs=EPOCHS)
    campaign = load_campaign(spec_path)
    cid = campaign.campaign_id
    root = tmp_path / "runs"
    ledger = root / "campaigns" / cid / "ledger.parquet"
    train_root = root / "ray" / cid / "train"
    env = local_ray_env(ray_tmpdir)

    proc = search_in_background(spec_path, root, ray_tmpdir, tmp_path / "search.log")
    finished_before, victim = set(), None
    deadline = time.monotonic() + 300
    try:
        while victim is None:
            assert proc.poll() is None, (tmp_path / "search.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no trial reached a registered checkpoint"
            rows = read_ledger(ledger) if ledger.is_file() else []
            finished_before = {r["trial_id"] for r in rows if r["status"] == "FINISHED"}
            for row in rows:  # the 2nd of 3 trials, so that the 3rd is left to the searcher
                if finished_before and row["status"] == "RUNNING" and len(rows) < TRIALS:
                    epoch = registered_epoch(train_root / f"{cid}-{row['trial_id']}")
                    recorded = tune_recorded(root / "ray" / cid, row["trial_id"])
                    if epoch is not None and epoch < EPOCHS - 2 and recorded:
                        victim = row["trial_id"]
            time.sleep(0.2)
    finally:
        kill_session(proc)
    assert proc.returncode == -signal.SIGKILL
    registered = registered_epoch(train_root / f"{cid}-{victim}")  # final: nothing runs now
    assert registered is not None and registered < EPOCHS - 1

    status = subprocess.run(
        POSENFS + ["status", cid, "--root", str(root)], env=env, capture_output=True, text=True
    )
    assert f"campaign {cid}: stopped" in status.stdout, status.stdout + status.stderr

    resumed = subprocess.run(
        POSENFS + ["resume", cid, "--root", str(root)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    rows = {r["trial_id"]: r for r in read_ledger(ledger)}
    assert len(rows) == TRIALS  # the budget, not more: the searcher resumed its count
    assert {r["status"] for r in rows.values()} == {"FINISHED"}
    assert rows[victim]["start_epoch"] == registered + 1

    c = tracking.client(tracking.default_tracking_uri(root))
    exp = c.get_experiment_by_name(tracking.experiment_name(cid))
    runs = tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "trial"})
    assert sorted(r.data.tags[tracking.TAG_TRIAL] for r in runs) == sorted(rows)  # no duplicates
    assert len(tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "campaign"})) == 1
    for run in runs:
        tid = run.data.tags[tracking.TAG_TRIAL]
        assert run.info.status == "FINISHED"
        epochs = [m.step for m in c.get_metric_history(run.info.run_id, "epoch")]
        starts = {int(m.value) for m in c.get_metric_history(run.info.run_id, "start_epoch")}
        if tid in finished_before:  # not rerun: every epoch logged once, from a start at 0
            assert sorted(epochs) == list(range(EPOCHS)) and starts == {0}
        elif tid == victim:  # resumed at the epoch after its registered checkpoint, not 0
            assert starts == {0, registered + 1}
            assert set(epochs) == set(range(EPOCHS))
        else:
            assert starts == {0}
