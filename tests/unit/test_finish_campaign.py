"""finish_campaign against a real MLflow SQLite store (no Ray): after a complete campaign, a
trial left RUNNING (one Tune never recorded before a hard crash) ends KILLED in the ledger and
in MLflow, tagged ``nfs.lost``, while finished trials are left as they are; after an
interrupted one, open trials end KILLED (tagged ``nfs.preempted`` on SIGTERM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.orchestration import store, tracking
from nfs_orchestrator.orchestration.campaign import finish_campaign, make_record
from nfs_orchestrator.orchestration.ledger import new_row, read_ledger, write_ledger
from nfs_orchestrator.orchestration.tracking import TAG_LOST, TAG_PREEMPTED

REPO = Path(__file__).resolve().parents[2]


def campaign_with_trials(tmp_path: Path, statuses: dict[str, str]):
    """The smoke campaign (budget: 2 trials) recorded under ``tmp_path`` with one ledger row
    and one MLflow child run per trial id, in the given statuses."""
    campaign = load_campaign(REPO / "experiments" / "smoke.yaml")
    record = make_record(campaign, tmp_path)
    record.folder.mkdir(parents=True)
    target = tracking.open_campaign(tracking.default_tracking_uri(tmp_path), campaign)
    record.parent_run_id = target.parent_run_id
    store.write_record(record)
    c = tracking.client(target.tracking_uri)
    rows = []
    for trial_id, state in statuses.items():
        trial = campaign.trial({}, name=f"{campaign.campaign_id}-{trial_id}")
        run_id = tracking.open_trial(target, campaign.campaign_id, trial_id, trial, trial.name)
        row = new_row(campaign.campaign_id, trial_id, trial, campaign.objectives[0])
        row.update(run_id=run_id, status=state)
        if state == "FINISHED":
            tracking.end_run(c, run_id, "FINISHED")
        rows.append(row)
    write_ledger(rows, record.ledger_path)
    return record, target, c


def run_of(c, target, trial_id: str):
    tags = {tracking.TAG_KIND: "trial", tracking.TAG_TRIAL: trial_id}
    (run,) = tracking.find_runs(c, target.experiment_id, tags)
    return run


def test_a_trial_tune_never_recorded_ends_killed_and_lost(tmp_path):
    statuses = {"aaaa0001": "FINISHED", "aaaa0002": "RUNNING", "aaaa0003": "FINISHED"}
    record, target, c = campaign_with_trials(tmp_path, statuses)
    outcome, rows = finish_campaign(record, target, interrupted=False)
    assert outcome == "finished"  # the budget (2) was run by the other two
    assert {r["trial_id"]: r["status"] for r in read_ledger(record.ledger_path)} == {
        "aaaa0001": "FINISHED",
        "aaaa0002": "KILLED",
        "aaaa0003": "FINISHED",
    }
    lost = run_of(c, target, "aaaa0002")
    assert lost.info.status == "KILLED" and lost.data.tags.get(TAG_LOST) == "true"
    for trial_id in ("aaaa0001", "aaaa0003"):
        kept = run_of(c, target, trial_id)
        assert kept.info.status == "FINISHED" and TAG_LOST not in kept.data.tags


@pytest.mark.parametrize("preempted", [False, True])
def test_an_interrupted_campaign_ends_open_trials_killed(tmp_path, preempted):
    record, target, c = campaign_with_trials(tmp_path, {"bbbb0001": "RUNNING"})
    outcome, _ = finish_campaign(record, target, interrupted=True, preempted=preempted)
    assert outcome == "interrupted"
    (row,) = read_ledger(record.ledger_path)
    assert row["status"] == "KILLED"
    run = run_of(c, target, "bbbb0001")
    assert run.info.status == "KILLED" and TAG_LOST not in run.data.tags
    assert (run.data.tags.get(TAG_PREEMPTED) == "true") == preempted
