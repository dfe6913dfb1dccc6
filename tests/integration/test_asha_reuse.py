"""ASHA stops one-worker trials whose Tune trial actor is then reused for the next trial.

Session 2 reverted Tune's actor reuse because a trial ASHA stopped was still tearing its
TorchTrainer down when Tune reset the actor, and the next trial errored ("Could not re-use
actor"). One-worker trials now run their search in the actor itself and the actor is reused
(``campaign.build_tuner``). A campaign of 4 one-worker trials × 3 epochs, one at a time, ASHA
on val_loss after 1 epoch: ASHA must stop at least one trial early, every trial must end FINISHED or
EARLY_STOPPED (none FAILED), the ledger must hold exactly the budget, and every MLflow trial run
must be ended.

Run inside a loopback-only network namespace:
    unshare -rn sh -c 'ip link set lo up && .venv/bin/pytest -q \
        tests/integration/test_asha_reuse.py'
"""

from __future__ import annotations

import pytest
import yaml

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.orchestration import tracking
from nfs_orchestrator.orchestration.ledger import read_ledger
from tests.integration.helpers import one_worker_smoke, posenfs

pytestmark = pytest.mark.ray

TRIALS = 4


def test_asha_stops_trials_in_reused_actors(tmp_path, ray_tmpdir):
    spec_path = one_worker_smoke(tmp_path, "asha", trials=TRIALS, epochs=3)
    body = yaml.safe_load(spec_path.read_text())
    body["budget"]["asha"] = {"enabled": True, "grace_period": 1, "reduction_factor": 2}
    body["objectives"] = [{"metric": "val_loss", "mode": "min"}]  # no ties (AP is 0 this early)
    spec_path.write_text(yaml.safe_dump(body))
    cid = load_campaign(spec_path).campaign_id
    root = tmp_path / "runs"

    done = posenfs(["search", str(spec_path), "--root", str(root)], tmp_path, ray_tmpdir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "worker(s) (in the trial actor)" in done.stdout
    assert "re-use" not in done.stdout + done.stderr

    rows = read_ledger(root / "campaigns" / cid / "ledger.parquet")
    statuses = [r["status"] for r in rows]
    assert len(rows) == TRIALS
    assert set(statuses) <= {"FINISHED", "EARLY_STOPPED"}, statuses
    assert "EARLY_STOPPED" in statuses, statuses  # otherwise this test proves nothing
    c = tracking.client(tracking.default_tracking_uri(root))
    exp = c.get_experiment_by_name(tracking.experiment_name(cid))
    runs = tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "trial"})
    assert len(runs) == TRIALS
    assert all(run.info.status == "FINISHED" for run in runs)
