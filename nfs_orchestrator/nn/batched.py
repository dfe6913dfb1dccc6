"""The P part fabrics of a ``PoseSupernet`` computed together, in one batched pass (DESIGN §9).

The per-part path runs P ``SearchFabric``s one after another. Here the P parts' features are
stacked along channels — part p owns channels [p·C, (p+1)·C) of a (B, P·C, H, W) tensor — and
every cell op runs once for all parts:

- Convs become one grouped conv (``groups = P·g``: 3×3 resampling, depthwise k×k) whose weight
  is ``torch.cat`` of the P parts' weights, built in every forward, so autograd returns each
  part's gradient to its own parameter. 1×1 convs on stacked features are one batched GEMM
  (``bmm``) instead: a CPU runs a grouped 1×1 conv group by group. A conv fed by the shared
  backbone pyramid (adapters; first-layer resampling when the adapters are identity) is one
  plain conv with P·C output channels.
- BatchNorm is per channel, so one ``F.batch_norm`` over the concatenated channels is the P
  BNs; their running buffers are concatenated, updated by the kernel and copied back to each
  part's own buffers (``num_batches_tracked`` too), exactly as the per-part modules would.
- α/β mixing weights are softmaxed for all parts at once and broadcast per channel block
  (mul + addcmul); pooling, ReLU and bilinear upsampling are per channel already.
- Heads (K_p differs per part): one grouped 1×1 conv whose weight is each part's zero-padded to
  max K_p rows, then the real channels are gathered; the merge is one ``index_add``.

Parameters and buffers stay those of the per-part modules (same ``state_dict`` keys); nothing is
registered here. The per-part ``SearchFabric.forward`` remains the reference path and this one is
tested equal to it (fp32, forward, every gradient, BN buffers). What this is not: a new module
tree, a derived-network path (``DerivedFabric`` parts differ per genotype), or a kernel library.

Speed: the point is fewer, larger kernels (one per cell op instead of P), which pays where
launches dominate (GPUs). On a CPU the per-part path is already compute-bound, and P-times
larger tensors fall out of cache: ``benchmarks/parts_batched.py`` measures both.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nfs_orchestrator.nn.cell import MixedOp, SearchCell
from nfs_orchestrator.nn.fabric import Adapters, Head, SearchFabric
from nfs_orchestrator.nn.ops import Up, Zero

if TYPE_CHECKING:
    from nfs_orchestrator.nn.supernet import PoseSupernet

__all__ = ["batched_forward", "batched_parts", "unsupported_reason"]


# --------------------------------------------------------------------------------------------
# Can these parts be batched?
# --------------------------------------------------------------------------------------------

_REASONS: weakref.WeakKeyDictionary[nn.Module, str | None] = weakref.WeakKeyDictionary()
_BATCHABLE = (
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.ReLU,
    nn.Identity,
    nn.AvgPool2d,
    nn.MaxPool2d,
    Zero,
    Up,
    MixedOp,
    SearchCell,
    Adapters,
    Head,
    SearchFabric,
)


def _signature(m: nn.Module) -> tuple:
    """What must be equal between parts for a module to be batched (heads: all but K_p)."""
    if isinstance(m, nn.Conv2d):
        return (m.stride, m.padding, m.dilation, m.groups, m.padding_mode, m.bias is None)
    if isinstance(m, nn.BatchNorm2d):
        return (m.eps, m.momentum, m.affine, m.track_running_stats)
    if isinstance(m, MixedOp):
        return (m.names, m.partial_channels, m.sampling)
    if isinstance(m, Head):
        return (m.kind, m.vector_dim)
    if isinstance(m, Adapters):
        return (m.identity, m.levels)
    return ()


def unsupported_reason(supernet: PoseSupernet) -> str | None:
    """Why the parts of ``supernet`` cannot be computed together, or None when they can.

    Parts are uniform by design (one space for all); this checks it once per supernet (the
    answer is cached): same module tree, types, shapes and settings except the head's K_p.
    """
    if supernet in _REASONS:
        return _REASONS[supernet]
    reason = _find_reason(supernet)
    _REASONS[supernet] = reason
    return reason


def _find_reason(supernet: PoseSupernet) -> str | None:
    fabrics = list(supernet.parts.values())
    if not all(type(f) is SearchFabric for f in fabrics):
        return "a part is not a SearchFabric"
    if any(f.space != fabrics[0].space for f in fabrics):
        return "parts have different search spaces"
    first = fabrics[0]
    if first.partial_channels != 1 or first.sampling != "mixed":
        return (
            f"partial_channels {first.partial_channels} / sampling {first.sampling!r} have no "
            f"batched form (only partial_channels 1 with sampling 'mixed')"
        )
    ref = list(fabrics[0].named_modules())
    for name, fabric in zip(supernet.parts, fabrics):
        mods = list(fabric.named_modules())
        if [n for n, _ in mods] != [n for n, _ in ref]:
            return f"part {name!r} has a different module tree"
        for (path, m), (_, r) in zip(mods, ref):
            if type(m) is not type(r) or not isinstance(m, _BATCHABLE):
                return f"part {name!r}: {path} ({type(m).__name__}) has no batched form"
            if _signature(m) != _signature(r):
                return f"part {name!r}: {path} differs in its settings"
            if isinstance(m, nn.BatchNorm2d) and m.momentum is None:
                return f"part {name!r}: {path} uses a cumulative BN average (momentum None)"
            if isinstance(m, nn.Conv2d) and m.padding_mode != "zeros":
                return f"part {name!r}: {path} pads with {m.padding_mode!r}"
        for (path, p), (_, r) in zip(fabric.named_parameters(), fabrics[0].named_parameters()):
            if p.shape != r.shape and not path.startswith("head."):
                return f"part {name!r}: {path} has shape {tuple(p.shape)} != {tuple(r.shape)}"
    return None


# --------------------------------------------------------------------------------------------
# Batched building blocks: each takes the P parts' modules (grouping order) and a tensor that is
# either stacked (B, P·C, H, W) or shared by all parts (B, C, H, W): the backbone pyramid.
# --------------------------------------------------------------------------------------------


def _cat(tensors: Sequence[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(list(tensors))


class _Batch:
    """One batched forward: the part count and the BN buffer updates to write back at its end."""

    def __init__(self, parts: int) -> None:
        self.parts = parts
        self.copy_to: list[Tensor] = []  # each part's running_mean / running_var
        self.copy_from: list[Tensor] = []  # the matching slices of the updated concatenation
        self.counters: list[Tensor] = []  # each part's num_batches_tracked

    def finish(self) -> None:
        with torch.no_grad():
            if not self.counters:  # eval mode: nothing was updated
                return
            if hasattr(torch, "_foreach_copy_"):  # one call for all buffers
                if self.copy_to:  # empty for P = 1: the kernel updated the buffers in place
                    torch._foreach_copy_(self.copy_to, self.copy_from)
                torch._foreach_add_(self.counters, 1)
            else:
                for dst, src in zip(self.copy_to, self.copy_from):
                    dst.copy_(src)
                for counter in self.counters:
                    counter.add_(1)

    def conv(self, convs: Sequence[nn.Conv2d], x: Tensor) -> Tensor:
        """(B, P·c_in | c_in, H, W) → (B, P·c_out, H', W'): one kernel for the P parts' convs."""
        m = convs[0]
        shared = self.parts > 1 and x.shape[1] == m.in_channels
        if shared and m.groups != 1:
            raise ValueError("a grouped conv cannot read the shared pyramid")
        weight = _cat([c.weight for c in convs])  # (P·c_out, c_in / g, k, k)
        bias = None if m.bias is None else _cat([c.bias for c in convs])
        if not shared and _is_pointwise(m):
            return self.pointwise(x, weight, bias)
        groups = m.groups if shared else m.groups * self.parts
        return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, groups)

    def pointwise(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The P parts' 1×1 convs on stacked features: x (B, P·c_in, H, W), weight
        (P·c_out, c_in, 1, 1) → (B, P·c_out, H, W).

        One batched GEMM (B·P products of c_out × c_in by c_in × HW) when x is contiguous: on a
        CPU, PyTorch runs a grouped 1×1 conv group by group (THNN) or through oneDNN, by thread
        count; one bmm is the same FLOPs in a single BLAS call, forward and backward. Other
        layouts (channels_last) keep the grouped conv.
        """
        p = self.parts
        if p == 1 or not x.is_contiguous():
            return F.conv2d(x, weight, bias, groups=p)
        b, _, h, w = x.shape
        c_out, c_in = weight.shape[0] // p, weight.shape[1]
        w3 = weight.view(1, p, c_out, c_in).expand(b, p, c_out, c_in).reshape(b * p, c_out, c_in)
        x3 = x.view(b * p, c_in, h * w)  # (B·P, c_in, HW)
        if bias is None:
            y = torch.bmm(w3, x3)
        else:
            b3 = bias.view(1, p, c_out, 1).expand(b, p, c_out, 1).reshape(b * p, c_out, 1)
            y = torch.baddbmm(b3, w3, x3)  # (B·P, c_out, HW)
        return y.view(b, p * c_out, h, w)

    def batch_norm(self, bns: Sequence[nn.BatchNorm2d], x: Tensor) -> Tensor:
        """BN over the concatenated channels; running buffers updated as each part's BN would."""
        m = bns[0]
        if any(b.training != m.training for b in bns):
            raise ValueError("parts are in different train/eval modes")
        update = m.training and m.track_running_stats
        tracked = m.track_running_stats and m.running_mean is not None
        mean = _cat([b.running_mean for b in bns]) if tracked else None  # (P·C,)
        var = _cat([b.running_var for b in bns]) if tracked else None
        if update and self.parts > 1:  # P = 1 updates the part's own buffers in place
            c = m.num_features
            self.copy_to += [b.running_mean for b in bns] + [b.running_var for b in bns]
            self.copy_from += list(mean.split(c)) + list(var.split(c))
        if update:
            self.counters += [b.num_batches_tracked for b in bns]
        weight = _cat([b.weight for b in bns]) if m.affine else None
        bias = _cat([b.bias for b in bns]) if m.affine else None
        training = m.training or not tracked
        return F.batch_norm(x, mean, var, weight, bias, training, m.momentum, m.eps)

    def layers(self, mods: Sequence[nn.Module], x: Tensor) -> Tensor:
        """The batched form of one module of every part (a conv, BN, Sequential, …)."""
        m = mods[0]
        if isinstance(m, nn.Conv2d):
            return self.conv(mods, x)  # type: ignore[arg-type]
        if isinstance(m, nn.BatchNorm2d):
            return self.batch_norm(mods, x)  # type: ignore[arg-type]
        if isinstance(m, nn.ReLU):
            return F.relu(x)
        if isinstance(m, nn.Identity):
            return x
        if isinstance(m, nn.AvgPool2d | nn.MaxPool2d):
            return m(x)  # per channel: one call serves every part
        if isinstance(m, nn.Sequential):
            for i in range(len(m)):
                x = self.layers([s[i] for s in mods], x)
            return x
        if isinstance(m, Up):
            y = self.batch_norm([u.bn for u in mods], self.conv([u.conv for u in mods], x))
            return F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=True)
        raise NotImplementedError(f"no batched form for {type(m).__name__}")

    def weighted_sum(self, xs: Sequence[Tensor], ws: Sequence[Tensor], c: int) -> Tensor:
        """Σ_i w_i[p] · (part p's channel block of x_i), for every part: each x_i is stacked
        (B, P·C, H, W) or shared (B, C, H, W), each w_i is (P,) → (B, P·C, H, W).

        One mul and then one addcmul per term: a term costs one pass over the output. The
        weights are spread to one per channel, (1, P·C, 1, 1), so that the broadcast is along
        whole channels in either memory format; shared inputs broadcast over a part axis."""
        p = self.parts
        if all(x.shape[1] == p * c for x in xs):  # (B, P·C, H, W) by (1, P·C, 1, 1)
            x_view = list(xs)
            w_view = [w.view(p, 1).expand(p, c).reshape(1, p * c, 1, 1) for w in ws]
        else:  # (B, P | 1, C, H, W) by (1, P, 1, 1, 1)
            x_view = [x.unflatten(1, (x.shape[1] // c, c)) for x in xs]
            w_view = [w.view(1, p, 1, 1, 1) for w in ws]
        total = x_view[0] * w_view[0]
        for x, w in zip(x_view[1:], w_view[1:]):
            total = torch.addcmul(total, x, w)
        return total.flatten(1, 2) if total.dim() == 5 else total

    def mixed_op(self, edges: Sequence[MixedOp], x: Tensor, w: Tensor, c: int) -> Tensor:
        """|O|·Σ_o softmax(α)_o · o(x) for every part: x (B, P·C, H, W), w (P, |O|) softmaxed.

        |O| is folded into the weights (exact when |O| is a power of two, as in every shipped
        space; otherwise within one rounding of the per-part order)."""
        names = edges[0].names
        kept = [o for o, name in enumerate(names) if name != "zero"]  # zero adds nothing
        outs = [self.layers([e.ops[names[o]] for e in edges], x) for o in kept]
        weights = [len(names) * w[:, o] for o in kept]
        return self.weighted_sum(outs, weights, c)  # (B, P·C, H, W)

    def cell(
        self,
        cells: Sequence[SearchCell],
        inputs: Sequence[Tensor],
        alpha: Tensor,
        beta: Tensor,
        c: int,
        layout_beta: bool = False,
    ) -> Tensor:
        """A cell of every part: inputs (parallel, above, below) stacked or shared,
        alpha (P, k, |O|) and beta (P, 3) already softmaxed → (B, P·C, H_i, W_i).
        ``layout_beta``: β's gradient reads each input's layout only (nn.cell.beta_mixture)."""
        xs = [
            self.layers([cl.resample[s] for cl in cells], x) for s, x in enumerate(inputs)
        ]  # (parallel, above, below), each (B, P·C | C, H_i, W_i)
        w = [3 * beta[:, k] for k in range(3)]  # each (P,)
        if layout_beta:  # Σ w (x − μ) + sg(w) μ: the same value, β's gradient from x − μ only
            means = [x.mean(dim=(2, 3), keepdim=True) for x in xs]  # each (B, P·C | C, 1, 1)
            mixed = self.weighted_sum([x - m for x, m in zip(xs, means)], w, c)
            mixed = mixed + self.weighted_sum(means, [wk.detach() for wk in w], c)
        else:
            mixed = self.weighted_sum(xs, w, c)
        states = [F.relu(mixed, inplace=True)]  # (B, P·C, H_i, W_i)
        n_hidden, e = cells[0].hidden_nodes, 0
        for _ in range(n_hidden):
            n = len(states)
            node = self.mixed_op([cl.edges[e] for cl in cells], states[0], alpha[:, e], c)
            for j in range(1, n):
                edges = [cl.edges[e + j] for cl in cells]
                node = node + self.mixed_op(edges, states[j], alpha[:, e + j], c)
            states.append(node)
            e += n
        if n_hidden > 1:  # per part: its N hidden states' channel blocks, in order
            blocks = [s.unflatten(1, (self.parts, c)) for s in states[-n_hidden:]]
            out = torch.cat(blocks, dim=2).flatten(1, 2)  # (B, P·N·C, H, W)
        else:
            out = states[-1]
        return self.conv([cl.out for cl in cells], out)  # (B, P·C, H_i, W_i)

    def adapters(self, adapters: Sequence[Adapters], pyramid: Sequence[Tensor]) -> list[Tensor]:
        """Backbone pyramid → per level a stacked (B, P·C_l, …) or, for identity levels,
        the shared pyramid map itself (B, C_l, …)."""
        a = adapters[0]
        out = []
        for lvl in a.levels:
            if lvl < 4 and a.identity:
                out.append(pyramid[lvl])
            else:
                x = pyramid[3] if lvl >= 4 else pyramid[lvl]
                out.append(self.layers([ad.convs[str(lvl)] for ad in adapters], x))
        return out

    def heads(self, heads: Sequence[Head], x: Tensor) -> Tensor:
        """(B, P·C, h, w) → every part's maps in part order: (B, Σ K_p, h, w)."""
        convs: list[nn.Conv2d] = [h.conv[1] for h in heads]
        x = F.relu(x)
        sizes = [c.out_channels for c in convs]  # K_p (·D for the vector head)
        top = max(sizes)
        if all(s == top for s in sizes):
            return self._squash(heads[0], self.conv(convs, x))  # (B, Σ K_p, h, w)
        # pad each part's head to max K_p rows, one kernel for all, keep the real rows
        weight = _cat([_pad_rows(c.weight, top) for c in convs])  # (P·top, C, 1, 1)
        bias = _cat([_pad_rows(c.bias, top) for c in convs])
        y = self.pointwise(x, weight, bias)  # (B, P·top, h, w)
        keep = [p * top + j for p, s in enumerate(sizes) for j in range(s)]
        y = y.index_select(1, torch.tensor(keep, device=y.device))  # (B, Σ K_p, h, w)
        return self._squash(heads[0], y)

    @staticmethod
    def _squash(head: Head, y: Tensor) -> Tensor:
        """The head's output: ``plain`` maps as they are, ``vector`` squashed (B, Σ K_p, h, w)."""
        if head.kind != "vector":
            return y
        b, _, h, w = y.shape
        v = y.permute(0, 2, 3, 1).reshape(b, h, w, -1, head.vector_dim)  # (B, h, w, ΣK_p, D)
        norm = torch.norm(v, dim=-1)  # (B, h, w, Σ K_p)
        return (norm**2 / (norm**2 + 1)).permute(0, 3, 1, 2)  # (B, Σ K_p, h, w)


def _is_pointwise(m: nn.Conv2d) -> bool:
    return m.kernel_size == (1, 1) and m.stride == (1, 1) and m.groups == 1


def _pad_rows(t: Tensor, rows: int) -> Tensor:
    """Zero rows appended along dim 0 up to ``rows``."""
    extra = rows - t.shape[0]
    return t if extra == 0 else torch.cat([t, t.new_zeros(extra, *t.shape[1:])])


# --------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------


def batched_parts(supernet: PoseSupernet, pyramid: Sequence[Tensor]) -> Tensor:
    """Every part fabric of ``supernet`` on the backbone pyramid, computed together, merged.

    Equal to ``merge_parts([f(pyramid, T) for f in supernet.parts.values()], …)``; falls back to
    that per-part path, with a warning naming the reason, when the parts cannot be batched.

    Args:
        pyramid: 4 × (B, c_l, H/2^(l+2), W/2^(l+2)), the backbone's output.
    Returns:
        (B, K, H/4, W/4)
    """
    from nfs_orchestrator.nn.supernet import merge_parts  # supernet may import this module

    fabrics: list[SearchFabric] = list(supernet.parts.values())
    temperature = supernet.temperature
    reason = (
        "input_sampling 'gumbel' has no batched form"
        if supernet.sample_inputs
        else unsupported_reason(supernet)
    )
    if reason is not None:
        warnings.warn(f"per-part path: the parts cannot be batched: {reason}", stacklevel=2)
        maps = [
            f(pyramid, temperature, supernet.layout_beta, supernet.sample_inputs) for f in fabrics
        ]
        return merge_parts(maps, supernet.grouping, supernet.channel_index())

    run = _Batch(len(fabrics))
    first = fabrics[0]
    channels = first.space.channels()
    alpha = F.softmax(torch.stack([f.alpha for f in fabrics]) / temperature, dim=-1)
    beta = F.softmax(torch.stack([f.beta for f in fabrics]) / temperature, dim=-1)
    # alpha: (P, k, |O|) or (P, cells, k, |O|); beta: (P, cells, 3)
    prev = run.adapters([f.adapters for f in fabrics], pyramid)
    layer: list[Tensor] = []
    depth = first.sites[0].depth
    for index, site in enumerate(first.sites):
        if site.depth != depth:  # a new layer starts: the finished one feeds it
            prev, layer, depth = layer, [], site.depth
        cell_alpha = alpha if alpha.dim() == 3 else alpha[:, index]  # (P, k, |O|)
        layer.append(
            run.cell(
                [f.cells[site.key] for f in fabrics],
                [prev[src] for src in site.sources],
                cell_alpha,
                beta[:, index],
                channels[site.scale],
                supernet.layout_beta,
            )
        )  # (B, P·C_i, H_i, W_i)
    maps = run.heads([f.head for f in fabrics], layer[0])  # (B, Σ K_p, H/4, W/4)
    run.finish()
    index = torch.cat(supernet.channel_index())  # (Σ K_p,) schema index of every part's map
    return merge_parts([maps], supernet.grouping, [index])  # (B, K, H/4, W/4)


def batched_forward(supernet: PoseSupernet, images: Tensor) -> Tensor:
    """``supernet(images)`` with the part fabrics batched: (B, 3, H, W) → (B, K, H/4, W/4)."""
    pyramid = supernet.backbone(images)  # 4 × (B, c_l, H/2^(l+2), W/2^(l+2))
    return batched_parts(supernet, pyramid)
