"""Fabric geometry: where the cells of a Cell-based Neural Fabric sit and what each one reads.

What this is: pure data about the grid (PoseNFS §1.2–1.4), shared by the networks (``nn/``), the
genotype derivation (``genotype.py``) and the drawings (``drawing.py``), so that reading a genotype
never needs torch modules. The full fabric has ``depth`` layers; layer j holds
``min(j + 2, S, depth - j)`` cells, one per scale row 0 … n_j - 1 (row 0 = stride 4). The first
``cut`` layers are removed and the backbone pyramid stands in for layer ``cut - 1``. A cell (row i)
of layer j reads from the n_prev maps of layer j - 1:

    parallel = prev[i]       if i < n_prev      else prev[i - 1]
    above    = prev[i - 1]   if i > 0           else parallel's source
    below    = prev[i + 1]   if i + 1 < n_prev  else parallel's source

Inside a cell, hidden node h sums one edge from every earlier node (``edge_sources``).
What it is not: the modules that compute on this grid (``nn/cell.py``, ``nn/fabric.py``). No torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from nfs_orchestrator.specs import FabricSpace

SLOTS = ("parallel", "above", "below")  # beta's three inputs, in beta's column order


@dataclass(frozen=True)
class CellSite:
    """Where a cell sits and what it reads: ``sources[s]`` is the previous-layer row of slot s."""

    scale: int  # row: 0 = stride 4
    depth: int  # layer of the full fabric grid (cut … depth - 1)
    sources: tuple[int, int, int]  # rows in the previous layer for (parallel, above, below)

    @property
    def key(self) -> str:
        return f"s{self.scale}_d{self.depth}"

    def offsets(self) -> tuple[int, int, int]:
        return tuple(src - self.scale for src in self.sources)  # type: ignore[return-value]


def fabric_sites(space: FabricSpace) -> list[list[CellSite]]:
    """The kept layers of the fabric, each a list of its cells in row order (β's row order)."""
    layers: list[list[CellSite]] = []
    n_prev = len(space.scales)  # the backbone pyramid stands in for layer cut - 1
    for t, n in enumerate(space.layer_sizes()):
        layer = []
        for i in range(n):
            parallel = i if i < n_prev else i - 1
            above = i - 1 if i > 0 else parallel
            below = i + 1 if i + 1 < n_prev else parallel
            layer.append(CellSite(i, space.cut + t, (parallel, above, below)))
        layers.append(layer)
        n_prev = n
    return layers


def edge_sources(hidden_nodes: int) -> list[int]:
    """For each edge e (in alpha's row order), the index of the node it reads: node 0 is the
    input node, node 1 + h is hidden node h. Hidden node h reads nodes 0 … h."""
    return [src for h in range(hidden_nodes) for src in range(h + 1)]
