"""The supernet for every shipped space: shapes, gradients everywhere, α/β apart, merging."""

from __future__ import annotations

import pytest
import torch

from nfs_orchestrator.keypoints import load_grouping
from nfs_orchestrator.nn.backbones import build_backbone
from nfs_orchestrator.nn.supernet import PoseSupernet, merge_parts
from nfs_orchestrator.specs import load_fabric

# (space, grouping, backbone, small input (W, H)): every shipped space with its backbone.
SHIPPED = [
    ("tiny", "coco-p3", "tiny", (64, 64)),
    ("hrnet-w32_cnf5_mpii-256x256", "mpii-p5", "hrnet_w32", (64, 64)),
    ("hrnet-w32_cnf5_coco-384x288", "coco-p5", "hrnet_w32", (64, 96)),
    ("mobilenetv2_cnf3_coco-384x288", "coco-p3", "mobilenet_v2", (64, 96)),
    ("resnet50_cnf3_coco-256x192", "coco-p3", "resnet50", (64, 64)),
]


@pytest.mark.parametrize("space, grouping, backbone, size", SHIPPED)
def test_forward_backward_every_shipped_space(space, grouping, backbone, size):
    g = load_grouping(grouping)
    net = PoseSupernet(load_fabric(space), g, build_backbone(backbone, random_init=True))
    w, h = size
    y = net(torch.randn(2, 3, h, w))
    assert y.shape == (2, g.num_keypoints, h // 4, w // 4)
    y.square().mean().backward()
    dead = [n for n, p in net.named_parameters() if p.grad is None]
    assert dead == []  # no dead modules: every parameter is used in forward
    if load_fabric(space).head == "vector":
        assert 0 <= float(y.detach().min()) and float(y.detach().max()) < 1  # squashed lengths


def test_arch_and_weight_parameters_partition_the_model():
    net = PoseSupernet(
        load_fabric("tiny"), load_grouping("coco-p5"), build_backbone("tiny", random_init=True)
    )
    arch = list(net.arch_parameters())
    weights = list(net.weight_parameters())
    assert len(arch) == 2 * 5
    assert {id(p) for p in arch}.isdisjoint({id(p) for p in weights})
    assert len(arch) + len(weights) == len(list(net.parameters()))
    assert all(float(p.abs().sum()) == 0 for p in arch)  # uniform start (zeros)
    assert net.parts["legs"].alpha.shape == (1, 4) and net.parts["legs"].beta.shape == (6, 3)


def test_overlapping_parts_sum_or_average():
    g = load_grouping("coco-p8")
    maps = [torch.ones(1, len(p.keypoints), 2, 2) for p in g.parts]
    index = [torch.tensor(g.indices(p)) for p in g.parts]
    summed = merge_parts(maps, g, index)
    assert summed[0, 5, 0, 0] == 2 and summed[0, 0, 0, 0] == 1  # shoulder in two parts
    mean_g = type(g)(name=g.name, schema=g.schema, parts=g.parts, merge="mean")
    assert torch.all(merge_parts(maps, mean_g, index) == 1)


def test_per_cell_alpha_sharing():
    from nfs_orchestrator.specs import replace

    space = replace(load_fabric("tiny"), alpha_sharing="cell")
    net = PoseSupernet(space, load_grouping("coco-p1"), build_backbone("tiny", random_init=True))
    assert net.parts["whole_body"].alpha.shape == (6, 1, 4)
    net(torch.randn(1, 3, 64, 64)).sum().backward()
    assert net.parts["whole_body"].alpha.grad.abs().sum() > 0


def test_only_pyramid_levels_the_first_layer_reads_get_adapters():
    from nfs_orchestrator.specs import FabricSpace

    # depth 5 / cut 1 over five scales: the first layer (3 cells) reads levels 0-3, never 64
    space = FabricSpace(name="x", depth=5, cut=1, scales=(4, 8, 16, 32, 64), channel_factor=4)
    net = PoseSupernet(space, load_grouping("coco-p1"), build_backbone("tiny", random_init=True))
    net(torch.randn(1, 3, 128, 128)).sum().backward()
    assert [n for n, p in net.named_parameters() if p.grad is None] == []
    assert net.parts["whole_body"].adapters.levels == (0, 1, 2, 3)
