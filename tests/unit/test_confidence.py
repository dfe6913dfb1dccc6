"""Confidence of a genotype: exact margins from hand-made α/β, summary figures, flip share,
old (schema 1) genotype files still load and keep their fingerprint."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nfs_orchestrator.confidence import (
    chance_levels,
    confidence_metrics,
    confidence_of,
    consensus,
    consensus_genotype,
    decisions,
    entropy_drop,
    flip_share,
    format_confidence,
    input_decision,
    is_undecided,
    seed_agreement,
    undecided_cells,
    with_confidence,
)
from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.genotype import (
    SCHEMA_VERSION,
    Genotype,
    derive_genotype,
    kept_slots,
    read_genotype,
)
from nfs_orchestrator.specs import DerivationRule, load_fabric

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "genotype_tiny_coco-p3.json"
UNIFORM_BETA = [[1 / 3, 1 / 3, 1 / 3]] * 6
ARGMAX = DerivationRule(inputs="argmax")
THRESHOLD = DerivationRule(inputs="threshold", beta_threshold=0.3)
TOP2 = DerivationRule(inputs="top2")


def cell(row: list[float], sources: tuple[int, int, int], rule: DerivationRule):
    """(kept source rows, margin) of one cell under ``rule``, as the derivation keeps it."""
    return input_decision(row, sources, kept_slots(row, sources, rule), rule)


def golden_with(weights: dict) -> Genotype:
    """The golden genotype (tiny space, coco-p3) with hand-made softmax weights. Its cells:
    upper_limb (0,1) parallel, (1,2) above, (0,3) below; head and lower_limb the stride-4 row."""
    return replace(read_genotype(GOLDEN), arch_weights=weights)


def test_margins_are_exact():
    # ops [zero, skip_connect, atr_conv_3x3, sep_conv_3x3]; tiny sites in β order:
    # (0,1) reads rows (0,0,1), (1,1) (1,0,2), (2,1) (2,1,3), (0,2) (0,0,1), (1,2) (1,0,2),
    # (0,3) (0,0,1): at the top row "above" reads the same map as "parallel".
    upper_beta = [
        [0.5, 0.3, 0.2],  # (0,1) kept parallel: source 0 = mean 0.4 vs source 1 0.2 → 0.2
        [1 / 3, 1 / 3, 1 / 3],
        [1 / 3, 1 / 3, 1 / 3],
        [1 / 3, 1 / 3, 1 / 3],
        [0.2, 0.7, 0.1],  # (1,2) kept above (row 0): 0.7 vs max(0.2, 0.1) → 0.5
        [0.1, 0.1, 0.8],  # (0,3) kept below (row 1): 0.8 vs 0.1 + 0.1 → 0.6 (the lead by
    ]  # summed weight, which the derivation compares; by mean slot weight it would be 0.7)
    g = golden_with(
        {
            "upper_limb": {"alpha": [[0.7, 0.05, 0.1, 0.15]], "beta": upper_beta},
            "head": {"alpha": [[0.1, 0.2, 0.3, 0.4]], "beta": UNIFORM_BETA},
            "lower_limb": {"alpha": [[0.0, 0.34, 0.33, 0.33]], "beta": UNIFORM_BETA},
        }
    )
    c = confidence_of(g, temperature=1.0)
    up = c["parts"]["upper_limb"]
    # zero (0.7) is no contender: sep 0.15 vs atr 0.10
    assert up["edges"] == [{"edge": 0, "op": "sep_conv_3x3", "margin": pytest.approx(0.05)}]
    kept = {(x["scale"], x["depth"]): x for x in up["cells"] if x["in_genotype"]}
    assert kept[(0, 1)]["margin"] == pytest.approx(0.2) and kept[(0, 1)]["sources"] == [0]
    assert kept[(1, 2)]["margin"] == pytest.approx(0.5) and kept[(1, 2)]["sources"] == [0]
    assert kept[(0, 3)]["margin"] == pytest.approx(0.6) and kept[(0, 3)]["sources"] == [1]
    assert c["parts"]["head"]["edges"][0]["margin"] == pytest.approx(0.1)
    assert c["parts"]["lower_limb"]["edges"][0]["margin"] == pytest.approx(0.01)
    # uniform β: no margin, also where two slots read one map (the 2:1 mix is a prior)
    head = {(x["scale"], x["depth"]): x["margin"] for x in c["parts"]["head"]["cells"]}
    assert head[(0, 1)] == pytest.approx(0.0) and head[(1, 1)] == pytest.approx(0.0)
    # 3 edges + 3 parts × 6 cells = 21 decisions
    assert c["decisions"] == 21
    margins = [e["margin"] for p in c["parts"].values() for e in p["edges"] + p["cells"]]
    assert c["decided_share"] == pytest.approx(sum(m >= 0.05 for m in margins) / 21)
    ops_drop = [1 - (-sum(p * math.log(p) for p in r if p > 0)) / math.log(4) for r in (
        [0.7, 0.05, 0.1, 0.15], [0.1, 0.2, 0.3, 0.4], [0.0, 0.34, 0.33, 0.33])]  # fmt: skip
    assert c["alpha_entropy_drop"] == pytest.approx(sum(ops_drop) / 3, abs=1e-6)


def test_a_map_kept_by_the_two_slot_prior_has_a_negative_margin():
    # top-row cell (0,1) reads rows (0, 0, 1): the parallel map sums 0.6 and is kept (as the
    # derivation keeps it), but per slot the search leaned to below: margin 0.3 - 0.4
    chosen, margin = cell([0.3, 0.3, 0.4], (0, 0, 1), ARGMAX)
    assert chosen == (0,) and margin == pytest.approx(-0.1)
    space = replace(load_fabric("tiny"), derivation=ARGMAX)
    weights = {"p": {"alpha": [[0.1, 0.2, 0.3, 0.4]], "beta": [[0.3, 0.3, 0.4]] + UNIFORM_BETA[1:]}}
    assert decisions(space, weights)["p/cell(0,1)"] == (0,)
    # below kept: a margin is the smaller of the two leads, so a map that leads by mean slot
    # weight (0.55 − 0.225) but barely beats the two slots' sum (0.55 − 0.45) is near its flip
    chosen, margin = cell([0.225, 0.225, 0.55], (0, 0, 1), ARGMAX)
    assert chosen == (1,) and margin == pytest.approx(0.1)


def test_threshold_decisions_are_the_kept_sets_and_their_distance_from_the_threshold():
    # (1,1) reads rows (1, 0, 2): sums 0.45, 0.45, 0.1 keep rows 0 and 1; the nearest sum to
    # the threshold 0.3 is 0.1 or 0.45, both 0.15 away
    assert cell([0.45, 0.45, 0.1], (1, 0, 2), THRESHOLD) == ((0, 1), pytest.approx(0.15))
    # uniform β keeps all three maps of (1,1), 1/3 − 0.3 from the line: undecided
    chosen, margin = cell(UNIFORM_BETA[0], (1, 0, 2), THRESHOLD)
    assert chosen == (0, 1, 2) and margin == pytest.approx(1 / 3 - 0.3) and margin < 0.05
    # top row (0, 0, 1): the parallel map sums 0.8, below 0.2 (0.1 under the line): one map
    assert cell([0.4, 0.4, 0.2], (0, 0, 1), THRESHOLD) == ((0,), pytest.approx(0.1))
    # the decisions compared across epochs and seeds are the space's rule's kept sets
    space = load_fabric("tiny")
    assert space.derivation == THRESHOLD  # the shipped space; the argmax test above replaces it
    weights = {"p": {"alpha": [[0.1, 0.2, 0.3, 0.4]], "beta": [UNIFORM_BETA[0]] * 6}}
    got = decisions(space, weights)
    assert got["p/cell(1,1)"] == (0, 1, 2) and got["p/cell(0,1)"] == (0, 1)
    # chance: a two-map cell has 3 kept sets under the threshold (2 under argmax), a three-map
    # cell 7 (3); tiny has three cells of each
    assert chance_levels(space)["inputs"] == pytest.approx((3 * (1 / 3) + 3 * (1 / 7)) / 6)
    assert chance_levels(replace(space, derivation=ARGMAX))["inputs"] == pytest.approx(
        (3 * (1 / 2) + 3 * (1 / 3)) / 6
    )


def test_top2_keeps_two_maps_and_decides_only_where_there_are_three():
    # (1,1) reads rows (1, 0, 2): keeps rows 1 and 0 (0.5, 0.3); margin = 0.3 − 0.2
    assert cell([0.5, 0.3, 0.2], (1, 0, 2), TOP2) == ((0, 1), pytest.approx(0.1))
    assert kept_slots([0.5, 0.3, 0.2], (1, 0, 2), TOP2) == ("parallel", "above")
    # ties keep the earlier slot; uniform β is undecided (margin 0)
    assert cell(UNIFORM_BETA[0], (1, 0, 2), TOP2) == ((0, 1), pytest.approx(0.0))
    # a top-row cell reads two maps: both kept, nothing decided
    assert kept_slots([0.1, 0.1, 0.8], (0, 0, 1), TOP2) == ("parallel", "below")
    assert cell([0.1, 0.1, 0.8], (0, 0, 1), TOP2) is None
    space = replace(load_fabric("tiny"), derivation=TOP2)
    weights = {"p": {"alpha": [[0.1, 0.2, 0.3, 0.4]], "beta": [[0.2, 0.7, 0.1]] * 6}}
    got = decisions(space, weights)
    assert sorted(got) == ["p/cell(1,1)", "p/cell(1,2)", "p/cell(2,1)", "p/edge0"]
    assert got["p/cell(2,1)"] == (1, 2)  # rows (2, 1, 3): parallel 0.2 and above 0.7 kept
    # chance: the three three-map cells have 3 pairs each; the two-map cells decide nothing
    assert chance_levels(space)["inputs"] == pytest.approx(1 / 3)
    # uniform β: every kept cell reads two maps (ties: parallel and above), so only (2,1),
    # which (1,2) no longer reads, drops out
    grouping = read_genotype(GOLDEN).grouping
    arch = {part.name: (torch.zeros(1, 4), torch.zeros(6, 3)) for part in grouping.parts}
    for part in derive_genotype(space, grouping, arch).parts:
        assert [(c.scale, c.depth) for c in part.cells] == [(0, 1), (1, 1), (0, 2), (1, 2), (0, 3)]
        assert all(c.inputs in (("parallel", "above"), ("parallel", "below")) for c in part.cells)


def test_argmax_parallel_keeps_the_own_scale_map_and_decides_the_strongest():
    rule = DerivationRule(inputs="argmax_parallel")
    # (1,1) reads rows (1, 0, 2): below (row 2) strongest, kept beside parallel (row 1)
    assert kept_slots([0.2, 0.2, 0.6], (1, 0, 2), rule) == ("parallel", "below")
    assert cell([0.2, 0.2, 0.6], (1, 0, 2), rule) == ((1, 2), pytest.approx(0.4))
    # parallel strongest: one map; the margin is its lead, as argmax's
    assert kept_slots([0.5, 0.3, 0.2], (1, 0, 2), rule) == ("parallel",)
    assert cell([0.5, 0.3, 0.2], (1, 0, 2), rule) == ((1,), pytest.approx(0.2))
    # top row (0, 0, 1): the parallel map sums 0.6 > 0.4 and is kept alone, against the lean
    assert cell([0.3, 0.3, 0.4], (0, 0, 1), rule) == ((0,), pytest.approx(-0.1))
    # decisions follow argmax one to one, so agreement and chance are argmax's
    space = replace(load_fabric("tiny"), derivation=rule)
    weights = {"p": {"alpha": [[0.1, 0.2, 0.3, 0.4]], "beta": [[0.2, 0.2, 0.6]] * 6}}
    assert decisions(space, weights)["p/cell(2,1)"] == (2, 3)
    argmax_space = replace(space, derivation=ARGMAX)
    assert chance_levels(space) == chance_levels(argmax_space)
    assert decisions(argmax_space, weights)["p/cell(2,1)"] == (3,)
    # every kept cell reads its own row: the output row's chain is always there
    grouping = read_genotype(GOLDEN).grouping
    beta = torch.tensor([[0.0, 0.0, 2.0]] * 6)  # every cell leans to below
    arch = {part.name: (torch.zeros(1, 4), beta) for part in grouping.parts}
    for part in derive_genotype(space, grouping, arch).parts:
        assert all(c.inputs[0] == "parallel" for c in part.cells)
        assert (0, 1) in {(c.scale, c.depth) for c in part.cells}


def test_uniform_weights_are_undecided_and_say_why():
    uniform = {"alpha": [[0.25] * 4], "beta": UNIFORM_BETA}
    g = with_confidence(golden_with({p: uniform for p in ("upper_limb", "head", "lower_limb")}))
    c = g.confidence
    assert c["alpha_entropy_drop"] == pytest.approx(0.0, abs=1e-9)
    assert c["beta_entropy_drop"] == pytest.approx(0.0, abs=1e-9)
    undecided, why = is_undecided(g)
    assert undecided and "undecided" in why
    assert confidence_metrics(g)["undecided"] == 1.0
    assert {"confidence_decided", "margin_median", "alpha_entropy_drop", "beta_entropy_drop",
            "flip_share", "undecided"} == set(confidence_metrics(g))  # fmt: skip
    assert ("head", 0, 1) in undecided_cells(g)  # α undecided: every kept cell is marked
    assert "UNDECIDED" in format_confidence(g)


def test_clear_weights_are_decided():
    sharp = {"alpha": [[0.01, 0.01, 0.01, 0.97]], "beta": [[0.9, 0.05, 0.05]] * 6}
    g = with_confidence(golden_with({p: sharp for p in ("upper_limb", "head", "lower_limb")}))
    assert is_undecided(g)[0] is False
    assert entropy_drop(sharp["alpha"]) > 0.8


def test_flip_share_counts_changes_in_the_last_half():
    space = load_fabric("tiny")

    def snap(op_col: int) -> dict:
        alpha = [0.1] * 4
        alpha[op_col] = 0.7
        return {"p": {"alpha": [alpha], "beta": [[0.6, 0.2, 0.2]] * 6}}

    # 4 epochs: the window is epochs 2 and 3; the op flips there (sep → atr); no cell flips
    history = [snap(3), snap(3), snap(3), snap(2)]
    assert flip_share(space, history) == pytest.approx(1 / 7)
    assert flip_share(space, [snap(2), snap(3), snap(3), snap(3)]) == 0.0  # before the window
    assert flip_share(space, history[:1]) == 0.0


def test_old_genotype_files_load_and_keep_their_fingerprint(tmp_path):
    old = json.loads(GOLDEN.read_text())
    assert old["schema_version"] == 1 and "confidence" not in old
    g = read_genotype(GOLDEN)
    assert g.schema_version == 1 and g.confidence is None
    assert g.fingerprint() == old["fingerprint"]
    # judged from its stored arch_weights (T = 1), and shown
    assert isinstance(is_undecided(g)[0], bool)
    assert "recomputed from arch_weights" in format_confidence(g)
    # the same architecture at version 2 with a confidence record: same fingerprint
    new = with_confidence(replace(g, schema_version=SCHEMA_VERSION))
    assert new.fingerprint() == g.fingerprint()
    again = Genotype.from_json(new.to_json())
    assert again == new and again.confidence["decisions"] == 21
    path = tmp_path / "g.json"
    path.write_text(new.to_json())
    assert read_genotype(path).confidence == new.confidence


def test_seed_agreement_counts_what_both_seeds_decided():
    space = replace(read_genotype(GOLDEN).space, derivation=THRESHOLD)  # uniform β keeps all

    def seed(weights: dict) -> Genotype:
        return replace(golden_with(dict.fromkeys(parts, weights)), space=space)

    uniform = {"alpha": [[0.25] * 4], "beta": UNIFORM_BETA}
    parts = ("upper_limb", "head", "lower_limb")
    got = seed_agreement([seed(uniform), seed(uniform)])
    # two searches that never moved agree on every decision, and decided none of them
    assert got["ops"] == 1.0 and got["inputs"] == 1.0
    assert got["decided_both"] == 0 and got["decided_equal"] == 0
    assert got["inputs_chance"] == pytest.approx(chance_levels(space)["inputs"])

    # seed A: sep3 clearly, every cell reads its first slot's map; seed B the same except
    # one decided cell (1,1) reads its third map, and α is a near-tie that still picks sep3
    sharp_row, other_row = [0.9, 0.05, 0.05], [0.05, 0.05, 0.9]
    a = {"alpha": [[0.01, 0.01, 0.01, 0.97]], "beta": [sharp_row] * 6}
    b_beta = [sharp_row] * 6
    b_beta[1] = other_row  # β rows follow fabric_sites: (0,1), (1,1), (2,1), (0,2), ...
    b = {"alpha": [[0.0, 0.33, 0.33, 0.34]], "beta": b_beta}
    got = seed_agreement([seed(a), seed(b)])
    assert got["ops"] == 1.0  # the same op, though B's margin (0.01) is not decided
    assert got["inputs"] == pytest.approx(5 / 6)  # one cell of six differs, in each part
    assert got["all"] == pytest.approx(6 / 7)  # and the op agrees: 6 of 7 decisions per part
    # chance of all decisions: the op (1 of 3 non-zero ops) and six cells, three reading two
    # maps (3 kept sets under the threshold) and three reading three (7)
    assert got["all_chance"] == pytest.approx((1 / 3 + 3 / 3 + 3 / 7) / 7)
    # decided in both: the 6 cells of each part (the op is undecided in B): 15 of 18 equal
    assert got["decided_both"] == 18 and got["decided_equal"] == 15
    assert decisions(space, {"p": a}, min_margin=0.05) == decisions(space, {"p": a})  # all
    assert "p/edge0" not in decisions(space, {"p": b}, min_margin=0.05)


def test_consensus_is_the_entrywise_mean_and_reads_as_one_run():
    space = replace(read_genotype(GOLDEN).space, derivation=THRESHOLD)
    a = {"p": {"alpha": [[0.1, 0.1, 0.2, 0.6]], "beta": [[0.8, 0.1, 0.1]] * 6}}
    b = {"p": {"alpha": [[0.1, 0.5, 0.2, 0.2]], "beta": [[0.2, 0.1, 0.7]] * 6}}
    mean = consensus([a, b])
    assert mean["p"]["alpha"] == [pytest.approx([0.1, 0.3, 0.2, 0.4])]
    assert mean["p"]["beta"] == [pytest.approx([0.5, 0.1, 0.4])] * 6
    # a's and b's ops differ; their consensus keeps a's, the larger mean weight
    assert decisions(space, mean)["p/edge0"] == decisions(space, a)["p/edge0"]
    assert decisions(space, mean)["p/edge0"] != decisions(space, b)["p/edge0"]


def derived_from(weights: dict, sharing: str = "part") -> Genotype:
    """The genotype that softmax weights {part: {"alpha": rows, "beta": rows}} derive on the
    golden's space (threshold rule) and grouping (logits = log weights)."""
    golden = read_genotype(GOLDEN)
    space = replace(golden.space, derivation=THRESHOLD, alpha_sharing=sharing)
    arch = {}
    for part, w in weights.items():
        alpha = torch.tensor(w["alpha"]).log()
        alpha = alpha.reshape(6, 1, 4) if sharing == "cell" else alpha
        arch[part] = (alpha, torch.tensor(w["beta"]).log())
    return derive_genotype(space, golden.grouping, arch, backbone=golden.backbone)


@pytest.mark.parametrize("sharing", ["part", "cell"])
def test_the_consensus_of_one_search_repeated_is_its_genotype(sharing):
    g = torch.Generator().manual_seed(3)
    rows = 6 if sharing == "cell" else 1
    weights = {
        part: {
            "alpha": torch.rand(rows, 4, generator=g).softmax(-1).tolist(),
            "beta": torch.rand(6, 3, generator=g).softmax(-1).tolist(),
        }
        for part in ("upper_limb", "head", "lower_limb")
    }
    one = derived_from(weights, sharing)
    both = consensus_genotype([one, one])
    assert both.fingerprint() == one.fingerprint()
    assert both.confidence["consensus_of"] == 2 and both.confidence["epochs_seen"] == 0
    assert both.confidence["parts"] == confidence_of(one)["parts"]
    assert "the mean weights of 2 searches" in format_confidence(both)
    assert "flips" not in is_undecided(both)[1]  # no epochs, no flips to report
    sized = replace(one, input_size=(64, 48))  # where the searches measured: kept, if common
    assert consensus_genotype([sized, sized]).input_size == (64, 48)
    assert consensus_genotype([sized, one]).input_size is None


def test_the_consensus_genotype_is_what_the_mean_weights_derive():
    parts = ("upper_limb", "head", "lower_limb")
    a = {p: {"alpha": [[0.1, 0.1, 0.2, 0.6]], "beta": [[0.8, 0.1, 0.1]] * 6} for p in parts}
    b = {p: {"alpha": [[0.1, 0.5, 0.2, 0.2]], "beta": [[0.2, 0.1, 0.7]] * 6} for p in parts}
    ga, gb = derived_from(a), derived_from(b)
    c = consensus_genotype([ga, gb])
    space = ga.space
    assert decisions(space, c.arch_weights) == decisions(space, consensus([a, b]))
    # the ops split (a: sep_conv 0.6, b: skip 0.5); the mean (0.4 against 0.3) keeps a's
    assert {op for p in c.parts for cell in p.cells for op in cell.ops} == {"sep_conv_3x3"}
    assert decisions(space, c.arch_weights)["head/edge0"] == ("sep_conv_3x3",)
    # where the searches split the consensus is less sure than either search
    (edge,) = c.confidence["parts"]["head"]["edges"]
    assert edge["margin"] == pytest.approx(0.1, abs=1e-5)  # a: 0.4, b: 0.3
    assert ga.fingerprint() != c.fingerprint() != gb.fingerprint()


def test_only_searches_of_one_configuration_make_a_consensus():
    golden = read_genotype(GOLDEN)
    other = replace(golden, space=replace(golden.space, derivation=THRESHOLD))
    with pytest.raises(SpecError, match="genotype 1 .* has another space"):
        consensus_genotype([golden, other])
    with pytest.raises(SpecError, match="genotype 1 .* has no α/β weights"):
        consensus_genotype([golden, replace(golden, arch_weights={})])
