"""The PoseNFS supernet: one shared backbone, one searchable fabric per body part, merged heatmaps.

    images (B, 3, H, W) → backbone pyramid → P part fabrics → (P × (B, K_p, H/4, W/4))
                        → merge by the grouping → (B, K, H/4, W/4)

Merging scatters each part's maps into its keypoints' channels; keypoints predicted by several
parts (P = 8) are summed (the reference) or averaged (``merge: mean``). α and β are registered
``nn.Parameter``s of each part (``parts.<name>.alpha``/``beta``), so they checkpoint, move and
synchronise like weights, but ``weight_parameters()`` and ``arch_parameters()`` keep them apart
for their own optimizer groups.

What this is not: the search loop (``search/``) or the derived network (``nn/derived.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from nfs_orchestrator.genotype import Genotype, derive_genotype
from nfs_orchestrator.keypoints import PartGrouping
from nfs_orchestrator.nn.batched import batched_parts
from nfs_orchestrator.nn.fabric import SearchFabric
from nfs_orchestrator.specs import FabricSpace


def merge_parts(
    part_maps: Sequence[torch.Tensor], grouping: PartGrouping, channel_index: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Scatters part heatmaps into the K keypoint channels by the grouping's merge rule.

    Args:
        part_maps: per part (B, K_p, h, w), in grouping order.
        channel_index: per part, a long tensor of its keypoints' schema indices.
    Returns:
        (B, K, h, w)
    """
    b, _, h, w = part_maps[0].shape
    out = part_maps[0].new_zeros(b, grouping.num_keypoints, h, w)
    for maps, idx in zip(part_maps, channel_index):
        out = out.index_add(1, idx.to(out.device), maps)
    if grouping.merge == "mean":
        cover = torch.tensor(grouping.coverage(), dtype=out.dtype, device=out.device)
        out = out / cover.view(1, -1, 1, 1)
    return out


class PoseSupernet(nn.Module):
    """Backbone + one ``SearchFabric`` per part of ``grouping``.

    Args:
        space: the fabric search space (shared by all parts; each part has its own α, β, weights).
        grouping: the part grouping.
        backbone: a module returning a list of 4 maps at strides 4…32, with ``channels``.
        partial_channels: K of PC-DARTS partial-channel edges (1 = every channel; ``nn.cell``).
        sampling: ``mixed`` (every op, DARTS) or ``gumbel`` (one drawn op per edge, GDAS).
    """

    def __init__(
        self,
        space: FabricSpace,
        grouping: PartGrouping,
        backbone: nn.Module,
        partial_channels: int = 1,
        sampling: str = "mixed",
    ) -> None:
        super().__init__()
        self.space = space
        self.grouping = grouping
        self.backbone = backbone
        self.partial_channels = partial_channels
        self.sampling = sampling
        self.parts = nn.ModuleDict(
            {
                p.name: SearchFabric(
                    space, backbone.channels, len(p.keypoints), partial_channels, sampling
                )
                for p in grouping.parts
            }
        )
        for i, p in enumerate(grouping.parts):
            self.register_buffer(
                f"index_{i}", torch.tensor(grouping.indices(p), dtype=torch.long), persistent=False
            )
        self.temperature = 1.0  # softmax temperature of α/β, set by the search loop's schedule
        self.layout_beta = False  # search.beta_gradient == "layout" (nn.cell.beta_mixture)
        self.sample_inputs = False  # search.input_sampling == "gumbel" (nn.cell.input_weights)
        # Compute the P part fabrics together (nn.batched): equal results; fewer, larger kernels.
        # Off by default: on CPU it measured slower (benchmarks/RESULTS.md); meant for GPUs.
        self.batched = False

    def channel_index(self) -> list[torch.Tensor]:
        return [getattr(self, f"index_{i}") for i in range(len(self.parts))]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → fp32 heatmaps (B, K, H/4, W/4), also under autocast. Precision and
        input layout are the caller's (``hardware.run_model``)."""
        pyramid = self.backbone(images)  # 4 × (B, c_l, …)
        if self.batched:
            out = batched_parts(self, pyramid)  # the same maps as the per-part lines below
        else:
            maps = [
                fabric(pyramid, self.temperature, self.layout_beta, self.sample_inputs)
                for fabric in self.parts.values()
            ]
            out = merge_parts(maps, self.grouping, self.channel_index())
        return out.float()

    def arch_parameters(self) -> Iterator[nn.Parameter]:
        """α then β of each part, in grouping order."""
        for fabric in self.parts.values():
            yield fabric.alpha
            yield fabric.beta

    def alpha_entropy(self) -> torch.Tensor:
        """Mean over α's rows (every part) of H(softmax(α/T)) / ln(ops) at the temperature in
        use: 1 when uniform, 0 when one-hot (``1 − alpha_entropy_drop``), differentiable. The
        search adds ``search.alpha_entropy_weight`` times it to every α/β step's loss. A space
        with one op has nothing to choose: 0, with a zero gradient."""
        rows = torch.cat([f.alpha.reshape(-1, f.alpha.shape[-1]) for f in self.parts.values()])
        if rows.shape[-1] < 2:
            return rows.sum() * 0.0
        logp = torch.log_softmax(rows.float() / self.temperature, dim=-1)  # (rows, ops)
        return (-(logp.exp() * logp).sum(-1) / math.log(rows.shape[-1])).mean()

    @contextmanager
    def uniform_mixture(self) -> Iterator[None]:
        """α and β read as 0 inside (every softmax uniform, every sampled op equally likely);
        their values come back on exit. The search's weight steps under
        ``search.weight_mixture: uniform``; no gradient reaches α/β inside."""
        arch = list(self.arch_parameters())
        saved = [p.detach().clone() for p in arch]
        with torch.no_grad():
            for p in arch:
                p.zero_()
        try:
            yield
        finally:
            with torch.no_grad():
                for p, value in zip(arch, saved):
                    p.copy_(value)

    def named_arch_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, fabric in self.parts.items():
            yield f"{name}.alpha", fabric.alpha
            yield f"{name}.beta", fabric.beta

    def weight_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter that is not α or β."""
        arch = {id(p) for p in self.arch_parameters()}
        return (p for p in self.parameters() if id(p) not in arch)

    def genotype(self, input_size: tuple[int, int] | None = None, backbone: str = "") -> Genotype:
        """The discrete architecture these α/β derive (see ``genotype.derive_genotype``); with
        ``input_size``, its derived network is built and measured (params, MACs) at that size."""
        arch = {name: (fabric.alpha, fabric.beta) for name, fabric in self.parts.items()}
        genotype = derive_genotype(
            self.space, self.grouping, arch, backbone=backbone, temperature=self.temperature
        )
        if input_size is not None:
            from nfs_orchestrator.nn.counting import measure_genotype

            genotype = measure_genotype(genotype, self.backbone, input_size)
        return genotype
