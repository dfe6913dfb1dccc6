"""The heatmap loss of PoseNFS (POSENFS-SPEC §5.1): per-joint weighted MSE.

    L = mean over (b, k) of 0.5 · w[b, k] · mean over pixels of (pred - target)²

Zero-weight joints stay in the denominator, as in the reference (and HRNet).
"""

from __future__ import annotations

import torch


def joints_mse(
    pred: torch.Tensor, target: torch.Tensor, target_weight: torch.Tensor
) -> torch.Tensor:
    """pred, target: (B, K, h, w); target_weight: (B, K). Returns a scalar."""
    per_joint = (pred - target).pow(2).mean(dim=(2, 3))  # (B, K)
    return 0.5 * (per_joint * target_weight).mean()
