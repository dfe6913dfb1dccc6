"""Batches: the effective batch of a step does not change with the number of workers;
validation is one pass."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.loop_utils import batch_plan, validate


@pytest.mark.parametrize("workers", [1, 2, 4, 8])
def test_effective_batch_is_constant_when_workers_change(workers):
    micro, accumulation = batch_plan(24, None, workers)  # micro adapts
    assert workers * micro * accumulation == 24
    if 24 % (workers * 3) == 0:
        micro, accumulation = batch_plan(24, 3, workers)  # micro fixed: accumulation adapts
        assert (micro, workers * micro * accumulation) == (3, 24)


def test_impossible_split_is_a_clear_error():
    with pytest.raises(SpecError, match="not a multiple of workers × micro_batch = 5 × 4"):
        batch_plan(24, 4, 5)


def test_validation_is_one_pass_with_the_loss_of_its_plain_forward(synthetic_root):
    """validate() scores and computes val_loss from the same forwards: 2 per batch with the flip
    test (plain + flipped), and val_loss is the batch mean of the plain forward's loss."""
    from dataclasses import replace

    from nfs_orchestrator.data import build_dataset
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.losses import joints_mse
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from tests.conftest import tiny_trial

    trial = tiny_trial(synthetic_root)
    data = replace(trial.data, flip_test=True)
    val_set = build_dataset(data, trial.grouping.schema, "val", train=False)
    net = PoseSupernet(trial.fabric, trial.grouping, build_backbone("tiny", random_init=True))
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))

    out = validate(net, val_set, data, trial.grouping.schema, torch.device("cpu"))
    batches = list(DataLoader(val_set, batch_size=32))
    assert len(calls) == 2 * len(batches)
    assert net.training  # the mode it had
    net.eval()
    with torch.no_grad():
        losses = [float(joints_mse(net(b["image"]), b["heatmaps"], b["target_weight"]))
                  for b in batches]  # fmt: skip
    assert out["val_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-6)
    parts = {f"val_ap.{p.name}" for p in trial.grouping.parts}  # each part scored on its own
    assert set(out) == {"val_loss", "val_ap", "val_ap50"} | parts
