"""One-shot selection (search/one_shot.py, ``search.selection: one_shot``): random search with
weight sharing keeps, per part, the drawn single-input path whose part scores best."""

from __future__ import annotations

import pytest
import torch

from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.geometry import SLOTS
from nfs_orchestrator.keypoints import load_grouping
from nfs_orchestrator.nn.backbones import build_backbone
from nfs_orchestrator.nn.supernet import PoseSupernet
from nfs_orchestrator.runtime import LocalRuntime
from nfs_orchestrator.search.loop import STATE_FILE, run_search
from nfs_orchestrator.search.one_shot import ONE_HOT, select_inputs
from nfs_orchestrator.specs import load_fabric
from tests.conftest import tiny_trial

BELOW, PARALLEL = SLOTS.index("below"), SLOTS.index("parallel")


def supernet() -> PoseSupernet:
    model = PoseSupernet(
        load_fabric("tiny"), load_grouping("coco-p3"), build_backbone("tiny", random_init=True)
    )
    model.sample_inputs = True
    return model


def replayed(model: PoseSupernet, candidates: int, seed: int) -> dict[str, list[torch.Tensor]]:
    """The slots each candidate gives each part: the draws ``select_inputs`` makes."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, list[torch.Tensor]] = {name: [] for name in model.parts}
    for _ in range(candidates):
        for name, fabric in model.parts.items():
            out[name].append(torch.randint(3, (fabric.beta.shape[0],), generator=g))
    return out


def test_each_part_keeps_its_own_best_candidate_and_beta_is_left_as_it_was():
    """A score that rewards reading the coarser input for one part and the cell's own row for
    another: each part keeps the drawn candidate that does most of what its score rewards
    (ties: the earlier one), its score and lead over the runner-up are reported, and the
    supernet's β are untouched."""
    model = supernet()
    with torch.no_grad():
        for fabric in model.parts.values():
            fabric.beta.normal_()
    before = {name: f.beta.detach().clone() for name, f in model.parts.items()}
    reads = {"head": BELOW, "upper_limb": PARALLEL, "lower_limb": BELOW}

    def score(m) -> dict[str, float]:
        return {
            name: float((f.beta.argmax(-1) == reads[name]).sum()) for name, f in m.parts.items()
        }

    chosen, metrics = select_inputs(model, score, candidates=12, seed=3)
    draws = replayed(model, 12, 3)
    for name, slots in draws.items():
        counts = [int((s == reads[name]).sum()) for s in slots]
        best = counts.index(max(counts))  # the first of the best
        assert torch.equal(chosen[name].argmax(-1), slots[best]), name
        assert metrics[f"one_shot_score.{name}"] == max(counts)
        assert metrics[f"one_shot_gap.{name}"] == max(counts) - sorted(counts)[-2]
        assert torch.equal(model.parts[name].beta, before[name])
        # one-hot: the kept slot ONE_HOT above the others, so softmax reads it alone
        assert torch.allclose(chosen[name].max(-1).values - chosen[name].min(-1).values,
                              torch.full((len(slots[best]),), ONE_HOT))  # fmt: skip


def test_one_candidate_has_no_lead_and_a_mixture_supernet_is_refused():
    model = supernet()
    _, metrics = select_inputs(model, lambda m: dict.fromkeys(m.parts, 0.5), 1, seed=0)
    assert all(metrics[f"one_shot_gap.{name}"] == 0.0 for name in model.parts)
    model.sample_inputs = False
    with pytest.raises(ValueError, match="input_sampling: mixed"):
        select_inputs(model, lambda m: dict.fromkeys(m.parts, 0.0), 2, seed=0)


def test_a_one_shot_search_writes_the_kept_paths_into_beta_and_the_genotype(
    tmp_path, synthetic_root, capsys
):
    """The loop (real validation): after the last epoch each part's β is the one-hot of one
    of the drawn candidates, the genotype keeps one input per cell, the selection's metrics
    and a progress line are reported, and a rerun keeps the same paths."""
    trial = tiny_trial(
        synthetic_root, mode="none", epochs=1, steps=2, input_sampling="gumbel",
        selection="one_shot", one_shot_candidates=4,
    )  # fmt: skip
    genotypes = []
    for run in ("a", "b"):
        metrics = run_search(trial, LocalRuntime(tmp_path / run, verbose=False))
        genotypes.append(
            Genotype.from_json((tmp_path / run / "artifacts/genotype.json").read_text())
        )
    parts = [p.name for p in trial.grouping.parts]
    assert {f"one_shot_score.{p}" for p in parts} | {f"one_shot_gap.{p}" for p in parts} <= set(
        metrics
    )
    assert "one-shot selection of 4 candidates" in capsys.readouterr().out
    state = torch.load(LocalRuntime(tmp_path / "a").latest_checkpoint() / STATE_FILE,
                       weights_only=True)  # fmt: skip
    draws = replayed(supernet(), 4, trial.seed)
    for name in parts:
        beta = state["model"][f"parts.{name}.beta"]
        assert any(torch.equal(beta.argmax(-1), slots) for slots in draws[name]), name
        assert torch.softmax(beta, -1).max(-1).values.min() > 0.999
    assert all(len(cell.inputs) == 1 for part in genotypes[0].parts for cell in part.cells)
    assert genotypes[0].fingerprint() == genotypes[1].fingerprint()
