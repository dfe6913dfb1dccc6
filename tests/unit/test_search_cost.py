"""Search cost: PC-DARTS partial channels and GDAS sampled ops (nn/cell.py, search.* keys).

K = 1 is the exact old path (outputs and every gradient bit-equal to the pre-change MixedOp);
K > 1 and ``gumbel`` train in every search mode, derive the same genotype from the same α/β,
refuse the batched path by falling back to per-part, and are ordinary, validated search keys.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.keypoints import load_grouping
from nfs_orchestrator.nn.backbones import build_backbone
from nfs_orchestrator.nn.cell import MixedOp, channel_shuffle, partial_merge
from nfs_orchestrator.nn.supernet import PoseSupernet
from nfs_orchestrator.runtime import LocalRuntime
from nfs_orchestrator.search import bilevel
from nfs_orchestrator.search.loop import STATE_FILE, run_search
from nfs_orchestrator.specs import load_fabric, replace
from tests.conftest import tiny_trial

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "experiments" / "smoke.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(parts: int = 3, partial_channels: int = 1, sampling: str = "mixed", seed: int = 0):
    """The tiny supernet; with ``gumbel`` its ops lack ``zero``: in a one-edge cell (N = 1) a
    drawn zero empties the cell for that step, and the step test wants every α/β to move."""
    torch.manual_seed(seed)
    space = load_fabric("tiny")
    if sampling == "gumbel":
        space = replace(space, ops=tuple(o for o in space.ops if o != "zero"))
    return PoseSupernet(
        space,
        load_grouping(f"coco-p{parts}"),
        build_backbone("tiny", random_init=True),
        partial_channels,
        sampling,
    )


def batch(seed: int = 1, k: int = 17, size: int = 64) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.randn(2, 3, size, size, generator=g),
        "heatmaps": torch.rand(2, k, size // 4, size // 4, generator=g),
        "target_weight": torch.ones(2, k),
    }


def randomise_arch(net: PoseSupernet, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def old_mixed_forward(self, x, alpha, temperature):
    """MixedOp.forward before partial channels and sampling existed (commit 79a8745), verbatim."""
    weights = F.softmax(alpha / temperature, dim=-1)  # (|O|,)
    terms = [w * self.ops[name](x) for w, name in zip(weights, self.names) if name != "zero"]
    return len(self.names) * sum(terms)


def forward_and_grads(net: PoseSupernet, b: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    net.zero_grad(set_to_none=True)
    loss = bilevel.batch_loss(net, b)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


# --------------------------------------------------------------------------------------------
# Partial channels
# --------------------------------------------------------------------------------------------


def test_k1_is_bit_equal_to_the_old_mixed_op(monkeypatch):
    net = build(partial_channels=1)
    randomise_arch(net)
    net.temperature = 0.7
    b = batch()
    out_new = net(b["image"]).detach()
    loss_new, grads_new = forward_and_grads(net, b)
    # the same module and weights, through the pre-change code (BN buffers: reset to compare)
    net_old = build(partial_channels=1)
    randomise_arch(net_old)
    net_old.temperature = 0.7
    monkeypatch.setattr(MixedOp, "forward", old_mixed_forward)
    out_old = net_old(b["image"]).detach()
    loss_old, grads_old = forward_and_grads(net_old, b)
    assert torch.equal(out_new, out_old)
    assert torch.equal(loss_new, loss_old)
    assert grads_new.keys() == grads_old.keys()
    assert any("alpha" in n for n in grads_new) and any("beta" in n for n in grads_new)
    for name in grads_new:
        assert torch.equal(grads_new[name], grads_old[name]), name


def test_channel_shuffle_interleaves_groups():
    x = torch.arange(8.0).view(1, 8, 1, 1)
    assert channel_shuffle(x, 4).flatten().tolist() == [0, 2, 4, 6, 1, 3, 5, 7]


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_partial_merge_is_cat_then_shuffle_in_the_inputs_layout(layout):
    torch.manual_seed(0)
    y = torch.randn(2, 4, 5, 3).contiguous(memory_format=layout).requires_grad_()
    rest = torch.randn(2, 12, 5, 3).contiguous(memory_format=layout).requires_grad_()
    merged = partial_merge(y, rest, 4)
    reference = channel_shuffle(torch.cat([y, rest], dim=1), 4)
    assert torch.equal(merged, reference)
    assert merged.is_contiguous(memory_format=layout)
    g = torch.randn_like(merged)
    grads = torch.autograd.grad(merged, (y, rest), g)
    ref_grads = torch.autograd.grad(reference, (y, rest), g)
    assert all(torch.equal(a, b) for a, b in zip(grads, ref_grads))


def test_partial_edge_runs_ops_on_one_kth_and_passes_the_rest_by():
    torch.manual_seed(0)
    edge = MixedOp(16, ("zero", "skip_connect", "sep_conv_3x3"), partial_channels=4)
    assert edge.ops["sep_conv_3x3"][0].in_channels == 4  # ops built for C/K channels
    x = torch.randn(2, 16, 8, 8)
    y = edge(x, torch.zeros(3), 1.0)
    assert y.shape == x.shape
    # shuffled back: channel i·4 + g holds input block g's i-th channel; blocks 1-3 pass by
    unshuffled = y.view(2, 4, 4, 8, 8).transpose(1, 2).reshape(2, 16, 8, 8)
    assert torch.equal(unshuffled[:, 4:], x[:, 4:])
    assert not torch.equal(unshuffled[:, :4], x[:, :4])


@pytest.mark.parametrize("mode", ["first_order", "second_order", "sync"])
@pytest.mark.parametrize("option", [{"partial_channels": 4}, {"sampling": "gumbel"}])
def test_every_gradient_mode_steps(mode, option):
    net = build(parts=1, **option)
    net.train()
    weights, arch = list(net.weight_parameters()), list(net.arch_parameters())
    w_opt = torch.optim.Adam(weights, lr=1e-3)
    a_opt = torch.optim.Adam(arch, lr=3e-2)
    runtime = LocalRuntime("/tmp/posenfs-test-cost", verbose=False)
    state = bilevel.StepState(net, weights, arch, w_opt, a_opt, runtime, None, 1e-3, 0.0, None)
    before = [p.detach().clone() for p in arch]
    train_loss, _ = bilevel.STEPS[mode](state, [batch(1)], iter([[batch(2)]]))
    assert train_loss == train_loss  # not NaN
    assert any(not torch.equal(a, p) for a, p in zip(before, arch))  # α/β moved


def test_batched_path_falls_back_to_per_part_with_the_reason():
    net = build(partial_channels=4)
    net.eval()
    x = batch()["image"]
    per_part = net(x)
    net.batched = True
    with pytest.warns(UserWarning, match="partial_channels 4"):
        together = net(x)
    assert torch.equal(per_part, together)


# --------------------------------------------------------------------------------------------
# Sampled ops (GDAS)
# --------------------------------------------------------------------------------------------


def test_gumbel_edge_runs_one_op_and_alpha_gets_gradient():
    torch.manual_seed(0)
    names = ("skip_connect", "sep_conv_3x3", "atr_conv_3x3")
    edge = MixedOp(8, names, sampling="gumbel").train()
    alpha = torch.zeros(3, requires_grad=True)
    x = torch.randn(2, 8, 8, 8)
    for _ in range(6):  # several draws: each time only the drawn op's weights get gradients
        edge.zero_grad(set_to_none=True)
        alpha.grad = None
        y = edge(x, alpha, 1.0)
        y.square().mean().backward()
        assert alpha.grad is not None and float(alpha.grad.abs().sum()) > 0
        with_grad = {n for n in names if any(p.grad is not None for p in edge.ops[n].parameters())}
        assert len(with_grad) <= 1
        if with_grad:
            (drawn,) = with_grad
            assert torch.equal(y.detach(), edge.ops[drawn](x).detach())


def test_gumbel_eval_is_the_argmax_nonzero_op_deterministically():
    torch.manual_seed(0)
    names = ("zero", "skip_connect", "sep_conv_3x3")
    edge = MixedOp(8, names, sampling="gumbel").eval()
    x = torch.randn(2, 8, 8, 8)
    alpha = torch.tensor([5.0, 0.0, 1.0])  # zero is strongest: excluded, as in the genotype
    assert torch.equal(edge(x, alpha, 1.0), edge.ops["sep_conv_3x3"](x))
    assert torch.equal(edge(x, alpha, 1.0), edge(x, alpha, 1.0))


def test_same_arch_same_genotype_whatever_the_option():
    nets = [build(), build(partial_channels=4)]
    torch.manual_seed(0)
    nets.append(
        PoseSupernet(
            load_fabric("tiny"),
            load_grouping("coco-p3"),
            build_backbone("tiny", random_init=True),
            sampling="gumbel",
        )
    )
    for net in nets:
        randomise_arch(net, seed=5)
    fingerprints = {net.genotype().fingerprint() for net in nets}
    assert len(fingerprints) == 1


# --------------------------------------------------------------------------------------------
# Spec keys
# --------------------------------------------------------------------------------------------


def test_partial_channels_must_divide_every_cell():
    with pytest.raises(SpecError, match=r"search\.partial_channels: 3 does not divide"):
        load_campaign(SMOKE, ("search.partial_channels=3",)).trial({})
    with pytest.raises(SpecError, match="partial_channels: 0 must be ≥ 1"):
        load_campaign(SMOKE, ("search.partial_channels=0",))
    with pytest.raises(SpecError, match="sampling"):
        load_campaign(SMOKE, ("search.sampling=gdas",))


def test_campaign_compares_exact_and_partial_channel_darts(tmp_path):
    text = SMOKE.read_text().replace(
        "outer:\n",
        "outer:\n  search.partial_channels: {type: categorical, choices: [1, 4]}\n"
        "  search.sampling: {type: categorical, choices: [mixed, gumbel]}\n",
    )
    path = tmp_path / "pc.yaml"
    path.write_text(text)
    campaign = load_campaign(path)
    trials = [campaign.trial({"search.partial_channels": k}) for k in (1, 4)]
    assert [t.search.partial_channels for t in trials] == [1, 4]
    assert trials[0].fingerprint() != trials[1].fingerprint()
    gumbel = campaign.trial({"search.sampling": "gumbel"})
    assert gumbel.search.sampling == "gumbel"
    for t in trials:
        net = PoseSupernet(
            t.fabric,
            t.grouping,
            build_backbone("tiny", random_init=True),
            t.search.partial_channels,
            t.search.sampling,
        )
        assert net(torch.randn(1, 3, 64, 64)).shape == (1, 17, 16, 16)
    from nfs_orchestrator.orchestration.tracking import trial_params

    params = trial_params(trials[1])
    assert params["partial_channels"] == "4" and params["sampling"] == "mixed"


@pytest.mark.parametrize("option", [{"partial_channels": 4}, {"sampling": "gumbel"}])
def test_search_loop_builds_the_option_into_the_supernet(tmp_path, synthetic_root, option):
    trial = tiny_trial(synthetic_root, mode="first_order", epochs=1, steps=1, **option)
    runtime = LocalRuntime(tmp_path, verbose=False)
    metrics = run_search(trial, runtime)
    assert metrics["epoch"] == 0 and "val_ap" in metrics  # trained a step and validated
    state = torch.load(Path(runtime.latest_checkpoint()) / STATE_FILE, weights_only=True)
    keys = [k for k in state["model"] if k.endswith(".edges.0.ops.sep_conv_3x3.0.weight")]
    channels = {state["model"][k].shape[0] for k in keys}  # depthwise: out = in channels
    k = option.get("partial_channels", 1)
    assert channels == {c // k for c in trial.fabric.channels()[:3]}  # cells at strides 4/8/16


def _sync_rank(rank: int, port: int, out) -> None:
    import torch.distributed as dist

    from nfs_orchestrator.runtime import DistributedOps

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(3))
        drawn = a if rank == 0 else b  # each rank drew a different op: one grad is None
        drawn.grad = torch.full_like(drawn, 2.0)
        DistributedOps().sync_gradients([a, b])
        out.put((rank, a.grad.tolist(), b.grad.tolist()))
    finally:
        dist.destroy_process_group()


def test_ranks_with_different_unused_parameters_sync_without_hanging():
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_sync_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    # a missing gradient counts as zero: both ranks hold the mean of (2, 0) everywhere
    assert results == [(0, [1.0, 1.0], [1.0, 1.0, 1.0]), (1, [1.0, 1.0], [1.0, 1.0, 1.0])]
