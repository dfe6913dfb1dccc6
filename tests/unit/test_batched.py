"""The batched part path (nn.batched) equals the per-part reference path, in fp32.

For each configuration, one supernet and a deep copy run a training forward and backward, one
per path, from the same random α/β (temperature 0.7, so every softmax is non-uniform): the merged
heatmaps, the gradient of every parameter (backbone, weights, α, β) and every buffer (BN running
statistics and counters) must agree to a relative error ≤ 1e-5 (‖a − b‖ ≤ 1e-5·‖b‖). Then both
switch to eval mode, where the updated running statistics are read.

Two kinds of gradient are not determined to 1e-5 by fp32 itself, whichever path computes them:
- zero in exact arithmetic (a bias feeding a training-mode BN through a conv): round-off in both
  paths; the test asserts both are round-off-small;
- ill-conditioned (e.g. a cell's output bias whose gradient is a sum of cancelling terms): there
  the per-part fp32 result is itself ~1e-4 away from an fp64 run. Such a tensor passes when the
  batched result is as close to the fp64 per-part result as the fp32 per-part one is (≤ 3×).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from nfs_orchestrator.keypoints import Part, PartGrouping, load_grouping
from nfs_orchestrator.nn.backbones import build_backbone
from nfs_orchestrator.nn.batched import batched_forward, batched_parts, unsupported_reason
from nfs_orchestrator.nn.supernet import PoseSupernet, merge_parts
from nfs_orchestrator.specs import OP_NAMES, load_fabric, replace

RTOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These nets are small: one thread is as fast, and immune to OpenMP stalls on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(space, grouping: str, backbone: str, merge: str | None = None) -> PoseSupernet:
    torch.manual_seed(0)
    g = load_grouping(grouping)
    if merge is not None:
        g = type(g)(name=g.name, schema=g.schema, parts=g.parts, merge=merge)
    space = load_fabric(space) if isinstance(space, str) else space
    net = PoseSupernet(space, g, build_backbone(backbone, random_init=True))
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    net.temperature = 0.7
    return net


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def forward(net: PoseSupernet, inputs: list[torch.Tensor], batched: bool) -> torch.Tensor:
    """inputs: [images (B, 3, H, W)] through the backbone, or a pyramid fed to the parts alone."""
    if len(inputs) == 1:
        return batched_forward(net, inputs[0]) if batched else net(inputs[0])
    if batched:
        return batched_parts(net, inputs)
    maps = [fabric(inputs, net.temperature) for fabric in net.parts.values()]
    return merge_parts(maps, net.grouping, net.channel_index())  # the reference path


def assert_paths_equal(net: PoseSupernet, inputs: list[torch.Tensor]) -> None:
    """Per-part (a deep copy) vs batched: train forward, the gradient of every parameter and
    input, the buffers after the step, then the eval forward."""
    ref, pristine = copy.deepcopy(net), copy.deepcopy(net)

    def leaves(dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
        return [t.detach().to(dtype).requires_grad_() for t in inputs]

    x_ref, x = leaves(), leaves()
    y_ref, y = forward(ref, x_ref, batched=False), forward(net, x, batched=True)  # (B, K, h, w)
    assert y.shape == y_ref.shape and y.shape[1] == net.grouping.num_keypoints
    probe = torch.randn_like(y_ref)  # loss = Σ probe·y: a different gradient at every pixel
    (y_ref * probe).sum().backward()
    (y * probe).sum().backward()

    exact: dict[str, torch.Tensor] = {}  # fp64 per-part results, computed only when needed

    def fp64() -> dict[str, torch.Tensor]:
        if not exact:
            net64, x64 = pristine.double(), leaves(torch.float64)
            y64 = forward(net64, x64, batched=False)
            (y64 * probe.double()).sum().backward()
            exact.update({n: p.grad for n, p in net64.named_parameters()}, output=y64.detach())
            exact.update({f"input.{i}": t.grad for i, t in enumerate(x64)})
        return exact

    def check(name: str, got: torch.Tensor, want: torch.Tensor) -> None:
        if rel(got, want) <= RTOL:
            return
        truth = fp64()[name]
        assert rel(got, truth) <= 3 * rel(want, truth), (name, rel(got, want), rel(want, truth))

    check("output", y, y_ref)
    for i, (t, t_ref) in enumerate(zip(x, x_ref)):
        check(f"input.{i}", t.grad, t_ref.grad)
    grads = {n: p.grad for n, p in ref.named_parameters()}
    used = {n for n, g in grads.items() if g is not None}  # all, or all but the backbone
    assert {n for n, p in net.named_parameters() if p.grad is not None} == used
    largest = max(float(grads[n].norm()) for n in used)
    for name, p in net.named_parameters():
        if name not in used:
            continue
        if float(grads[name].norm()) <= 1e-7 * largest:  # zero up to round-off
            assert float(p.grad.norm()) <= 1e-6 * largest, name
        else:
            check(name, p.grad, grads[name])

    buffers = dict(ref.named_buffers())
    for name, b in net.named_buffers():
        if b.is_floating_point():
            assert rel(b, buffers[name]) <= RTOL, name
        else:
            assert torch.equal(b, buffers[name]), name  # num_batches_tracked, channel indices

    ref.eval()
    net.eval()
    with torch.no_grad():
        assert rel(forward(net, inputs, True), forward(ref, inputs, False)) <= RTOL


def images(batch: int = 2, size: int = 64) -> list[torch.Tensor]:
    return [torch.randn(batch, 3, size, size)]


@pytest.mark.parametrize(
    "grouping, merge",
    [
        ("coco-p1", None),
        ("coco-p3", None),
        ("coco-p5", None),
        ("coco-p8", None),
        ("coco-p8", "mean"),
    ],
)
def test_tiny_space_every_grouping(grouping, merge):
    net = build("tiny", grouping, "tiny", merge)
    assert unsupported_reason(net) is None
    keys = list(net.state_dict())
    assert_paths_equal(net, images())
    assert list(net.state_dict()) == keys  # nothing registered: checkpoints keep their keys


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_equal_part_sizes_and_channels_last(layout):
    """Four MPII parts of four keypoints: the heads need no padding. channels_last takes the
    grouped-conv branch for 1×1 convs instead of the batched GEMM."""
    g = load_grouping("mpii-p1")
    kps = g.schema.keypoints
    parts = tuple(Part(f"quarter{i}", tuple(kps[4 * i : 4 * i + 4])) for i in range(4))
    g = PartGrouping(name="mpii-quarters", schema=g.schema, parts=parts)
    torch.manual_seed(0)
    net = PoseSupernet(load_fabric("tiny"), g, build_backbone("tiny", random_init=True))
    with torch.no_grad():
        for p in net.arch_parameters():
            p.normal_()
    net = net.to(memory_format=layout)
    assert_paths_equal(net, [images()[0].contiguous(memory_format=layout)])


def test_cell_alpha_hidden_nodes_vector_head_every_op():
    space = replace(
        load_fabric("tiny"), alpha_sharing="cell", hidden_nodes=2, head="vector", ops=OP_NAMES
    )
    net = build(space, "coco-p3", "tiny")
    assert net.parts["head"].alpha.shape == (6, 3, len(OP_NAMES))
    assert_paths_equal(net, images())


def test_five_scales_stride64_adapter():
    space = replace(load_fabric("tiny"), scales=(4, 8, 16, 32, 64), depth=6, cut=2)  # 4-3-2-1
    assert_paths_equal(build(space, "coco-p5", "tiny"), images())


def test_hrnet_space_five_parts():
    """The paper's space on an HRNet-W32 pyramid of a 64×64 input. The parts are fed that
    pyramid directly (its gradient is compared): the backbone is shared by both paths, and the
    tiny tests above already run the whole supernet, backbone gradients included."""
    net = build("hrnet-w32_cnf5_mpii-256x256", "mpii-p5", "hrnet_w32")
    assert not net.parts["hips"].adapters.identity  # per-part 1×1 adapters, batched as one conv
    with torch.no_grad():
        pyramid = net.backbone(images()[0])  # 4 × (2, 32·2^l, 16/2^l, 16/2^l)
    assert_paths_equal(net, pyramid)


class _Batched(nn.Module):
    def __init__(self, net: PoseSupernet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return batched_forward(self.net, images)


def test_functional_call_swaps_parameters():
    """Second-order search calls the model with swapped parameters: the batched path reads
    them at call time, so it sees the swapped ones too."""
    net = build("tiny", "coco-p3", "tiny").eval()
    x = torch.randn(1, 3, 64, 64)
    swapped = {n: p.detach() * 1.1 for n, p in net.named_parameters()}
    y_ref = functional_call(net, swapped, (x,))
    y = functional_call(_Batched(net), {f"net.{n}": p for n, p in swapped.items()}, (x,))
    assert rel(y, y_ref) <= RTOL and rel(y, net(x)) > 1e-3


def test_non_uniform_parts_fall_back_with_reason():
    net = build("tiny", "coco-p3", "tiny").eval()
    net.parts["lower_limb"].cells["s0_d3"].edges[0].ops["skip_connect"] = nn.Sequential(
        nn.Identity()
    )
    reason = unsupported_reason(net)
    assert reason is not None and "lower_limb" in reason
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(UserWarning, match="cannot be batched"):
        y = batched_forward(net, x)
    assert torch.equal(y, net(x))
