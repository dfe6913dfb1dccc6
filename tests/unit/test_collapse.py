"""Collapse monitors that act (search.collapse, DARTS-ES style): when the genotype's share of
parameter-free ops passes the threshold, ``stop`` ends the trial after that epoch and
``freeze_arch`` keeps α/β where they are for the rest of it; the ledger says why."""

from __future__ import annotations

from dataclasses import replace

import pytest

from nfs_orchestrator.campaign_spec import Objective
from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.orchestration.ledger import update_with_result
from nfs_orchestrator.runtime import LocalRuntime
from nfs_orchestrator.search.loop import run_search
from nfs_orchestrator.specs import CollapseSpec
from tests.conftest import tiny_trial

FREE_OPS = ("zero", "skip_connect", "max_pool_3x3")  # every genotype is parameter-free: share 1


def collapsing_trial(root, action: str, epochs: int):
    trial = tiny_trial(root, epochs=epochs, steps=1, arch_start_epoch=0)
    search = replace(trial.search, collapse=CollapseSpec(max_param_free_share=0.5, action=action))
    return replace(trial, fabric=replace(trial.fabric, ops=FREE_OPS), search=search)


def test_stop_ends_the_trial_after_the_epoch_that_collapsed(tmp_path, synthetic_root):
    runtime = LocalRuntime(tmp_path, verbose=False)
    last = run_search(collapsing_trial(synthetic_root, "stop", epochs=3), runtime)
    assert [int(r["epoch"]) for r in runtime.history] == [0]
    assert last["collapse_share"] == 1.0 and "arch_frozen_at" not in last
    row = update_with_result({"epochs_run": 0}, last, [Objective()])
    assert row["stop_reason"].startswith("collapse at epoch 0: parameter-free share 1.00")


def test_freeze_keeps_alpha_beta_for_the_rest_of_the_trial(tmp_path, synthetic_root):
    runtime = LocalRuntime(tmp_path, verbose=False)
    last = run_search(collapsing_trial(synthetic_root, "freeze_arch", epochs=3), runtime)
    assert [int(r["epoch"]) for r in runtime.history] == [0, 1, 2]  # the trial goes on
    assert last["arch_frozen_at"] == 0.0 and "arch_loss" not in last
    import torch

    from nfs_orchestrator.search.loop import STATE_FILE

    state = torch.load(runtime.latest_checkpoint() / STATE_FILE, weights_only=True)
    first, *rest = state["history"]
    assert all(snapshot == first for snapshot in rest)  # α/β did not move after epoch 0


def test_thresholds_out_of_range_are_refused():
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(SpecError, match="max_param_free_share"):
            CollapseSpec(max_param_free_share=bad)
