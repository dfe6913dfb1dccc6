"""promote against a real MLflow SQLite store (no Ray): what is registered is what the rule
scored (the genotype of the epoch behind the trial's best value, or the latest one for a
latest-value metric), tag, score and artifact agree, and the alias history records each move."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.orchestration import store, tracking
from nfs_orchestrator.orchestration.campaign import make_record
from nfs_orchestrator.orchestration.ledger import new_row, update_with_result
from nfs_orchestrator.orchestration.promote import PromoteError, parse_rule, promote

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "genotype_tiny_coco-p3.json"


def genotypes() -> tuple[Genotype, Genotype]:
    """Two different genotypes (the golden one, and the same derived for another backbone)."""
    a = Genotype.from_json(GOLDEN.read_text())
    b = dataclasses.replace(a, backbone="resnet50", macs=(a.macs or 0) + 1)
    assert a.fingerprint() != b.fingerprint()
    return a, b


def campaign_with_one_trial(tmp_path: Path, epochs: list[tuple[Genotype, float]]):
    """The smoke campaign with one FINISHED trial that reported ``epochs`` (genotype, val_ap)."""
    campaign = load_campaign(REPO / "experiments" / "smoke.yaml")
    record = make_record(campaign, tmp_path)
    record.folder.mkdir(parents=True)
    target = tracking.open_campaign(tracking.default_tracking_uri(tmp_path), campaign)
    record.parent_run_id = target.parent_run_id
    store.write_record(record)
    trial = campaign.trial({}, name=f"{campaign.campaign_id}-t1")
    run_id = tracking.open_trial(target, campaign.campaign_id, "t1", trial, trial.name)
    row = {**new_row(campaign.campaign_id, "t1", trial, campaign.objectives[0]), "run_id": run_id}
    for epoch, (genotype, val_ap) in enumerate(epochs):
        metrics = {"epoch": epoch, "val_ap": val_ap, "macs": float(genotype.macs)}
        fp = tracking.log_epoch(
            target.tracking_uri, run_id, metrics, {"genotype.json": genotype.to_json()}
        )
        row = update_with_result(row, {**metrics, "genotype_fp": fp}, campaign.objectives)
    row["status"] = "FINISHED"
    return record, [row]


def test_the_registered_genotype_is_the_one_the_rule_scored(tmp_path):
    a, b = genotypes()
    record, rows = campaign_with_one_trial(tmp_path, [(a, 0.5), (b, 0.3)])
    assert rows[0]["genotype_fp"] == b.fingerprint()  # the latest
    best = promote(record, rows, parse_rule("best:val_ap"), model_name="g", force=True)
    assert best.genotype_fp == a.fingerprint() and best.value == 0.5
    c = tracking.client(record.tracking_uri)
    version = c.get_model_version("g", best.version)
    assert version.tags["nfs.epoch"] == "0" and version.tags["nfs.value"] == "0.5"
    assert version.tags["nfs.genotype_fp"] == a.fingerprint()
    latest = promote(
        record, rows, parse_rule("best:macs"), model_name="g", alias="small", force=True
    )
    assert latest.genotype_fp == b.fingerprint()
    assert c.get_model_version("g", latest.version).tags["nfs.epoch"] == "latest"


def test_alias_history_records_every_move(tmp_path):
    a, b = genotypes()
    record, rows = campaign_with_one_trial(tmp_path, [(a, 0.5), (b, 0.3)])
    first = promote(record, rows, parse_rule("best:val_ap"), model_name="g", force=True)
    second = promote(record, rows, parse_rule("best:macs"), model_name="g", force=True)
    again = promote(record, rows, parse_rule("best:macs"), model_name="g", force=True)
    assert first.previous is None and second.previous == first.version
    assert not again.created and again.previous is None  # nothing moved
    history = tracking.alias_history(record.tracking_uri, "g", "champion")
    assert [(h["version"], h["previous"]) for h in history] == [
        (first.version, None),
        (second.version, first.version),
    ]


def test_a_trial_without_a_genotype_for_its_best_epoch_is_refused(tmp_path):
    a, _ = genotypes()
    record, rows = campaign_with_one_trial(tmp_path, [(a, 0.5)])
    rows[0]["best_genotypes_json"] = '{"val_ap": [0, null]}'
    with pytest.raises(PromoteError, match="no genotype was recorded"):
        promote(record, rows, parse_rule("best:val_ap"), model_name="g", force=True)


def test_an_undecided_genotype_is_refused_unless_forced(tmp_path):
    a, b = genotypes()  # the golden genotype: 24 % of its decisions have a margin ≥ 0.05
    record, rows = campaign_with_one_trial(tmp_path, [(a, 0.5), (b, 0.3)])
    with pytest.raises(PromoteError, match=r"undecided: .*--force"):
        promote(record, rows, parse_rule("best:val_ap"), model_name="g")
    forced = promote(record, rows, parse_rule("best:val_ap"), model_name="g", force=True)
    c = tracking.client(record.tracking_uri)
    assert c.get_model_version("g", forced.version).tags[tracking.TAG_UNDECIDED] == "true"


def test_a_consensus_of_one_seed_is_refused(tmp_path):
    a, _ = genotypes()
    record, rows = campaign_with_one_trial(tmp_path, [(a, 0.5)])
    with pytest.raises(PromoteError, match="configuration has no other finished seed"):
        promote(record, rows, parse_rule("best:val_ap"), model_name="g", consensus=True)
    assert not tracking.client(record.tracking_uri).search_registered_models()


def test_the_rule_defaults_to_the_primary_objective_and_names_real_metrics(tmp_path):
    from nfs_orchestrator.orchestration.promote import campaign_rule

    a, _ = genotypes()
    record, _ = campaign_with_one_trial(tmp_path, [(a, 0.5)])
    assert campaign_rule(record, None).text == "best:val_ap:max"
    assert campaign_rule(record, "pareto:val_ap@macs<=5e9").constraint == ("macs", "<=", 5e9)
    with pytest.raises(PromoteError, match=r"'val_AP' is not reported .*did you mean 'val_ap'"):
        campaign_rule(record, "best:val_AP")
