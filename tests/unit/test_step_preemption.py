"""Pre-emption at a step boundary (LocalRuntime, no Ray): a run interrupted in the middle of an
epoch writes a mid-epoch checkpoint and its resume continues at that very step with the same
batches, augmentations and random numbers, so it ends bit-equal to the uninterrupted run."""

from __future__ import annotations

import json

import torch

from nfs_orchestrator.loop_utils import epoch_steps, get_rng_state, set_rng_state
from nfs_orchestrator.runtime import LocalRuntime
from nfs_orchestrator.search.loop import STATE_FILE, run_search
from tests.conftest import tiny_trial


def state_of(run_dir):
    ckpt = LocalRuntime(run_dir, verbose=False).latest_checkpoint()
    return torch.load(ckpt / STATE_FILE, weights_only=True)


def test_mid_epoch_interrupt_resumes_bit_equal(tmp_path, synthetic_root):
    """3 steps per epoch; the notice comes after step 5 (epoch 1, step 2 of 3). gumbel sampling
    draws from torch's RNG every step, first_order draws α/β batches besides the weight ones."""
    trial = tiny_trial(synthetic_root, mode="first_order", epochs=2, sampling="gumbel")
    run_search(trial, LocalRuntime(tmp_path / "straight", verbose=False))

    interrupted = LocalRuntime(tmp_path / "resumed", verbose=False)
    interrupted.stop_at_step = 5
    run_search(trial, interrupted)
    assert interrupted.stop_requested
    pointer = json.loads((tmp_path / "resumed" / "checkpoints" / "latest.json").read_text())
    assert pointer == {"dir": "epoch_0001_step_000002", "epoch": 1, "step": 2}
    mid = state_of(tmp_path / "resumed")
    assert mid["interrupted"]["step"] == 2 and len(mid["interrupted"]["rng"]) == 1

    resumed = LocalRuntime(tmp_path / "resumed", verbose=False)
    last = run_search(trial, resumed)
    assert (last["start_epoch"], last["start_step"], last["epoch"]) == (1, 2, 1)
    assert resumed.steps == 1  # only the epoch's last step was left

    a, b = state_of(tmp_path / "straight"), state_of(tmp_path / "resumed")
    assert "interrupted" not in b
    for key, value in a["model"].items():  # weights, α and β
        assert torch.equal(value, b["model"][key]), key
    assert a["history"] == b["history"]
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    again = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(straight[-1])["train_loss"] == json.loads(again[-1])["train_loss"]


def test_a_notice_after_the_last_step_pauses_before_the_report_and_resumes_bit_equal(
    tmp_path, synthetic_root
):
    """The notice comes once epoch 0's 3 steps are done (while it validates): no epoch-0 report
    from the exiting process; the checkpoint stands after all 3 steps of epoch 0, and the resume
    validates and reports epoch 0 as the uninterrupted run did, then runs epoch 1."""
    trial = tiny_trial(synthetic_root, mode="first_order", epochs=2, sampling="gumbel")
    run_search(trial, LocalRuntime(tmp_path / "straight", verbose=False))

    class NoticeAfterTheSteps(LocalRuntime):
        notice = False

        def all_reduce_mean(self, values):  # the loop averages the epoch's losses: steps done
            self.notice = True
            return super().all_reduce_mean(values)

        def should_stop_step(self):
            return super().should_stop_step() or self.notice

    run_search(trial, NoticeAfterTheSteps(tmp_path / "resumed", verbose=False))
    assert not (tmp_path / "resumed" / "metrics.jsonl").exists()  # nothing reported
    pointer = json.loads((tmp_path / "resumed" / "checkpoints" / "latest.json").read_text())
    assert pointer == {"dir": "epoch_0000_step_000003", "epoch": 0, "step": 3}
    mid = state_of(tmp_path / "resumed")
    assert mid["history"] == [] and len(mid["interrupted"]["train_losses"]) == 3

    last = run_search(trial, LocalRuntime(tmp_path / "resumed", verbose=False))
    assert (last["start_epoch"], last["start_step"], last["epoch"]) == (0, 3, 1)
    a, b = state_of(tmp_path / "straight"), state_of(tmp_path / "resumed")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["history"] == b["history"]
    straight = [json.loads(x) for x in (tmp_path / "straight" / "metrics.jsonl").open()]
    again = [json.loads(x) for x in (tmp_path / "resumed" / "metrics.jsonl").open()]
    keep = ("epoch", "train_loss", "arch_loss", "val_ap", "val_loss", "alpha_entropy")
    assert [{k: r[k] for k in keep} for r in again] == [{k: r[k] for k in keep} for r in straight]


def test_epoch_steps_from_a_step_take_the_rest_of_the_same_batches():
    data = [{"i": torch.tensor(i)} for i in range(10)]
    rt = LocalRuntime("/tmp", verbose=False)
    seven = [b[0]["i"].tolist() for b in epoch_steps(data, range(10), 2, 1, rt, 5, 7)]
    for start in (1, 5, 6, 7):  # within the first pass, at the second pass, the end
        rest = [b[0]["i"].tolist() for b in epoch_steps(data, range(10), 2, 1, rt, 5, 7, 0, start)]
        assert rest == seven[start:], start


def test_a_loader_worker_resumed_mid_pass_loads_the_same_augmented_samples(synthetic_root):
    """Augmentation is seeded per sample position, not by the worker that loads it."""
    from nfs_orchestrator.data import build_dataset

    trial = tiny_trial(synthetic_root)
    data = build_dataset(trial.data, trial.grouping.schema, "train", train=True)
    rt = LocalRuntime("/tmp", verbose=False)
    full = [b[0]["image"] for b in epoch_steps(data, range(len(data)), 2, 1, rt, 9, 4, 1)]
    rest = [b[0]["image"] for b in epoch_steps(data, range(len(data)), 2, 1, rt, 9, 4, 1, 2)]
    assert len(rest) == 2 and all(torch.equal(a, b) for a, b in zip(full[2:], rest))


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save({"rng": get_rng_state()}, tmp_path / "s.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and (first[1] == second[1]).all()
    assert first[2] == second[2]
