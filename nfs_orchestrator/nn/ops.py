"""Candidate operations of a cell edge and the resampling of a cell's inputs (PoseNFS §1.3, §1.6).

Every op maps (B, C, H, W) → (B, C, H, W). Convolutions follow the reference's Conv → BN → ReLU
order ("mode 2", not DARTS' ReLU → Conv → BN), with non-affine BN; pooling gets a trailing
non-affine BN, as the reference's mixed op adds. ``OPS`` is the one table from op name to
factory; ``specs.OP_NAMES`` lists the same names (a test keeps them equal).

Resampling brings a neighbouring scale to a cell's scale: ``Down`` (finer input: 3×3 stride-2
conv with bias + BN, no ReLU) and ``Up`` (coarser input: 1×1 conv with bias + BN, then bilinear
×2 with align_corners=True). A same-scale input is used as it is.

This file holds modules only; how a cell mixes them is in ``nn.cell``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

BN_MOMENTUM = 0.1


class Zero(nn.Module):
    """The ``zero`` op: no connection. Mixed ops skip it (its weight only enters the softmax)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def sep_conv(c: int, kernel: int) -> nn.Sequential:
    """Separable conv applied twice: [depthwise k×k → pointwise 1×1 → BN → ReLU] × 2."""
    pad = kernel // 2
    return nn.Sequential(
        nn.Conv2d(c, c, kernel, padding=pad, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=False, momentum=BN_MOMENTUM),
        nn.ReLU(),
        nn.Conv2d(c, c, kernel, padding=pad, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=False, momentum=BN_MOMENTUM),
        nn.ReLU(),
    )


def atr_conv(c: int, kernel: int) -> nn.Sequential:
    """Atrous (dilation 2) depthwise k×k → pointwise 1×1 → BN → ReLU."""
    return nn.Sequential(
        nn.Conv2d(c, c, kernel, padding=kernel - 1, dilation=2, groups=c, bias=False),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c, affine=False, momentum=BN_MOMENTUM),
        nn.ReLU(),
    )


def pool(kind: str, c: int) -> nn.Sequential:
    """3×3 stride-1 pooling followed by a non-affine BN."""
    layer = (
        nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)
        if kind == "avg"
        else nn.MaxPool2d(3, stride=1, padding=1)
    )
    return nn.Sequential(layer, nn.BatchNorm2d(c, affine=False, momentum=BN_MOMENTUM))


OPS: dict[str, Callable[[int], nn.Module]] = {
    "zero": lambda c: Zero(),
    "skip_connect": lambda c: nn.Identity(),
    "sep_conv_3x3": lambda c: sep_conv(c, 3),
    "sep_conv_5x5": lambda c: sep_conv(c, 5),
    "atr_conv_3x3": lambda c: atr_conv(c, 3),
    "atr_conv_5x5": lambda c: atr_conv(c, 5),
    "avg_pool_3x3": lambda c: pool("avg", c),
    "max_pool_3x3": lambda c: pool("max", c),
}


def build_op(name: str, c: int) -> nn.Module:
    try:
        return OPS[name](c)
    except KeyError:
        raise KeyError(f"unknown op {name!r}; known: {sorted(OPS)}") from None


class Down(nn.Sequential):
    """Finer input (C/2 channels, 2× the size) → this cell: 3×3 stride-2 conv + BN."""

    def __init__(self, c: int) -> None:
        super().__init__(
            nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=True),
            nn.BatchNorm2d(c, momentum=BN_MOMENTUM),
        )


class Up(nn.Module):
    """Coarser input (2C channels, half the size) → this cell: 1×1 conv + BN, bilinear ×2."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2 * c, c, 1, bias=True)
        self.bn = nn.BatchNorm2d(c, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))  # (B, C, h, w)
        return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)  # (B,C,2h,2w)


# How a source at scale row r reaches a cell at row i: same row, the finer row above, the
# coarser row below. The table maps the row offset (r - i) to the resampling module.
RESAMPLE: dict[int, Callable[[int], nn.Module]] = {
    0: lambda c: nn.Identity(),
    -1: Down,
    1: Up,
}
