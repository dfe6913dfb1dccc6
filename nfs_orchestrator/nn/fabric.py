"""One part's Cell-based Neural Fabric on top of the shared backbone pyramid (PoseNFS §1.2–1.3).

Geometry (which cells exist and what each reads) lives in ``geometry.py``; the backbone pyramid
(S maps, after per-part 1×1 channel adapters) stands in for layer ``cut - 1``. The row offset
of each source fixes its resampling (same / Down / Up). The fabric's output is the single row-0
cell of the last layer; the head turns it into the part's K_p heatmaps.

Heads: ``plain`` = ReLU → 1×1 conv to K_p maps; ``vector`` = ReLU → 1×1 conv to K_p·D channels,
read as a D-vector per keypoint and pixel, whose squashed length ‖v‖²/(1 + ‖v‖²) ∈ [0, 1) is the
heatmap (§2.3).

``SearchFabric`` carries the part's α and β; ``DerivedFabric`` holds only what a genotype kept.
Shapes: pyramid[l] is (B, c_l, H/2^(l+2), W/2^(l+2)); output (B, K_p, H/4, W/4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nfs_orchestrator.geometry import SLOTS, CellSite, fabric_sites
from nfs_orchestrator.nn.cell import FixedCell, SearchCell
from nfs_orchestrator.nn.ops import BN_MOMENTUM
from nfs_orchestrator.specs import FabricSpace


class Adapters(nn.Module):
    """Per-part maps from the backbone pyramid to the fabric's channels (reference: ``reduce``).

    Level l < 4: a 1×1 conv with bias from the backbone's c_l to the fabric's C_l, or nothing when
    every level already matches (the reference's rule). A stride-64 row (S = 5) is made from the
    stride-32 map by a 3×3 stride-2 conv + BN + ReLU. Only ``levels`` are built (a derived fabric
    keeps the levels its first layer reads).
    """

    def __init__(
        self, backbone_channels: Sequence[int], channels: Sequence[int], levels: Sequence[int]
    ) -> None:
        super().__init__()
        self.identity = all(
            backbone_channels[lvl] == channels[lvl] for lvl in range(min(4, len(channels)))
        )
        self.levels = tuple(levels)
        convs = {}
        for lvl in levels:
            if lvl >= 4:
                convs[str(lvl)] = nn.Sequential(
                    nn.Conv2d(backbone_channels[3], channels[lvl], 3, 2, padding=1, bias=False),
                    nn.BatchNorm2d(channels[lvl], momentum=BN_MOMENTUM),
                    nn.ReLU(),
                )
            elif not self.identity:
                convs[str(lvl)] = nn.Conv2d(backbone_channels[lvl], channels[lvl], 1, bias=True)
        self.convs = nn.ModuleDict(convs)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> dict[int, torch.Tensor]:
        out: dict[int, torch.Tensor] = {}
        for lvl in self.levels:
            if lvl >= 4:
                out[lvl] = self.convs[str(lvl)](pyramid[3])
            else:
                out[lvl] = pyramid[lvl] if self.identity else self.convs[str(lvl)](pyramid[lvl])
        return out


class Head(nn.Module):
    """ReLU → 1×1 conv; ``vector`` squashes K_p·D channels into K_p heatmaps in [0, 1)."""

    def __init__(self, c: int, num_keypoints: int, kind: str, vector_dim: int) -> None:
        super().__init__()
        self.kind = kind
        self.vector_dim = vector_dim
        out = num_keypoints * (vector_dim if kind == "vector" else 1)
        self.conv = nn.Sequential(nn.ReLU(), nn.Conv2d(c, out, 1, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, K_p[·D], h, w)
        if self.kind != "vector":
            return y
        b, _, h, w = y.shape
        v = y.permute(0, 2, 3, 1).reshape(b, h, w, -1, self.vector_dim)  # (B, h, w, K_p, D)
        norm = torch.norm(v, dim=-1)  # (B, h, w, K_p)
        return (norm**2 / (norm**2 + 1)).permute(0, 3, 1, 2)  # (B, K_p, h, w)


class SearchFabric(nn.Module):
    """One part's supernet fabric: adapters, every cell, α, β and the head.

    ``partial_channels`` and ``sampling`` set how every edge runs its ops (``nn.cell.MixedOp``).
    """

    def __init__(
        self,
        space: FabricSpace,
        backbone_channels: Sequence[int],
        num_keypoints: int,
        partial_channels: int = 1,
        sampling: str = "mixed",
    ):
        super().__init__()
        self.space = space
        self.partial_channels = partial_channels
        self.sampling = sampling
        self.sites = [site for layer in fabric_sites(space) for site in layer]
        channels = space.channels()
        first = [site for site in self.sites if site.depth == space.cut]
        levels = sorted({src for site in first for src in site.sources})  # pyramid levels read
        self.adapters = Adapters(backbone_channels, channels, levels)
        self.cells = nn.ModuleDict(
            {
                site.key: SearchCell(
                    channels[site.scale],
                    site.offsets(),
                    space.hidden_nodes,
                    space.ops,
                    partial_channels,
                    sampling,
                )
                for site in self.sites
            }
        )
        k, o = space.num_edges, len(space.ops)
        alpha_shape = (k, o) if space.alpha_sharing == "part" else (len(self.sites), k, o)
        self.alpha = nn.Parameter(torch.zeros(alpha_shape))  # zeros: uniform softmax at start
        self.beta = nn.Parameter(torch.zeros(len(self.sites), len(SLOTS)))
        self.head = Head(channels[0], num_keypoints, space.head, space.vector_dim)

    def cell_alpha(self, index: int) -> torch.Tensor:
        """α of cell ``index`` (in site order): (k, |O|)."""
        return self.alpha if self.alpha.dim() == 2 else self.alpha[index]

    def forward(
        self,
        pyramid: Sequence[torch.Tensor],
        temperature: float = 1.0,
        layout_beta: bool = False,
        sample_inputs: bool = False,
    ) -> torch.Tensor:
        prev = self.adapters(pyramid)  # level → (B, C_l, h_l, w_l), the levels the cells read
        layer: list[torch.Tensor] = []
        depth = self.sites[0].depth
        for index, site in enumerate(self.sites):
            if site.depth != depth:  # a new layer starts: the finished one feeds it
                prev, layer, depth = layer, [], site.depth
            inputs = [prev[src] for src in site.sources]
            layer.append(
                self.cells[site.key](
                    inputs,
                    self.cell_alpha(index),
                    self.beta[index],
                    temperature,
                    layout_beta,
                    sample_inputs,
                )
            )
        return self.head(layer[0])  # (B, K_p, H/4, W/4)


class DerivedFabric(nn.Module):
    """One part's derived fabric: only the cells, inputs and ops its genotype kept.

    Args:
        space: the search space the genotype came from (geometry and channels).
        backbone_channels: channels of the backbone pyramid.
        num_keypoints: K_p.
        cells: kept cells as (site, kept slot names, op per edge), in site order.
    """

    def __init__(
        self,
        space: FabricSpace,
        backbone_channels: Sequence[int],
        num_keypoints: int,
        cells: Sequence[tuple[CellSite, tuple[str, ...], tuple[str, ...]]],
    ) -> None:
        super().__init__()
        channels = space.channels()
        self.plan = [
            (site, tuple(site.sources[SLOTS.index(s)] for s in kept)) for site, kept, _ in cells
        ]
        first = cells[0][0].depth
        levels = sorted({src for site, srcs in self.plan if site.depth == first for src in srcs})
        self.adapters = Adapters(backbone_channels, channels, levels)
        self.cells = nn.ModuleDict(
            {
                site.key: FixedCell(
                    channels[site.scale],
                    [src - site.scale for src in srcs],
                    ops,
                    space.hidden_nodes,
                )
                for (site, srcs), (_, _, ops) in zip(self.plan, cells)
            }
        )
        self.head = Head(channels[0], num_keypoints, space.head, space.vector_dim)

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        prev: dict[int, torch.Tensor] = self.adapters(pyramid)
        layer: dict[int, torch.Tensor] = {}
        depth = self.plan[0][0].depth
        for site, srcs in self.plan:
            if site.depth != depth:
                prev, layer, depth = layer, {}, site.depth
            layer[site.scale] = self.cells[site.key]([prev[src] for src in srcs])
        return self.head(layer[0])  # (B, K_p, H/4, W/4)
