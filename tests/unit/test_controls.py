"""The controls of a champion: the uniform baseline and matched-size random genotypes are what
they claim, the arms' retrain specs differ only in the genotype (and seed), and the verdict
says "beats" only when the difference is larger than the seed spread."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from nfs_orchestrator import baselines
from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.geometry import fabric_sites
from nfs_orchestrator.orchestration.controls import (
    champion_label,
    control_jobs,
    controls_id,
    format_controls,
)
from nfs_orchestrator.specs import load_retrain

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "genotype_tiny_coco-p3.json"


def champion() -> Genotype:
    return Genotype.from_json(GOLDEN.read_text())


def test_uniform_baseline_is_a_regular_fabric_of_convolutions():
    g = champion()
    uniform = baselines.uniform_genotype(g)
    assert uniform.space.ops == g.space.ops and uniform.grouping == g.grouping
    for part in uniform.parts:
        for cell in part.cells:
            assert set(cell.ops) == {"sep_conv_3x3"}
            assert len(cell.inputs) >= 1
    # every cell of the fabric is kept (all inputs kept: every cell reaches the output)
    sites = sum(len(layer) for layer in fabric_sites(g.space))
    assert all(len(p.cells) == sites for p in uniform.parts)
    assert uniform.params and uniform.macs


def test_random_genotypes_are_distinct_and_matched_in_size():
    g = champion()
    randoms = baselines.random_genotypes(g, 2, seed=0)
    fps = {r.fingerprint() for r in randoms}
    assert len(randoms) == 2 and len(fps) == 2 and g.fingerprint() not in fps
    for r in randoms:
        assert abs(r.params - g.params) / g.params <= baselines.SIZE_TOLERANCE
    again = baselines.random_genotypes(g, 2, seed=0)
    assert [r.fingerprint() for r in again] == [r.fingerprint() for r in randoms]


def test_arms_differ_only_in_the_genotype():
    spec = load_retrain(REPO / "experiments" / "retrain_quickstart.yaml")
    g = champion()
    arms = [("champion", g), ("uniform", baselines.uniform_genotype(g))]
    jobs = control_jobs(spec, arms, seeds=2)
    assert [(j.arm, j.seed) for j in jobs] == [
        ("champion", 0),
        ("uniform", 0),
        ("champion", 1),
        ("uniform", 1),
    ]
    by_seed = {}
    for job in jobs:
        by_seed.setdefault(job.seed, set()).add(job.spec.fingerprint())
    assert all(len(fps) == 1 for fps in by_seed.values())  # same spec within a seed
    assert jobs[0].spec == spec  # the first seed is the spec itself
    assert jobs[0].genotype is g and jobs[1].genotype is not g


def test_verdict_needs_more_than_the_spread():
    clear = baselines.summarize(
        {"champion": [0.30, 0.31], "uniform": [0.20, 0.21], "random-1": [0.10, 0.12]}, "max"
    )
    assert "beats every control" in baselines.verdict(clear, "val_ap", "max")
    close = baselines.summarize({"champion": [0.30, 0.20], "uniform": [0.24, 0.25]}, "max")
    sentence = baselines.verdict(close, "val_ap", "max")
    assert "does not beat uniform" in sentence and "not shown" in sentence
    worse = baselines.summarize({"champion": [0.02, 0.03], "uniform": [0.14, 0.17]}, "max")
    assert "is worse than uniform" in baselines.verdict(worse, "val_ap", "max")
    lower = baselines.summarize({"champion": [0.02, 0.03], "uniform": [0.14, 0.17]}, "min")
    assert "beats every control" in baselines.verdict(lower, "val_loss", "min")
    entry = close[0]
    assert entry["mean"] == 0.25 and abs(entry["spread"] - 0.0707107) < 1e-6


def test_a_set_of_controls_is_named_by_what_it_retrains():
    spec = load_retrain(REPO / "experiments" / "retrain_quickstart.yaml")
    g = champion()
    uniform = baselines.uniform_genotype(g)
    arms = [("champion", g), ("uniform", uniform)]
    same = controls_id(control_jobs(spec, arms, seeds=2))
    assert same == controls_id(control_jobs(spec, arms, seeds=2))  # the same command resumes
    other_champion = [("champion", uniform), ("uniform", uniform)]  # e.g. promote --consensus
    others = [
        control_jobs(spec, other_champion, seeds=2),
        control_jobs(spec, arms, seeds=3),
        control_jobs(replace(spec, epochs=spec.epochs + 1), arms, seeds=2),
    ]
    assert len({same, *(controls_id(jobs) for jobs in others)}) == 4


def test_the_table_says_which_champion_it_retrained():
    g = champion()
    consensus = replace(g, confidence={**(g.confidence or {}), "consensus_of": 3})
    assert champion_label(g) == f"genotype {g.fingerprint()[:12]}, a trial's own"
    assert champion_label(consensus).endswith(", consensus of 3 seeds")
    arm = {"arm": "champion", "mean": 0.1, "spread": 0.01, "values": [0.09, 0.11]}
    body = {"metric": "val_ap", "seeds": 2, "arms": [arm], "verdict": "v"}
    body["champion"] = champion_label(consensus)
    assert "champion: genotype" in format_controls(body).splitlines()[0]
    assert "consensus of 3 seeds" in format_controls(body).splitlines()[0]
