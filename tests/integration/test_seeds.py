"""budget.seeds: every configuration Optuna suggests runs as several trials that differ only in
their seed (Tune's Repeater), each recorded in the ledger with its seed; compare reports how far
the seeds agree on the derived architecture, beside the chance level, and writes the seeds'
consensus genotype, which `promote --consensus` registers and `retrain` can read back.

Run inside a loopback-only network namespace (see test_campaign_smoke.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.confidence import consensus_genotype
from nfs_orchestrator.genotype import Genotype, read_genotype
from nfs_orchestrator.orchestration import tracking
from nfs_orchestrator.orchestration.compare import compare_campaign
from nfs_orchestrator.orchestration.ledger import read_ledger
from nfs_orchestrator.orchestration.model_refs import resolve_genotype
from nfs_orchestrator.orchestration.store import load_record
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

    # the consensus genotype: what the mean of the two trials' stored weights derives
    uri = tracking.default_tracking_uri(root)
    c = tracking.client(uri)
    own = [
        Genotype.from_json(
            Path(c.download_artifacts(r["run_id"], "genotype.json", str(tmp_path))).read_text()
        )
        for r in sorted(rows, key=lambda r: r["trial_id"])
    ]
    expected = consensus_genotype(own)
    assert group["consensus"]["fingerprint"] == expected.fingerprint()
    assert read_genotype(group["consensus"]["path"]).fingerprint() == expected.fingerprint()
    assert "consensus of the 2 seeds (mean α/β weights)" in comparison.text()
    parent = load_record(root, campaign.campaign_id).parent_run_id
    logged = [a.path for a in c.list_artifacts(parent, "compare/consensus")]
    assert logged == [f"compare/consensus/{Path(group['consensus']['path']).name}"]

    # promote --consensus registers it from the parent run; retrain's reader gets it back
    args = ["promote", campaign.campaign_id, "--root", str(root), "--consensus", "--force"]
    promoted = posenfs(args, tmp_path, ray_tmpdir)
    assert promoted.returncode == 0, promoted.stderr
    assert "consensus of trial" in promoted.stdout
    version = c.get_model_version_by_alias("posenfs-synthetic-genotypes", "champion")
    assert version.tags["nfs.consensus_of"] == ",".join(sorted(r["trial_id"] for r in rows))
    assert version.tags["nfs.source_run_id"] == parent and version.run_id == parent
    assert version.tags["nfs.genotype_fp"] == expected.fingerprint()
    genotype, lineage = resolve_genotype("models:/posenfs-synthetic-genotypes@champion", uri)
    assert genotype.fingerprint() == expected.fingerprint()
    assert genotype.confidence["consensus_of"] == 2
    assert genotype.input_size == own[0].input_size and genotype.params > 0  # measured
