"""The promotion rule: pure selection over ledger rows, ties and missing metrics explicit."""

from __future__ import annotations

import pytest

from nfs_orchestrator.orchestration.promote import PromoteError, parse_rule, select_trial


def row(trial_id, status="FINISHED", fp="f", **metrics):
    base = {
        "trial_id": trial_id,
        "status": status,
        "genotype_fp": fp,
        "final_json": "{}",
        "val_ap": None,
        "val_loss": None,
        "macs": None,
    }
    base.update(metrics)
    return base


def test_best_picks_the_highest_ap_among_finished_trials():
    rows = [
        row("a", val_ap=0.4),
        row("b", val_ap=0.6),
        row("c", status="RUNNING", val_ap=0.9),
        row("d", status="FAILED", val_ap=0.95),
        row("e", fp=None, val_ap=0.99),
    ]
    assert select_trial(rows, parse_rule("best:val_ap"))["trial_id"] == "b"


def test_loss_and_size_metrics_default_to_min():
    rows = [row("a", val_loss=0.2), row("b", val_loss=0.1)]
    assert parse_rule("best:val_loss").mode == "min"
    assert select_trial(rows, parse_rule("best:val_loss"))["trial_id"] == "b"
    assert select_trial(rows, parse_rule("best:val_loss:max"))["trial_id"] == "a"


def test_ties_go_to_fewer_macs_then_trial_id():
    rows = [
        row("b", val_ap=0.5, macs=10),
        row("a", val_ap=0.5, macs=10),
        row("c", val_ap=0.5, macs=5),
    ]
    assert select_trial(rows, parse_rule("best:val_ap"))["trial_id"] == "c"
    assert select_trial(rows[:2], parse_rule("best:val_ap"))["trial_id"] == "a"


def test_missing_metrics_are_left_out_and_named_when_nothing_is_left():
    rows = [row("a", val_ap=None), row("b", val_ap=0.3)]
    assert select_trial(rows, parse_rule("best:val_ap"))["trial_id"] == "b"
    with pytest.raises(PromoteError, match="no finished trial reported 'val_pckh'"):
        select_trial(rows, parse_rule("best:val_pckh"))
    with pytest.raises(PromoteError, match="no finished trial with a genotype"):
        select_trial([row("a", status="RUNNING")], parse_rule("best:val_ap"))


def test_pareto_rule_applies_the_constraint():
    rows = [row("big", val_ap=0.7, macs=9e9), row("small", val_ap=0.6, macs=4e9)]
    assert select_trial(rows, parse_rule("pareto:val_ap@macs<=5e9"))["trial_id"] == "small"
    with pytest.raises(PromoteError, match="no finished trial meets macs <= 1e\\+09"):
        select_trial(rows, parse_rule("pareto:val_ap@macs<=1e9"))


def test_explicit_trial_and_bad_rules():
    rows = [row("a", val_ap=0.1), row("b", val_ap=0.9)]
    assert select_trial(rows, parse_rule("best:val_ap"), trial_id="a")["trial_id"] == "a"
    with pytest.raises(PromoteError, match="trial zz is not in the campaign ledger"):
        select_trial(rows, parse_rule("best:val_ap"), trial_id="zz")
    for bad in ("best", "top:val_ap", "pareto:val_ap", "best:val_ap@macs<=1"):
        with pytest.raises(PromoteError, match="--rule"):
            parse_rule(bad)
