"""budget.seeds: every configuration Optuna suggests runs as several trials that differ only in
their seed (Tune's Repeater), each recorded in the ledger with its seed; compare reports how far
the seeds agree on the derived architecture, beside the chance level.

Run inside a loopback-only network namespace (see test_campaign_smoke.py)."""

from __future__ import annotations

import pytest

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.orchestration.compare import compare_campaign
from nfs_orchestrator.orchestration.ledger import read_ledger
from tests.integration.helpers import one_worker_smoke, posenfs

pytestmark = pytest.mark.ray


def test_one_configuration_two_seeds(tmp_path, ray_tmpdir):
    spec_path = one_worker_smoke(tmp_path, "seeds", trials=2, epochs=2)
    overrides = ("budget.seeds=2",)
    campaign = load_campaign(spec_path, overrides)
    root = tmp_path / "runs"
    done = posenfs(
        ["search", str(spec_path), "--root", str(root), "--set", overrides[0]],
        tmp_path,
        ray_tmpdir,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = read_ledger(root / "campaigns" / campaign.campaign_id / "ledger.parquet")
    assert len(rows) == 2 and {r["status"] for r in rows} == {"FINISHED"}
    assert sorted(r["seed"] for r in rows) == [campaign.seed, campaign.seed + 1]
    assert len({r["params_json"] for r in rows}) == 1  # one configuration
    assert rows[0]["genotype_fp"] and rows[1]["genotype_fp"]
    comparison = compare_campaign(root, campaign.campaign_id)
    (group,) = comparison.seed_agreement
    assert group["seeds"] == 2 and 0.0 <= group["ops"] <= 1.0 and 0.0 <= group["inputs"] <= 1.0
    assert 0.0 < group["ops_chance"] < 1.0 and 0.0 < group["inputs_chance"] < 1.0
    assert 0 <= group["decided_equal"] <= group["decided_both"]  # 2 epochs: maybe none decided
    assert "agreement across seeds" in comparison.text() and "decided in both" in comparison.text()
