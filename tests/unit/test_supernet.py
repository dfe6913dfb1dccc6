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


def test_layout_beta_moves_only_betas_gradient_to_the_inputs_layout():
    """``search.beta_gradient: layout`` (nn.cell.beta_mixture): the mixture's value and the
    inputs' gradients are those of Σ w_k x_k; w's gradient is ⟨g, x_k − μ_k⟩ (μ_k: x_k's
    per-channel spatial mean), so an input that is constant over space gives β nothing."""
    from nfs_orchestrator.nn.cell import beta_mixture

    torch.manual_seed(0)
    xs = [torch.randn(2, 4, 5, 5, requires_grad=True) for _ in range(3)]
    xs[2] = torch.randn(2, 4, 1, 1).expand(2, 4, 5, 5).clone().requires_grad_()  # no layout
    g = torch.randn(2, 4, 5, 5)
    grads = {}
    for layout in (False, True):
        w = torch.tensor([0.5, 1.0, 1.5], requires_grad=True)
        out = beta_mixture(xs, w, layout)
        (out * g).sum().backward()
        grads[layout] = (out.detach(), w.grad, [x.grad.clone() for x in xs])
        for x in xs:
            x.grad = None
    (plain, w_plain, x_plain), (value, w_layout, x_layout) = grads[False], grads[True]
    torch.testing.assert_close(value, plain)
    for a, b in zip(x_layout, x_plain):
        torch.testing.assert_close(a, b)
    expected = [float((g * (x - x.mean(dim=(2, 3), keepdim=True))).sum().detach()) for x in xs]
    torch.testing.assert_close(w_layout, torch.tensor(expected))
    assert float(w_layout[2]) == pytest.approx(0.0, abs=1e-5) and abs(float(w_plain[2])) > 0.1


@pytest.mark.parametrize("batched", [False, True])
def test_layout_beta_keeps_the_supernets_maps_and_weight_gradients(batched):
    """On the whole supernet (per part and batched alike): the same heatmaps and weight
    gradients with ``layout_beta`` on; β's gradient differs, and both paths give the same."""
    torch.manual_seed(0)
    model = PoseSupernet(
        load_fabric("tiny"), load_grouping("coco-p3"), build_backbone("tiny", random_init=True)
    )
    assert model.layout_beta is False  # the default: DARTS's mixture
    with torch.no_grad():
        for fabric in model.parts.values():
            fabric.beta.normal_()
    x = torch.randn(2, 3, 64, 64)
    seen = {}
    for layout in (False, True):
        model.zero_grad()
        model.batched, model.layout_beta = batched, layout
        y = model(x)
        y.square().mean().backward()
        seen[layout] = (
            y.detach(),
            torch.cat([f.beta.grad.flatten() for f in model.parts.values()]),
            [p.grad.clone() for p in model.weight_parameters() if p.grad is not None],
        )
    torch.testing.assert_close(seen[True][0], seen[False][0])
    for a, b in zip(seen[True][2], seen[False][2], strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.allclose(seen[True][1], seen[False][1])
    model.zero_grad()
    model.batched = not batched
    model(x).square().mean().backward()
    other = torch.cat([f.beta.grad.flatten() for f in model.parts.values()])
    torch.testing.assert_close(other, seen[True][1])


def test_drawn_inputs_read_one_input_per_cell_and_pass_beta_a_gradient():
    """``search.input_sampling: gumbel`` (nn.cell.input_weights): in training each cell reads
    exactly one input at weight 1 (the others at 0), drawn by β, and β still gets a gradient
    (the draw's soft one, GDAS); in eval the argmax input, the same every call."""
    from nfs_orchestrator.nn.cell import input_weights

    torch.manual_seed(0)
    beta = torch.tensor([0.0, -1.0, 2.0], requires_grad=True)
    draws = torch.stack([input_weights(beta, 1.0, draw=True, argmax=True) for _ in range(400)])
    assert set(draws.sum(dim=1).tolist()) == {1.0} and set(draws.flatten().tolist()) == {0.0, 1.0}
    share = draws.detach().mean(dim=0)  # ≈ softmax(β): 0.11, 0.04, 0.84
    assert float(share[2]) > 0.7 and float(share[0]) > float(share[1]) > 0.0
    (
        input_weights(beta, 1.0, draw=True, argmax=True) * torch.tensor([1.0, 2.0, 3.0])
    ).sum().backward()
    assert beta.grad is not None and float(beta.grad.abs().sum()) > 0
    eval_w = input_weights(beta, 1.0, draw=False, argmax=True)
    assert eval_w.tolist() == [0.0, 0.0, 1.0]
    torch.testing.assert_close(
        input_weights(beta.detach(), 1.0, draw=False, argmax=False), 3 * torch.softmax(beta, -1)
    )

    model = PoseSupernet(
        load_fabric("tiny"), load_grouping("coco-p3"), build_backbone("tiny", random_init=True)
    )
    model.sample_inputs, model.batched = True, True  # no batched form: the per-part path
    x = torch.randn(2, 3, 64, 64)
    with pytest.warns(UserWarning, match="input_sampling"):
        model(x).square().mean().backward()
    assert all(
        f.beta.grad is not None and f.beta.grad.abs().sum() > 0 for f in model.parts.values()
    )
    model.eval()
    with torch.no_grad(), pytest.warns(UserWarning):
        torch.testing.assert_close(model(x), model(x))  # the argmax inputs: no draw
