"""Honest sizes: parameters and MACs of the module that actually runs.

MACs come from ``torch.utils.flop_counter.FlopCounterMode`` on a real forward pass (FLOPs / 2),
so they count every conv, matmul and the upsampling convs, with nothing counted twice — unlike
the reference's ``get_model_summary`` (POSENFS-SPEC §6.2), whose figures are inflated by ≈1.5M
params and report conv MACs divided by 2^30.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from nfs_orchestrator.keypoints import PartGrouping
from nfs_orchestrator.specs import FabricSpace


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_size: tuple[int, int], batch: int = 1) -> int:
    """Multiply-accumulates of one forward pass on a (batch, 3, H, W) input, in eval mode."""
    w, h = input_size
    was_training = module.training
    module.eval()
    try:
        device = next(module.parameters()).device
        x = torch.zeros(batch, 3, h, w, device=device)
        with FlopCounterMode(
            display=False
        ) as counter:  # no no_grad: its module tracker needs grad_fns
            module(x)
        return counter.get_total_flops() // 2
    finally:
        module.train(was_training)


def supernet_summary(
    space: FabricSpace, grouping: PartGrouping, backbone: str, input_size: tuple[int, int]
) -> dict[str, int]:
    """``{"params", "arch_params", "macs"}`` of the supernet as it runs (random weights)."""
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from nfs_orchestrator.specs import check_compatible

    dataset = "mpii" if grouping.schema.name == "mpii16" else "coco"
    check_compatible(space, grouping, dataset, input_size)
    net = PoseSupernet(space, grouping, build_backbone(backbone, random_init=True))
    return {
        "params": count_params(net),
        "arch_params": sum(p.numel() for p in net.arch_parameters()),
        "macs": count_macs(net, input_size),
    }


def measure_genotype(genotype, backbone: nn.Module, input_size: tuple[int, int]):
    """The genotype with the params and MACs of its derived network filled in."""
    from nfs_orchestrator.nn.derived import DerivedPoseNet

    net = DerivedPoseNet(genotype, copy.deepcopy(backbone)).cpu()
    return genotype.with_size(input_size, count_params(net), count_macs(net, input_size))


def measured(genotype, input_size: tuple[int, int]):
    """``genotype`` with the params and MACs of its derived network at ``input_size``, built on
    a randomly initialised backbone of the genotype's name (sizes do not depend on weights)."""
    from nfs_orchestrator.nn.backbones import build_backbone

    backbone = build_backbone(genotype.backbone or "tiny", random_init=True)
    return measure_genotype(genotype, backbone, input_size)
