"""Genotype derivation by the written rule, JSON round trip, golden file, derived net size."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.genotype import Genotype, derive_genotype, read_genotype
from nfs_orchestrator.keypoints import load_grouping
from nfs_orchestrator.nn.backbones import build_backbone
from nfs_orchestrator.nn.counting import count_macs, count_params
from nfs_orchestrator.nn.derived import DerivedPoseNet
from nfs_orchestrator.nn.supernet import PoseSupernet
from nfs_orchestrator.specs import DerivationRule, load_fabric

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "genotype_tiny_coco-p3.json"


def argmax_tiny():
    """The tiny space with one input per cell (``inputs: argmax``; the shipped space keeps every
    map above a threshold): the rule these tests pin down, and the golden genotype's."""
    return dataclasses.replace(load_fabric("tiny"), derivation=DerivationRule(inputs="argmax"))


def hand_set_supernet() -> PoseSupernet:
    """tiny space with the argmax input rule (``argmax_tiny``), coco-p3, with α/β set by hand
    so the derivation is known exactly."""
    torch.manual_seed(0)
    net = PoseSupernet(
        argmax_tiny(), load_grouping("coco-p3"), build_backbone("tiny", random_init=True)
    )
    # ops: [zero, skip_connect, atr_conv_3x3, sep_conv_3x3]; sites in order:
    # (0,1) (1,1) (2,1) | (0,2) (1,2) | (0,3); slots: parallel, above, below
    with torch.no_grad():
        up = net.parts["upper_limb"]
        up.alpha.copy_(torch.tensor([[9.0, 1.0, 0.0, 2.0]]))  # zero is largest: never chosen
        up.beta.zero_()
        up.beta[5] = torch.tensor([0.0, 0.0, 5.0])  # output reads the stride-8 cell (1,2)
        up.beta[4] = torch.tensor([0.0, 5.0, 0.0])  # (1,2) reads the finer (0,1)
        up.beta[0] = torch.tensor([5.0, 0.0, 0.0])  # (0,1) reads pyramid level 0
        head = net.parts["head"]
        head.alpha.copy_(torch.tensor([[0.0, 0.0, 3.0, 0.0]]))
        lower = net.parts["lower_limb"]
        lower.alpha.copy_(torch.tensor([[0.0, 2.0, 0.0, 1.0]]))
    return net


def test_derivation_follows_the_rule():
    g = hand_set_supernet().genotype()
    up = g.parts[0]
    assert [(c.scale, c.depth, c.inputs, c.ops) for c in up.cells] == [
        (0, 1, ("parallel",), ("sep_conv_3x3",)),
        (1, 2, ("above",), ("sep_conv_3x3",)),
        (0, 3, ("below",), ("sep_conv_3x3",)),
    ]
    # ties (all β equal) keep the first slot: parallel, down the stride-4 row
    head = g.parts[1]
    assert [(c.scale, c.depth) for c in head.cells] == [(0, 1), (0, 2), (0, 3)]
    assert {c.ops for c in head.cells} == {("atr_conv_3x3",)}
    assert {c.ops for c in g.parts[2].cells} == {("skip_connect",)}


def test_a_map_read_by_two_slots_is_weighed_by_both():
    # At the top row "above" reads the parallel map again: the supernet mixes that map with
    # softmax(β)_parallel + softmax(β)_above (POSENFS-SPEC §1.3). β (0.3, 0.3, 0.4) on the
    # output cell (0,3): parallel map 0.6, below map 0.4, so the derivation keeps parallel.
    space, grouping = argmax_tiny(), load_grouping("coco-p1")
    beta = torch.zeros(6, 3)
    beta[5] = torch.log(torch.tensor([0.3, 0.3, 0.4]))
    alpha = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    g = derive_genotype(space, grouping, {grouping.parts[0].name: (alpha, beta)})
    out = [c for c in g.parts[0].cells if (c.scale, c.depth) == (0, 3)][0]
    assert out.inputs == ("parallel",)
    assert [(c.scale, c.depth) for c in g.parts[0].cells] == [(0, 1), (0, 2), (0, 3)]
    # (1,2) is not on the top row: its three slots read three maps, compared one by one
    beta[4] = torch.log(torch.tensor([0.3, 0.3, 0.4]))
    beta[5] = torch.log(torch.tensor([0.2, 0.2, 0.6]))  # below map 0.6 > parallel map 0.4
    g = derive_genotype(space, grouping, {grouping.parts[0].name: (alpha, beta)})
    kept = {(c.scale, c.depth): c.inputs for c in g.parts[0].cells}
    assert kept[(0, 3)] == ("below",) and kept[(1, 2)] == ("below",)
    # the threshold rule keeps each map once: uniform β at the top row keeps parallel + below
    rule = DerivationRule(ops="argmax_nonzero", inputs="threshold", beta_threshold=0.3)
    g = derive_genotype(
        dataclasses.replace(space, derivation=rule),
        grouping,
        {grouping.parts[0].name: (alpha, torch.zeros(6, 3))},
    )
    kept = {(c.scale, c.depth): c.inputs for c in g.parts[0].cells}
    assert kept[(0, 3)] == ("parallel", "below")
    assert kept[(1, 2)] == ("parallel", "above", "below")


def test_round_trip_and_golden_file():
    g = hand_set_supernet().genotype((64, 64), "tiny")
    again = Genotype.from_json(g.to_json())
    assert again == g and again.fingerprint() == g.fingerprint()
    golden = read_genotype(GOLDEN)
    assert golden.fingerprint() == g.fingerprint()  # the derivation and the JSON are stable
    assert json.loads(GOLDEN.read_text())["fingerprint"] == g.fingerprint()


def test_fingerprint_ignores_weights_and_sizes():
    g = hand_set_supernet().genotype()
    measured = g.with_size((64, 64), 1, 2)
    assert measured.fingerprint() == g.fingerprint()
    assert measured.to_json() != g.to_json()


def test_bad_files_are_clear_errors(tmp_path):
    body = json.loads(GOLDEN.read_text())
    body["schema_version"] = 99
    with pytest.raises(SpecError, match="schema_version 99 is not supported"):
        Genotype.from_json(json.dumps(body))
    with pytest.raises(SpecError, match="not valid JSON"):
        Genotype.from_json("{nope")
    body = json.loads(GOLDEN.read_text())
    body["parts"][0]["cells"][0]["ops"] = ["conv_9x9"]
    with pytest.raises(SpecError, match="do not fit space"):
        Genotype.from_json(json.dumps(body))
    body = json.loads(GOLDEN.read_text())
    body["parts"][0]["cells"][0]["ops"] = ["skip_connect"]  # edited, fingerprint kept
    with pytest.raises(SpecError, match="does not match its content"):
        Genotype.from_json(json.dumps(body))


def test_derived_network_is_really_smaller():
    net = hand_set_supernet()
    g = net.genotype((64, 64), "tiny")
    derived = DerivedPoseNet(g, build_backbone("tiny", random_init=True))
    x = torch.randn(2, 3, 64, 64)
    assert derived(x).shape == net(x).shape
    assert count_params(derived) < count_params(net)
    assert count_macs(derived, (64, 64)) < count_macs(net, (64, 64))
    assert g.params == count_params(derived) and g.macs == count_macs(derived, (64, 64))
    # dropped cells are absent, not zeroed: 3 of 6 cells per part here
    assert len(derived.parts["upper_limb"].cells) == 3
    assert "s2_d1" not in derived.parts["upper_limb"].cells
    derived(x).sum().backward()
    assert all(p.grad is not None for p in derived.parts.parameters())  # every kept module runs
