"""What this machine can do, and the precision and memory layout a training step uses on it.

Machines of one class differ (some CPUs have a bf16 hardware path, others none), so nothing here is
assumed: ``detect`` reads the CPU flags, torch's CPU capability and the CUDA device, and
``choose_execution`` turns a spec's ``precision`` / ``memory_format`` ("auto" or a forced value)
into an ``Execution`` for the device. The rules, from the measurements in
``benchmarks/RESULTS.md``:

    precision auto:     bf16 autocast on a CUDA GPU of compute capability ≥ 8.0, or a CPU with
                        a bf16 hardware path: AMX-BF16 matrix units or AVX512-BF16 dot products
                        (measured 1.37× fp32 on an AVX512-BF16 EPYC at the paper configuration);
                        fp32 everywhere else (an AVX2-only CPU has no bf16 path: a bf16
                        convolution there is several times slower than fp32).
    memory_format auto: channels_last on CUDA, and on CPUs with AVX-512 or better (oneDNN's
                        NHWC convolutions measured faster there); contiguous on older CPUs.

α/β stay fp32 parameters and the loss is computed in fp32 whatever the precision: autocast only
lowers the convolutions and matrix products (``compute_context``), and the models return fp32
heatmaps. The loops apply the execution, not the models: ``prepare_model`` puts the weights in
its layout once, and every forward pass of a loop, of validation or of inference goes through
``run_model`` (autocast + input layout), as nanoGPT keeps autocast in its training loop.

What this is not: the models (``nn/``) or the benchmarks that measured the rules.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from nfs_orchestrator.specs import MemoryFormat, Precision

# torch.backends.cpu.get_cpu_capability() values with 512-bit vector units
_WIDE_CPU = ("AVX512", "AVX512_VNNI", "AVX512_BF16", "AMX")


@dataclass(frozen=True)
class Hardware:
    """The device a step runs on, as detected (printed by every benchmark)."""

    device: str  # "cpu" or "cuda"
    name: str  # CPU model or GPU name
    cpu_capability: str  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, …
    amx_bf16: bool  # bf16 matrix units (Intel AMX)
    avx512_bf16: bool  # bf16 dot-product instructions only (no matrix units)
    cuda_capability: tuple[int, int] | None
    logical_cpus: int
    usable_cpus: int  # this process's CPU affinity
    torch_threads: int
    torch: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cpu_info() -> tuple[str, set[str]]:
    """(model name, flags) from /proc/cpuinfo; the platform's name and no flags elsewhere."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return name, flags
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name in ("", platform.machine()):
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return name, flags


def detect(device: torch.device | str = "cpu") -> Hardware:
    """The hardware behind ``device`` (a CUDA device, or the CPU)."""
    device = torch.device(device)
    cpu_name, flags = _cpu_info()
    cuda = device.type == "cuda" and torch.cuda.is_available()
    return Hardware(
        device="cuda" if cuda else "cpu",
        name=torch.cuda.get_device_name(device) if cuda else cpu_name,
        cpu_capability=torch.backends.cpu.get_cpu_capability(),
        amx_bf16="amx_bf16" in flags,
        avx512_bf16="avx512_bf16" in flags,
        cuda_capability=tuple(torch.cuda.get_device_capability(device)) if cuda else None,
        logical_cpus=os.cpu_count() or 1,
        usable_cpus=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1,
        torch_threads=torch.get_num_threads(),
        torch=torch.__version__,
    )


@dataclass(frozen=True)
class Execution:
    """How a step runs: ``precision`` of convolutions/matmuls and the activations' layout."""

    precision: Literal["fp32", "bf16"]
    channels_last: bool
    why: str  # one line: what was detected or forced

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.precision == "bf16" else None

    def describe(self) -> str:
        layout = "channels_last" if self.channels_last else "contiguous"
        return f"{self.precision}, {layout} ({self.why})"


def bf16_hardware(hw: Hardware) -> bool:
    """True where bf16 convolutions/matmuls have a hardware path faster than fp32."""
    if hw.device == "cuda":
        return hw.cuda_capability is not None and hw.cuda_capability >= (8, 0)
    return hw.amx_bf16 or hw.avx512_bf16


def choose_execution(
    hw: Hardware, precision: Precision = "auto", memory_format: MemoryFormat = "auto"
) -> Execution:
    """The ``Execution`` for ``hw``: "auto" follows the module's rules, other values are kept
    (a forced bf16 without a bf16 hardware path is allowed, and said to be slow)."""
    fast_bf16 = bf16_hardware(hw)
    where = hw.name if hw.device == "cuda" else f"{hw.name}, {hw.cpu_capability}"
    if precision == "auto":
        chosen = "bf16" if fast_bf16 else "fp32"
        why = f"{'a' if fast_bf16 else 'no'} bf16 hardware path on {where}"
    else:
        chosen = precision
        why = f"{precision} forced on {where}"
        if precision == "bf16" and not fast_bf16:
            why += " (no bf16 hardware path: expect it slower than fp32)"
    if memory_format == "auto":
        channels_last = hw.device == "cuda" or hw.cpu_capability in _WIDE_CPU
    else:
        channels_last = memory_format == "channels_last"
    return Execution(precision=chosen, channels_last=channels_last, why=why)


def prepare_model(model: torch.nn.Module, execution: Execution) -> torch.nn.Module:
    """Puts ``model``'s 4-D weights in the execution's layout; returns ``model``. Its forward
    passes then go through ``run_model`` with the same execution."""
    if execution.channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def run_model(
    model: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    execution: Execution | None,
) -> torch.Tensor:
    """``model(images)`` under the execution: (B, 3, H, W) in its layout, autocast to its
    precision; the models return fp32 heatmaps (B, K, H/4, W/4). ``None`` = plain fp32."""
    with compute_context(images, execution):
        return model(to_layout(images, execution))


def compute_context(images: torch.Tensor, execution: Execution | None):
    """Autocast to the execution's precision on the images' device (a no-op for fp32)."""
    if execution is None or execution.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(images.device.type, dtype=execution.autocast_dtype)


def to_layout(images: torch.Tensor, execution: Execution | None) -> torch.Tensor:
    """``images`` (B, 3, H, W) in the execution's memory layout."""
    if execution is not None and execution.channels_last:
        return images.contiguous(memory_format=torch.channels_last)
    return images
