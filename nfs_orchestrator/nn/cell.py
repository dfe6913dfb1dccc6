"""Cells of a Cell-based Neural Fabric: the searchable cell and the fixed (derived) cell.

A cell at row ``i`` (stride ``4·2^i``, C channels) takes three inputs from the previous layer —
``parallel`` (same row), ``above`` (the finer row) and ``below`` (the coarser row) — resamples
them to its own scale and mixes them into one input node (PoseNFS §1.4):

    x = ReLU(3·softmax(β)_0·parallel + 3·softmax(β)_1·above + 3·softmax(β)_2·below)

Hidden node h sums one mixed-op edge from every earlier node (the input node and hidden nodes
0…h-1); an edge is ``|O|·Σ_o softmax(α_e)_o·o(x)`` (§1.5). The factors 3 and |O| make the uniform
start a plain sum. The last N hidden nodes are concatenated (N > 1) and a 1×1 conv with bias
returns C channels. Softmaxes take a temperature T (1 = the reference).

A ``FixedCell`` is what ``genotype`` derives: only the kept inputs (summed, then ReLU) and one op
per edge, with no mixing weights; dropped inputs and ops are absent, not zeroed.

Shapes: every tensor inside a cell is (B, C, H_i, W_i); inputs arrive at their own scale.
Search cost (``search.partial_channels``, ``search.sampling``; both change only the supernet,
never the genotype derived from α/β):

- Partial channels (PC-DARTS, Xu et al. 2020), K > 1: an edge sends its first C/K channels
  through the mixed op (ops built for C/K channels) and passes the other C - C/K channels by
  untouched; the two are concatenated and channel-shuffled with K groups, so that the next edge
  samples different channels. K = 1 runs the exact unpartitioned code.
  Edge normalisation: PC-DARTS weighs the edges entering a node by softmax(β_edge), which is not
  subject to channel sampling and so steadies the connectivity α alone makes noisy. Here the
  edges entering a cell are its three inputs, already weighed by softmax(β) over (parallel,
  above, below) on all C channels: that IS the analogue, so β keeps its meaning and its role in
  the derivation (kept inputs by β; ops per edge by argmax α, which a per-edge β factor could
  not change). No extra β is added for the edges between hidden nodes: with N = 1 (every
  released space) a hidden node has one edge, whose normalised weight would be 1.
- Sampled ops (GDAS, Dong & Yang 2019), ``sampling: gumbel``: in training each edge runs ONE
  op per forward, drawn by a straight-through Gumbel-softmax of α / T (hard one-hot forward,
  softmax gradient into α). The drawn op's output is multiplied by its hard weight (1 in value,
  carrying α's gradient), without the |O| factor of the mixed op: a drawn edge is the derived
  edge. In eval mode (validation) each edge runs its argmax op excluding ``zero`` — the op the
  genotype keeps — deterministically, on the same scale as training.

What this is not: the fabric grid (``geometry.py``: slots, edge sources) or a whole fabric
(``fabric.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from nfs_orchestrator.geometry import edge_sources
from nfs_orchestrator.nn.ops import RESAMPLE, build_op

SAMPLING = ("mixed", "gumbel")  # = the values of specs.SearchSpec.sampling


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(B, C, H, W) → (B, C, H, W), channels interleaved across ``groups`` (ShuffleNet/PC-DARTS):
    channel g·(C/groups) + i moves to i·groups + g."""
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def partial_merge(y: torch.Tensor, rest: torch.Tensor, groups: int) -> torch.Tensor:
    """A partial-channel edge's output: ``channel_shuffle(torch.cat([y, rest], 1), groups)`` in
    one copy, in ``y``'s memory layout (the two-step form returns NCHW whatever its input, so a
    channels_last search left it after every edge).

    Args:
        y: (B, C/K, H, W) the mixed op's output on the first C/K channels.
        rest: (B, C - C/K, H, W) the channels passed by.
    Returns:
        (B, C, H, W), channel i·K + g = group g's channel i (group 0 = y).
    """
    parts = [y, *rest.split(y.shape[1], dim=1)]  # K × (B, C/K, H, W)
    if y.is_contiguous(memory_format=torch.channels_last) and y.dim() == 4:
        nhwc = torch.stack([p.permute(0, 2, 3, 1) for p in parts], dim=-1)  # (B, H, W, C/K, K)
        return nhwc.flatten(3).permute(0, 3, 1, 2)  # (B, C, H, W), channels_last
    return torch.stack(parts, dim=2).flatten(1, 2)  # (B, C/K, K, H, W) → (B, C, H, W)


class MixedOp(nn.Module):
    """One edge of the supernet: every candidate op, weighted by softmax(α_e / T).

    ``partial_channels`` K: the ops see C/K channels, the rest pass by (module docstring).
    ``sampling`` ``gumbel``: one op per forward in training, the argmax op in eval.
    """

    def __init__(
        self, c: int, ops: Sequence[str], partial_channels: int = 1, sampling: str = "mixed"
    ) -> None:
        super().__init__()
        if c % partial_channels:
            raise ValueError(f"partial_channels {partial_channels} does not divide {c} channels")
        if sampling not in SAMPLING:
            raise ValueError(f"sampling {sampling!r}: known {list(SAMPLING)}")
        self.names = tuple(ops)
        self.partial_channels = partial_channels
        self.sampling = sampling
        self.ops = nn.ModuleDict({name: build_op(name, c // partial_channels) for name in ops})

    def forward(self, x: torch.Tensor, alpha: torch.Tensor, temperature: float) -> torch.Tensor:
        k = self.partial_channels
        if k == 1:
            return self._edge(x, alpha, temperature)  # (B, C, H, W)
        c = x.shape[1] // k
        y = self._edge(x[:, :c], alpha, temperature)  # (B, C/K, H, W)
        return partial_merge(y, x[:, c:], k)  # (B, C, H, W), shuffled with K groups

    def _edge(self, x: torch.Tensor, alpha: torch.Tensor, temperature: float) -> torch.Tensor:
        if self.sampling == "gumbel":
            return self._sampled(x, alpha, temperature)
        weights = F.softmax(alpha / temperature, dim=-1)  # (|O|,)
        terms = [
            w * self.ops[name](x) for w, name in zip(weights, self.names) if name != "zero"
        ]  # the zero op adds nothing; its weight still takes its share of the softmax
        return len(self.names) * sum(terms)

    def _sampled(self, x: torch.Tensor, alpha: torch.Tensor, temperature: float) -> torch.Tensor:
        """GDAS: hard one-hot of softmax((α + Gumbel) / T) forward, its soft gradient backward;
        only the drawn op runs. Eval: the argmax op excluding zero, weight 1, no randomness."""
        if not self.training:
            scores = alpha.detach().clone()
            if "zero" in self.names:
                scores[self.names.index("zero")] = float("-inf")
            return self.ops[self.names[int(scores.argmax())]](x)
        hard = F.gumbel_softmax(alpha, tau=temperature, hard=True)  # (|O|,) one-hot, ST grad
        index = int(hard.detach().argmax())
        name = self.names[index]
        if name == "zero":
            return hard[index] * torch.zeros_like(x)
        return hard[index] * self.ops[name](x)


def input_weights(beta: torch.Tensor, temperature: float, draw: bool, argmax: bool) -> torch.Tensor:
    """The weights of a cell's inputs, (3,) from β (3,): ``3 · softmax(β / T)`` (uniform β reads
    every input at 1); with ``draw`` (``search.input_sampling: gumbel`` in training) the one-hot
    of one input drawn from softmax((β + Gumbel) / T), its soft gradient backward (GDAS); with
    ``argmax`` alone (the same setting in eval) the one-hot of β's argmax, no randomness."""
    if draw:
        return F.gumbel_softmax(beta, tau=temperature, hard=True)
    if argmax:
        return F.one_hot(beta.detach().argmax(), beta.shape[-1]).to(beta.dtype)
    return 3 * F.softmax(beta / temperature, dim=-1)


def beta_mixture(xs: Sequence[torch.Tensor], w: torch.Tensor, layout_beta: bool) -> torch.Tensor:
    """Σ_k w_k · x_k, w (3,). With ``layout_beta`` (``search.beta_gradient: layout``) the value
    and every gradient but β's are the same; β's gradient reads only each input's layout: its
    per-channel spatial mean μ_k enters at the detached weight, Σ w_k (x_k − μ_k) + sg(w_k) μ_k,
    so ∂/∂w_k is ⟨∂L/∂mix, x_k − μ_k⟩ rather than ⟨∂L/∂mix, x_k⟩."""
    if not layout_beta:
        return sum(w[k] * x for k, x in enumerate(xs))
    means = [x.mean(dim=(2, 3), keepdim=True) for x in xs]  # each (B, C, 1, 1)
    layout = sum(w[k] * (x - m) for k, (x, m) in enumerate(zip(xs, means)))
    return layout + sum(w[k].detach() * m for k, m in enumerate(means))


class SearchCell(nn.Module):
    """A supernet cell at row ``row``: β-mixed inputs, α-mixed edges, 1×1 output conv.

    Args:
        c: channels of this cell.
        source_offsets: for each slot (parallel, above, below), the row offset of its source
            relative to this cell (0 same, -1 finer, +1 coarser); it fixes the resampling.
        hidden_nodes: N.
        ops: candidate op names.
        partial_channels, sampling: how each edge runs its ops (see ``MixedOp``).
    """

    def __init__(
        self,
        c: int,
        source_offsets: Sequence[int],
        hidden_nodes: int,
        ops: Sequence[str],
        partial_channels: int = 1,
        sampling: str = "mixed",
    ) -> None:
        super().__init__()
        self.hidden_nodes = hidden_nodes
        self.resample = nn.ModuleList([RESAMPLE[off](c) for off in source_offsets])
        self.sources = edge_sources(hidden_nodes)
        self.edges = nn.ModuleList(
            [MixedOp(c, ops, partial_channels, sampling) for _ in self.sources]
        )
        self.out = nn.Conv2d(hidden_nodes * c, c, 1, bias=True)

    def forward(
        self,
        inputs: Sequence[torch.Tensor],
        alpha: torch.Tensor,
        beta: torch.Tensor,
        temperature: float,
        layout_beta: bool = False,
        sample_inputs: bool = False,
    ) -> torch.Tensor:
        # (parallel, above, below), each (B, C, H_i, W_i)
        xs = [r(x) for r, x in zip(self.resample, inputs)]
        w = input_weights(beta, temperature, sample_inputs and self.training, sample_inputs)
        states = [F.relu(beta_mixture(xs, w, layout_beta))]
        e = 0
        for _ in range(self.hidden_nodes):
            n = len(states)
            states.append(
                sum(self.edges[e + j](states[j], alpha[e + j], temperature) for j in range(n))
            )
            e += n
        out = (
            torch.cat(states[-self.hidden_nodes :], dim=1) if self.hidden_nodes > 1 else states[-1]
        )
        return self.out(out)  # (B, C, H_i, W_i)


class FixedCell(nn.Module):
    """A derived cell: the kept inputs summed, one chosen op per edge, the 1×1 output conv.

    Args:
        c: channels.
        source_offsets: row offset of each KEPT input's source (0, -1 or +1).
        ops: the op of each edge, in ``edge_sources`` order (never ``zero``).
        hidden_nodes: N.
    """

    def __init__(
        self, c: int, source_offsets: Sequence[int], ops: Sequence[str], hidden_nodes: int
    ) -> None:
        super().__init__()
        self.hidden_nodes = hidden_nodes
        self.resample = nn.ModuleList([RESAMPLE[off](c) for off in source_offsets])
        self.sources = edge_sources(hidden_nodes)
        self.edges = nn.ModuleList([build_op(name, c) for name in ops])
        self.out = nn.Conv2d(hidden_nodes * c, c, 1, bias=True)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        states = [F.relu(sum(r(x) for r, x in zip(self.resample, inputs)))]  # (B, C, H_i, W_i)
        e = 0
        for _ in range(self.hidden_nodes):
            n = len(states)
            states.append(sum(self.edges[e + j](states[j]) for j in range(n)))
            e += n
        out = (
            torch.cat(states[-self.hidden_nodes :], dim=1) if self.hidden_nodes > 1 else states[-1]
        )
        return self.out(out)
