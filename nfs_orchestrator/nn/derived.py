"""The derived (discrete) pose network a genotype describes: what ``posenfs retrain`` trains.

    images (B, 3, H, W) → backbone → one ``DerivedFabric`` per part → merge → (B, K, H/4, W/4)

Only the kept cells, inputs and ops exist as modules: a derived network has strictly fewer
parameters and MACs than its supernet whenever the genotype dropped anything (and it always drops
the unchosen ops of every edge). There is no α or β.

What this is not: the derivation rule (``genotype.py``) or a training loop; like the supernet,
its forward carries no precision policy (the loops call ``hardware.run_model``).
"""

from __future__ import annotations

import torch
from torch import nn

from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.geometry import SLOTS, fabric_sites
from nfs_orchestrator.nn.fabric import DerivedFabric
from nfs_orchestrator.nn.supernet import merge_parts


class DerivedPoseNet(nn.Module):
    """Backbone + the derived fabric of every part of ``genotype``."""

    def __init__(self, genotype: Genotype, backbone: nn.Module) -> None:
        super().__init__()
        self.genotype = genotype
        self.backbone = backbone
        sites = {(s.scale, s.depth): s for layer in fabric_sites(genotype.space) for s in layer}
        self.parts = nn.ModuleDict(
            {
                part.name: DerivedFabric(
                    genotype.space,
                    backbone.channels,
                    len(part.keypoints),
                    [(sites[(c.scale, c.depth)], c.inputs, c.ops) for c in part.cells],
                )
                for part in genotype.parts
            }
        )
        grouping = genotype.grouping
        for i, p in enumerate(grouping.parts):
            self.register_buffer(
                f"index_{i}", torch.tensor(grouping.indices(p), dtype=torch.long), persistent=False
            )

    @classmethod
    def from_genotype(
        cls, genotype: Genotype, backbone: nn.Module | None = None, *, weights: str | None = None
    ) -> DerivedPoseNet:
        """Builds the network; the backbone is ``genotype.backbone`` built from local ``weights``
        (random init only when ``weights`` is None and no backbone module is given)."""
        if backbone is None:
            from nfs_orchestrator.nn.backbones import build_backbone

            backbone = build_backbone(
                genotype.backbone or "tiny", weights, random_init=weights is None
            )
        return cls(genotype, backbone)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → fp32 heatmaps (B, K, H/4, W/4), also under autocast. Precision and
        input layout are the caller's (``hardware.run_model``)."""
        pyramid = self.backbone(images)
        maps = [fabric(pyramid) for fabric in self.parts.values()]
        index = [getattr(self, f"index_{i}") for i in range(len(self.parts))]
        out = merge_parts(maps, self.genotype.grouping, index)
        return out.float()


def derived_state_from_supernet(
    supernet_state: dict[str, torch.Tensor], genotype: Genotype
) -> dict[str, torch.Tensor]:
    """The weights a derived network shares with a supernet, under the derived network's keys.

    Backbone, adapters, heads and output convs keep their keys; a kept input slot's resampling
    moves to its position among the kept slots; an edge keeps only its chosen op's weights.
    α and β have no place in a derived network.
    """
    out: dict[str, torch.Tensor] = {}
    cells = {
        (part.name, f"s{c.scale}_d{c.depth}"): c for part in genotype.parts for c in part.cells
    }
    for key, value in supernet_state.items():
        parts = key.split(".")
        if parts[0] != "parts":
            out[key] = value
            continue
        part, module = parts[1], parts[2]
        if module in ("adapters", "head"):
            out[key] = value
            continue
        if module != "cells" or (part, parts[3]) not in cells:
            continue  # alpha, beta, or a dropped cell
        cell, rest = cells[(part, parts[3])], parts[4:]
        prefix = f"parts.{part}.cells.{parts[3]}"
        if rest[0] == "out":
            out[key] = value
        elif rest[0] == "resample":
            slot = SLOTS[int(rest[1])]
            if slot in cell.inputs:
                out[".".join([prefix, "resample", str(cell.inputs.index(slot)), *rest[2:]])] = value
        elif rest[0] == "edges" and rest[2] == "ops":
            edge, op = int(rest[1]), rest[3]
            if cell.ops[edge] == op:
                out[".".join([prefix, "edges", str(edge), *rest[4:]])] = value
    return out
