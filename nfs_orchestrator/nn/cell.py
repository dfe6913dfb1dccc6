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


class MixedOp(nn.Module):
    """One edge of the supernet: every candidate op, weighted by softmax(α_e / T)."""

    def __init__(self, c: int, ops: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(ops)
        self.ops = nn.ModuleDict({name: build_op(name, c) for name in ops})

    def forward(self, x: torch.Tensor, alpha: torch.Tensor, temperature: float) -> torch.Tensor:
        weights = F.softmax(alpha / temperature, dim=-1)  # (|O|,)
        terms = [
            w * self.ops[name](x) for w, name in zip(weights, self.names) if name != "zero"
        ]  # the zero op adds nothing; its weight still takes its share of the softmax
        return len(self.names) * sum(terms)


class SearchCell(nn.Module):
    """A supernet cell at row ``row``: β-mixed inputs, α-mixed edges, 1×1 output conv.

    Args:
        c: channels of this cell.
        source_offsets: for each slot (parallel, above, below), the row offset of its source
            relative to this cell (0 same, -1 finer, +1 coarser); it fixes the resampling.
        hidden_nodes: N.
        ops: candidate op names.
    """

    def __init__(
        self, c: int, source_offsets: Sequence[int], hidden_nodes: int, ops: Sequence[str]
    ) -> None:
        super().__init__()
        self.hidden_nodes = hidden_nodes
        self.resample = nn.ModuleList([RESAMPLE[off](c) for off in source_offsets])
        self.sources = edge_sources(hidden_nodes)
        self.edges = nn.ModuleList([MixedOp(c, ops) for _ in self.sources])
        self.out = nn.Conv2d(hidden_nodes * c, c, 1, bias=True)

    def forward(
        self,
        inputs: Sequence[torch.Tensor],
        alpha: torch.Tensor,
        beta: torch.Tensor,
        temperature: float,
    ) -> torch.Tensor:
        p, a, b = (r(x) for r, x in zip(self.resample, inputs))  # each (B, C, H_i, W_i)
        w = F.softmax(beta / temperature, dim=-1)  # (3,)
        states = [F.relu(3 * w[0] * p + 3 * w[1] * a + 3 * w[2] * b)]
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
