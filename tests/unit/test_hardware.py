"""Hardware detection, the precision/layout rules, and what an execution does to the models."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nfs_orchestrator.hardware import (
    Execution,
    Hardware,
    choose_execution,
    detect,
    prepare_model,
    run_model,
)
from nfs_orchestrator.keypoints import load_grouping
from nfs_orchestrator.nn.backbones import build_backbone
from nfs_orchestrator.nn.derived import DerivedPoseNet
from nfs_orchestrator.nn.supernet import PoseSupernet
from nfs_orchestrator.specs import load_fabric

CPU = Hardware(
    device="cpu",
    name="AMD EPYC",
    cpu_capability="AVX2",
    amx_bf16=False,
    avx512_bf16=False,
    cuda_capability=None,
    logical_cpus=2,
    usable_cpus=2,
    torch_threads=2,
    torch="2.13.0",
)


@pytest.mark.parametrize(
    "hw, precision, channels_last",
    [
        (CPU, "fp32", False),  # AVX2-only: no bf16 path, NCHW
        (replace(CPU, cpu_capability="AVX512"), "fp32", True),  # no bf16 instructions
        (replace(CPU, cpu_capability="AVX512", avx512_bf16=True), "bf16", True),  # dot products
        (replace(CPU, cpu_capability="AMX", amx_bf16=True), "bf16", True),
        (replace(CPU, device="cuda", name="H100", cuda_capability=(9, 0)), "bf16", True),
        (replace(CPU, device="cuda", name="T4", cuda_capability=(7, 5)), "fp32", True),
    ],
)
def test_auto_follows_the_hardware(hw, precision, channels_last):
    ex = choose_execution(hw)
    assert (ex.precision, ex.channels_last) == (precision, channels_last)
    assert hw.name in ex.why


def test_forced_values_are_kept_and_a_slow_bf16_is_said():
    ex = choose_execution(CPU, "bf16", "channels_last")
    assert ex.precision == "bf16" and ex.channels_last and "slower" in ex.why
    amx = replace(CPU, cpu_capability="AMX", amx_bf16=True)
    ex = choose_execution(amx, "fp32", "contiguous")
    assert ex.precision == "fp32" and not ex.channels_last and "forced" in ex.why


def test_detect_reads_this_machine():
    hw = detect("cpu")
    assert hw.device == "cpu" and hw.cpu_capability == torch.backends.cpu.get_cpu_capability()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = next(ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("flags"))
        assert hw.amx_bf16 == ("amx_bf16" in flags.split())
    assert hw.torch_threads == torch.get_num_threads()


def _supernet() -> PoseSupernet:
    torch.manual_seed(0)
    net = PoseSupernet(
        load_fabric("tiny"), load_grouping("coco-p3"), build_backbone("tiny", random_init=True)
    )
    with torch.no_grad():  # α/β away from uniform so every op and input matters
        for p in net.arch_parameters():
            p.normal_()
    return net


def _step(
    net: torch.nn.Module, x: torch.Tensor, ex: Execution | None = None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.train()
    y = run_model(net, x, ex)  # the loops' forward: the execution's autocast and layout
    (y.square().mean() * 1e3).backward()
    return y.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def test_channels_last_computes_the_same_function_and_gradients():
    x = torch.randn(2, 3, 64, 64)
    base = _supernet()
    ex = choose_execution(CPU, "fp32", "channels_last")
    fast = prepare_model(copy.deepcopy(base), ex)
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    y0, g0 = _step(base, x)
    y1, g1 = _step(fast, x, ex)
    assert (y1 - y0).abs().max() <= 1e-5 * y0.abs().max()  # only the summation order differs
    # every gradient to 1e-5 of the largest; each weight tensor and α/β also to 1e-4 of its own
    # scale (a conv bias before a BatchNorm has a true gradient of ~0: only rounding is left)
    top = max(float(g.abs().max()) for g in g0.values())
    assert max(float((g1[n] - g).abs().max()) for n, g in g0.items()) <= 1e-5 * top
    for name, g in g0.items():
        if g.dim() > 1 or name.endswith(("alpha", "beta")):
            assert (g1[name] - g).abs().max() <= 1e-4 * g.abs().max(), name


def test_bf16_autocast_keeps_arch_params_and_heatmaps_fp32():
    x = torch.randn(2, 3, 64, 64)
    base = _supernet()
    ex = choose_execution(CPU, "bf16", "contiguous")
    low = prepare_model(copy.deepcopy(base), ex)
    y0, _ = _step(base, x)
    y1, g1 = _step(low, x, ex)
    assert y1.dtype == torch.float32
    assert (y1 - y0).abs().max() <= 0.05 * y0.abs().max()  # bf16 has an 8-bit mantissa
    for name, p in low.named_arch_parameters():
        assert p.dtype == torch.float32 and g1[f"parts.{name}"].dtype == torch.float32
        assert g1[f"parts.{name}"].abs().sum() > 0, name
    genotype = base.genotype()  # derive_genotype on base's α/β, unmeasured
    derived = DerivedPoseNet(genotype, build_backbone("tiny", random_init=True))
    ex = choose_execution(CPU, "bf16", "channels_last")
    prepare_model(derived, ex)
    assert run_model(derived, x, ex).dtype == torch.float32
