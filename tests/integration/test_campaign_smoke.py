"""The smoke campaign end to end: `posenfs search experiments/smoke.yaml` on an embedded Ray.

Real Ray (Tune + Train, 2 DDP workers per trial), real Optuna, real MLflow (SQLite). Asserts what
a user relies on: one ledger row per trial, exactly one MLflow child run per trial whose
genotype.json has the fingerprint the run is tagged with, every epoch logged once, the ledger on
the parent run, and status/compare reading the result from disk. The search runs once per
session in the `smoke_search` fixture (conftest.py), which test_promote_retrain builds on.
(Resuming is test_campaign_kill.py.)

Run inside a loopback-only network namespace (Ray binds to the machine's address otherwise):
    unshare -rn sh -c 'ip link set lo up && .venv/bin/pytest -q \
        tests/integration/test_campaign_smoke.py'
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.orchestration import status, store, tracking
from nfs_orchestrator.orchestration.compare import compare_campaign
from nfs_orchestrator.orchestration.ledger import read_ledger

pytestmark = pytest.mark.ray


def test_smoke_campaign(tmp_path, smoke_search):
    root = smoke_search.root
    campaign = load_campaign(smoke_search.spec, (smoke_search.data,))
    cid = campaign.campaign_id
    trials = campaign.budget.num_trials

    done = smoke_search.done  # `posenfs search experiments/smoke.yaml` (conftest.py)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"campaign {cid} finished: {trials} trials" in done.stdout
    assert "best trial" in done.stdout
    # the campaign's progress line at the last trial's end; each trial's epoch lines once each
    # (Ray Train's print patch printed every worker print twice) and no cleaner noise
    console = done.stdout + done.stderr  # Ray prints its workers' lines where it chooses
    assert f"trials: done {trials} / running 0 / left 0 · ETA" in console
    epochs = campaign.search.epochs
    lines = [x for x in console.splitlines() if " · ETA " in x and " · step " not in x]
    assert "(PlacementGroupCleaner" not in console

    rows = read_ledger(root / "campaigns" / cid / "ledger.parquet")
    assert len(rows) == trials
    for row in rows:  # each epoch line once: not folded into another trial's "[repeated Nx
        # across cluster]" by Ray's log dedup, not doubled by Ray Train's print patch
        said = [
            f"trial {cid}-{row['trial_id']}: epoch {e}/{epochs} · " for e in range(1, epochs + 1)
        ]
        assert all(sum(s in x for x in lines) == 1 for s in said), lines
    assert {r["status"] for r in rows} == {"FINISHED"}
    assert all(r["epochs_run"] == campaign.search.epochs for r in rows)

    c = tracking.client(tracking.default_tracking_uri(root))
    exp = c.get_experiment_by_name(tracking.experiment_name(cid))
    children = tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "trial"})
    parents = tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "campaign"})
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags[tracking.TAG_TRIAL] for r in children) == sorted(
        r["trial_id"] for r in rows
    )
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags[tracking.TAG_PARENT] == parents[0].info.run_id
        local = c.download_artifacts(run.info.run_id, "genotype.json", str(tmp_path / "dl"))
        fingerprint = Genotype.from_json(Path(local).read_text()).fingerprint()
        assert fingerprint == run.data.tags[tracking.TAG_GENOTYPE]
        row = next(r for r in rows if r["trial_id"] == run.data.tags[tracking.TAG_TRIAL])
        assert row["genotype_fp"] == fingerprint and row["run_id"] == run.info.run_id
        history = c.get_metric_history(run.info.run_id, "epoch")
        assert sorted(m.step for m in history) == list(range(campaign.search.epochs))

    ledger_copy = c.download_artifacts(
        parents[0].info.run_id, "ledger.parquet", str(tmp_path / "parent")
    )
    assert pq.read_table(ledger_copy).num_rows == trials

    # status and compare read what the campaign left on disk (no Ray)
    record = store.load_record(root, cid)
    assert store.effective_status(record.state) == "finished"
    assert "FINISHED" in status.format_trials(record)
    comparison = compare_campaign(root, cid)
    assert {e["grouping"] for e in comparison.tables["grouping"]} == {r["grouping"] for r in rows}
    assert (root / "campaigns" / cid / "compare.png").is_file()
