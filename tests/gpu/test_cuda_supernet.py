"""The supernet on CUDA: every search-cost variant trains, the batched path equals the per-part
one. Marked ``gpu``; skipped without CUDA (``benchmarks/gpu_check.sh`` runs these)."""

from __future__ import annotations

import pytest
import torch

from nfs_orchestrator.keypoints import load_grouping
from nfs_orchestrator.nn.backbones import build_backbone
from nfs_orchestrator.nn.supernet import PoseSupernet
from nfs_orchestrator.specs import load_fabric

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def build(parts: int = 3, **options) -> PoseSupernet:
    torch.manual_seed(0)
    net = PoseSupernet(
        load_fabric("tiny"),
        load_grouping(f"coco-p{parts}"),
        build_backbone("tiny", random_init=True),
        **options,
    )
    return net.cuda()


@pytest.mark.parametrize("options", [{}, {"partial_channels": 4}, {"sampling": "gumbel"}])
def test_forward_backward_on_cuda(options):
    net = build(**options)
    y = net(torch.randn(2, 3, 64, 64, device="cuda"))
    assert y.shape == (2, 17, 16, 16) and y.is_cuda
    y.square().mean().backward()
    assert all(f.alpha.grad is not None for f in net.parts.values())  # β: unless a zero drawn
    assert torch.isfinite(y).all()


def test_batched_equals_per_part_on_cuda():
    net = build(parts=5).eval()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        per_part = net(x)
        net.batched = True
        together = net(x)
    torch.testing.assert_close(together, per_part, rtol=1e-4, atol=1e-5)
