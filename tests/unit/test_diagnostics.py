"""search/diagnostics.py: the α/β optimizer's decay-equilibrium and step-size flags."""

import torch

from nfs_orchestrator.search.diagnostics import (
    EQUILIBRIUM_CORR,
    SMALL_STEP_RATIO,
    ArchMeter,
    decay_equilibrium_corr,
    flags,
    step_ratio,
    warning_line,
)


def test_corr_is_one_at_the_equilibrium_and_zero_when_unrelated():
    g = [torch.tensor([[0.3, -0.1, 0.2]]), torch.tensor([0.05, -0.4])]
    theta = [-t / 0.01 for t in g]  # θ* = −ḡ/wd exactly
    assert abs(decay_equilibrium_corr(theta, g, 0.01) - 1.0) < 1e-6
    unrelated = [torch.tensor([[1.0, -1.0, 1.0, -1.0]])]
    grad = [torch.tensor([[1.0, 1.0, -1.0, -1.0]])]
    assert abs(decay_equilibrium_corr(unrelated, grad, 0.01)) < 1e-6


def test_corr_is_undefined_without_decay_or_variation():
    g = [torch.tensor([0.3, -0.1])]
    assert decay_equilibrium_corr([-g[0] / 0.01], g, 0.0) is None
    assert decay_equilibrium_corr([torch.zeros(2)], g, 0.01) is None  # uniform start


def test_flags_fire_on_their_side_of_the_thresholds_only():
    assert flags(EQUILIBRIUM_CORR, SMALL_STEP_RATIO) == {
        "decay_equilibrium": True,
        "small_steps": True,
    }
    assert flags(EQUILIBRIUM_CORR - 0.01, SMALL_STEP_RATIO * 1.01) == {
        "decay_equilibrium": False,
        "small_steps": False,
    }
    assert flags(None, None) == {"decay_equilibrium": False, "small_steps": False}
    assert abs(step_ratio(0.003, 0.03) - 0.1) < 1e-12
    assert step_ratio(0.1, 0.0) is None


def _run(weight_decay: float, steps: int) -> dict[str, float]:
    """Adam on L = <c, θ> (a constant gradient c): one 'epoch' of ``steps`` steps measured."""
    c = torch.tensor([0.02, -0.01, 0.005, -0.03])
    theta = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.Adam([theta], lr=0.05, weight_decay=weight_decay)
    meter = ArchMeter(opt)
    for _ in range(steps):
        opt.zero_grad()
        (c * theta).sum().backward()
        opt.step()
    return meter.epoch_metrics()


def test_meter_without_decay_sees_full_steps_and_no_equilibrium():
    m = _run(0.0, 20)
    assert abs(m["arch_step_ratio"] - 1.0) < 0.05  # a constant gradient: Adam steps lr
    assert "arch_decay_equilibrium_corr" not in m
    assert m["arch_flag_decay_equilibrium"] == 0.0 and m["arch_flag_small_steps"] == 0.0
    assert warning_line(m) is None


def test_meter_with_strong_decay_flags_the_equilibrium_and_small_steps():
    c = torch.tensor([0.02, -0.01, 0.005, -0.03])
    theta = torch.nn.Parameter(torch.zeros(4))
    opt = torch.optim.Adam([theta], lr=0.05, weight_decay=0.5)
    meter = ArchMeter(opt)
    for _ in range(300):  # settle at θ* = −c/wd
        opt.zero_grad()
        (c * theta).sum().backward()
        opt.step()
    meter.epoch_metrics()  # the settling epoch
    for _ in range(20):
        opt.zero_grad()
        (c * theta).sum().backward()
        opt.step()
    m = meter.epoch_metrics()
    assert torch.allclose(theta.detach(), -c / 0.5, atol=1e-2)
    assert m["arch_decay_equilibrium_corr"] > 0.99
    assert m["arch_step_ratio"] < SMALL_STEP_RATIO
    assert m["arch_flag_decay_equilibrium"] == 1.0 and m["arch_flag_small_steps"] == 1.0
    line = warning_line(m)
    assert line.startswith("warning: ") and "equilibrium" in line and "barely move" in line
    assert meter.new_warning(m) == line  # the first epoch a flag fires: one line
    assert meter.new_warning(m) is None  # not again in later epochs


def test_an_epoch_without_arch_steps_reports_nothing():
    theta = torch.nn.Parameter(torch.zeros(2))
    meter = ArchMeter(torch.optim.Adam([theta], lr=0.05))
    assert meter.epoch_metrics() == {}
