"""Every candidate op keeps the shape and trains; the mixed op is a plain sum at the start."""

from __future__ import annotations

import pytest
import torch

from nfs_orchestrator.nn.cell import MixedOp
from nfs_orchestrator.nn.ops import OPS, Down, Up, build_op


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_shape_and_backward(name):
    op = build_op(name, 8)
    x = torch.randn(2, 8, 12, 10, requires_grad=True)
    y = op(x)
    assert y.shape == x.shape
    if y.requires_grad:  # zero gives a constant: nothing flows back
        y.sum().backward()
    for p in op.parameters():
        assert p.grad is not None


def test_mixed_op_at_uniform_alpha_is_the_sum_of_ops():
    ops = ["zero", "skip_connect", "sep_conv_3x3"]
    mixed = MixedOp(4, ops).eval()
    x = torch.randn(1, 4, 6, 6)
    expected = x + mixed.ops["sep_conv_3x3"](x)
    assert torch.allclose(mixed(x, torch.zeros(3), 1.0), expected, atol=1e-6)


def test_resampling_changes_scale_by_two():
    assert Down(8)(torch.randn(1, 4, 16, 16)).shape == (1, 8, 8, 8)
    assert Up(8)(torch.randn(1, 16, 4, 4)).shape == (1, 8, 8, 8)


def test_unknown_op_is_a_clear_error():
    with pytest.raises(KeyError, match="unknown op 'conv9'"):
        build_op("conv9", 4)
