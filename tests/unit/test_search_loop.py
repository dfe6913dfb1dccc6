"""The search loop in-process (LocalRuntime): every mode runs, freezing freezes, and
checkpoint → restore → continue is bit-identical to an uninterrupted run on CPU."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.runtime import LocalRuntime
from nfs_orchestrator.search.loop import STATE_FILE, run_search
from tests.conftest import tiny_trial


def final_state(run_dir):
    ckpt = LocalRuntime(run_dir).latest_checkpoint()
    return torch.load(ckpt / STATE_FILE, weights_only=True)


def test_resume_is_bit_identical(tmp_path, synthetic_root, capsys):
    trial = tiny_trial(synthetic_root, epochs=2)
    run_search(trial, LocalRuntime(tmp_path / "straight", verbose=False))
    # rank 0's progress: one line per epoch, "epoch e/E · s/step · seconds · ETA"
    out = capsys.readouterr().out.splitlines()
    lines = [x for x in out if " · ETA " in x and " · step " not in x]  # mid-epoch: slow steps
    assert [x.split(" · ")[0].rsplit(" ", 1)[1] for x in lines] == ["1/2", "2/2"], lines
    assert lines[-1].endswith("ETA 0:00:00") and " s/step · " in lines[0]

    one = tiny_trial(synthetic_root, epochs=2)
    interrupted = LocalRuntime(tmp_path / "resumed", verbose=False)
    interrupted.stop_requested = True  # a pre-emption notice after the first epoch
    first = run_search(one, interrupted)
    assert first["epoch"] == 0
    resumed = LocalRuntime(tmp_path / "resumed", verbose=False)
    last = run_search(one, resumed)
    assert last["start_epoch"] == 1 and last["epoch"] == 1
    out = capsys.readouterr().out.splitlines()
    resumed_lines = [x for x in out if " · ETA " in x and " · step " not in x]
    assert len(resumed_lines) == 2 and "epoch 2/2" in resumed_lines[-1]  # 1 before the stop

    a, b = final_state(tmp_path / "straight"), final_state(tmp_path / "resumed")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["history"] == b["history"]


@pytest.mark.parametrize("mode", ["first_order", "sync", "second_order", "random", "none"])
def test_every_mode_runs_and_reports(tmp_path, synthetic_root, mode):
    runtime = LocalRuntime(tmp_path, verbose=False)
    metrics = run_search(tiny_trial(synthetic_root, mode=mode, epochs=1, steps=2), runtime)
    assert {"train_loss", "val_loss", "val_ap", "macs", "params", "alpha_entropy"} <= set(metrics)
    assert ("arch_loss" in metrics) == (mode in ("first_order", "second_order"))
    text = (tmp_path / "artifacts" / "genotype.json").read_text()
    g = Genotype.from_json(text)
    assert json.loads(text)["fingerprint"] == g.fingerprint()
    assert (tmp_path / "artifacts" / "fabric.png").stat().st_size > 1000
    state = final_state(tmp_path)
    alpha = state["model"]["parts.head.alpha"]
    if mode == "none":
        assert torch.count_nonzero(alpha) == 0  # frozen at the uniform start
    elif mode == "random":
        g2 = torch.Generator().manual_seed(2)  # reference seed; parts drawn in order, α then β
        torch.randn(1, 4, generator=g2), torch.randn(6, 3, generator=g2)  # upper_limb
        assert torch.equal(alpha, torch.randn(alpha.shape, generator=g2))  # drawn once, frozen
    else:
        assert torch.count_nonzero(alpha) > 0  # α moved


def test_freezing_alpha_really_freezes(tmp_path, synthetic_root):
    trial = tiny_trial(synthetic_root, mode="sync", epochs=1, steps=2, search_alpha=False)
    run_search(trial, LocalRuntime(tmp_path, verbose=False))
    state = final_state(tmp_path)["model"]
    assert torch.count_nonzero(state["parts.head.alpha"]) == 0
    assert torch.count_nonzero(state["parts.head.beta"]) > 0


def test_first_order_arch_step_leaves_weights_alone(synthetic_root):
    from nfs_orchestrator.data import build_dataset
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from nfs_orchestrator.search import bilevel

    trial = tiny_trial(synthetic_root)
    data = build_dataset(trial.data, trial.grouping.schema, "train", train=False)
    batch = torch.utils.data.default_collate([data[0], data[1]])
    net = PoseSupernet(trial.fabric, trial.grouping, build_backbone("tiny", random_init=True))
    arch = list(net.arch_parameters())
    before = {
        k: v.clone()
        for k, v in net.state_dict().items()
        if "alpha" not in k and "beta" not in k and "running" not in k and "num_batches" not in k
    }
    opt = torch.optim.Adam(arch, lr=0.1)
    bilevel.arch_step_first_order(net, [batch], arch, opt, LocalRuntime("/tmp", verbose=False))
    after = net.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    assert any(torch.count_nonzero(p) for p in arch)


def test_the_loop_reports_every_metric_a_campaign_may_name(tmp_path, synthetic_root):
    """campaign_spec's table of reported metrics (objectives are checked against it at load)
    is what the loop really reports."""
    from nfs_orchestrator.campaign_spec import BILEVEL_METRICS, SEARCH_METRICS, VAL_METRICS

    trial = tiny_trial(synthetic_root, epochs=1, steps=1)
    metrics = run_search(trial, LocalRuntime(tmp_path, verbose=False))
    parts = [p.name for p in trial.grouping.parts]
    declared = [*SEARCH_METRICS, *VAL_METRICS["coco"], *BILEVEL_METRICS]
    declared += [f"{kind}.{p}" for p in parts for kind in ("val_ap", "params", "macs")]
    assert set(declared) <= set(metrics), sorted(set(declared) - set(metrics))


def test_alpha_entropy_pull_sharpens_the_leading_op_and_is_zero_at_uniform(synthetic_root):
    """``search.alpha_entropy_weight``: ``PoseSupernet.alpha_entropy`` is 1 − the α entropy
    drop the confidence record reports, at the temperature in use; its pull adds nothing at
    uniform α, and where a row leans it moves the leading op up and the others down."""
    from nfs_orchestrator.confidence import entropy_drop
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from nfs_orchestrator.search import bilevel
    from nfs_orchestrator.search.loop import arch_snapshot

    trial = tiny_trial(synthetic_root)
    net = PoseSupernet(trial.fabric, trial.grouping, build_backbone("tiny", random_init=True))
    alpha = next(iter(net.parts.values())).alpha  # (edges, ops), zeros: uniform
    bilevel._pull_alpha(net, 1.0)
    assert torch.count_nonzero(alpha.grad) == 0  # uniform is where the pull has no direction
    alpha.grad = None

    with torch.no_grad():
        alpha[..., -1] = 0.5  # every edge leans to the last op
    for t in (1.0, 0.5):
        net.temperature = t
        rows = [r for part in arch_snapshot(net).values() for r in part["alpha"]]
        assert net.alpha_entropy().item() == pytest.approx(1 - entropy_drop(rows), abs=1e-6)
    net.temperature = 1.0
    bilevel._pull_alpha(net, 1.0)
    grad = alpha.grad.reshape(-1, alpha.shape[-1])
    assert (grad[:, -1] < 0).all() and (grad[:, :-1] > 0).all()  # descent raises the leader
    alpha.grad = None
    bilevel._pull_alpha(net, 0.0)  # weight 0 (the default): no gradient at all
    assert alpha.grad is None

    one_op = replace(trial.fabric, ops=("sep_conv_3x3",))  # nothing to choose: no pull
    net = PoseSupernet(one_op, trial.grouping, build_backbone("tiny", random_init=True))
    assert net.alpha_entropy().item() == 0.0
    bilevel._pull_alpha(net, 1.0)
    assert all(torch.count_nonzero(f.alpha.grad) == 0 for f in net.parts.values())


def test_uniform_weight_mixture_trains_the_weights_as_at_zero_alpha_beta(tmp_path):
    """``search.weight_mixture: uniform``: a weight step under learned α/β trains the weights
    exactly as the same step at α/β = 0, leaves α/β where they were, and differs from the
    learned-mixture step (the option is not a no-op)."""
    from copy import deepcopy

    from nfs_orchestrator.keypoints import load_grouping
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from nfs_orchestrator.search import bilevel
    from nfs_orchestrator.specs import load_fabric

    torch.manual_seed(0)
    net = PoseSupernet(
        load_fabric("tiny"), load_grouping("coco-p3"), build_backbone("tiny", random_init=True)
    )
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()  # a mixture far from uniform
    at_zero, learned = deepcopy(net), deepcopy(net)
    with torch.no_grad():
        for p in at_zero.arch_parameters():
            p.zero_()
    arch_before = [p.detach().clone() for p in net.arch_parameters()]
    g = torch.Generator().manual_seed(1)
    batch = {
        "image": torch.randn(2, 3, 64, 64, generator=g),
        "heatmaps": torch.rand(2, 17, 16, 16, generator=g),
        "target_weight": torch.ones(2, 17),
    }

    def weight_step(model: PoseSupernet, uniform: bool) -> None:
        weights = list(model.weight_parameters())
        opt = torch.optim.Adam(weights, lr=1e-3)
        runtime = LocalRuntime(tmp_path, verbose=False)
        arch = list(model.arch_parameters())
        state = bilevel.StepState(
            model, weights, arch, opt, None, runtime, None, 1e-3, 0.0, None, uniform_weights=uniform
        )
        bilevel.WEIGHTS_ONLY(state, [batch], iter(()))

    for model, uniform in ((net, True), (at_zero, False), (learned, False)):
        model.train()
        weight_step(model, uniform)
    pairs = list(zip(net.weight_parameters(), at_zero.weight_parameters()))
    assert all(torch.equal(p, q) for p, q in pairs)
    assert all(torch.equal(a, p) for a, p in zip(arch_before, net.arch_parameters()))
    assert all(p.grad is None for p in net.arch_parameters())
    pairs = list(zip(net.weight_parameters(), learned.weight_parameters()))
    assert not all(torch.equal(p, q) for p, q in pairs)


def test_the_search_takes_its_weight_steps_under_the_uniform_mixture(
    tmp_path, synthetic_root, monkeypatch
):
    """The loop passes ``search.weight_mixture`` to its steps: one weight step per step, in the
    weight-only warm-up too, under ``uniform_mixture``; none under the default."""
    from nfs_orchestrator.nn.supernet import PoseSupernet

    entered = []
    mixture = PoseSupernet.uniform_mixture
    monkeypatch.setattr(
        PoseSupernet, "uniform_mixture", lambda self: (entered.append(1), mixture(self))[1]
    )
    trial = tiny_trial(synthetic_root, arch_start_epoch=1, steps=2, weight_mixture="uniform")
    run_search(trial, LocalRuntime(tmp_path / "uniform", verbose=False))
    assert len(entered) == 4  # 2 epochs × 2 steps
    run_search(tiny_trial(synthetic_root, steps=2), LocalRuntime(tmp_path / "learned"))
    assert len(entered) == 4


def test_the_search_ramps_the_alpha_pull_with_progress(tmp_path, synthetic_root, monkeypatch):
    """Every α/β step gets ``alpha_pull(weight, progress)``: 0 in epoch 0, so early leads of α
    are the loss's alone, then growing linearly (here 1 step per epoch, 2 epochs)."""
    from nfs_orchestrator.search import bilevel

    seen = []
    pull = bilevel._pull_alpha
    monkeypatch.setattr(bilevel, "_pull_alpha", lambda m, w: (seen.append(w), pull(m, w))[1])
    trial = tiny_trial(synthetic_root, arch_start_epoch=0, steps=1, alpha_entropy_weight=0.004)
    run_search(trial, LocalRuntime(tmp_path, verbose=False))
    assert seen == [0.0, 0.002]


def test_the_search_mixes_beta_by_its_beta_gradient(tmp_path, synthetic_root, monkeypatch):
    """``search.beta_gradient: layout`` reaches every cell's β mixture, in the weight steps
    and the α/β steps alike (the default's plain mixture: test_supernet's layout tests)."""
    from nfs_orchestrator.nn import cell

    seen = set()
    mixture = cell.beta_mixture
    monkeypatch.setattr(
        cell, "beta_mixture", lambda xs, w, lay: (seen.add(lay), mixture(xs, w, lay))[1]
    )
    trial = tiny_trial(
        synthetic_root, epochs=1, arch_start_epoch=0, steps=1, beta_gradient="layout"
    )
    run_search(trial, LocalRuntime(tmp_path / "layout", verbose=False))
    assert seen == {True}


def test_the_search_draws_inputs_by_its_input_sampling(tmp_path, synthetic_root, monkeypatch):
    """``search.input_sampling: gumbel`` reaches every cell: training steps draw (weight and
    α/β steps alike), validation reads the argmax input; the default mixes every input."""
    from nfs_orchestrator.nn import cell

    seen = set()
    weights = cell.input_weights
    monkeypatch.setattr(
        cell,
        "input_weights",
        lambda beta, t, draw, argmax: (seen.add((draw, argmax)), weights(beta, t, draw, argmax))[1],
    )
    for sampling in ("mixed", "gumbel"):
        trial = tiny_trial(
            synthetic_root, epochs=1, arch_start_epoch=0, steps=1, input_sampling=sampling
        )
        run_search(trial, LocalRuntime(tmp_path / sampling, verbose=False))
        assert seen == ({(False, False)} if sampling == "mixed" else {(True, True), (False, True)})
        seen.clear()
