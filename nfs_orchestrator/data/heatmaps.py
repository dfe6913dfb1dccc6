"""Gaussian heatmap targets (encode), their decoding to coordinates, and the flip-test merge.

What this is: closed-form, vectorised encode/decode between keypoint coordinates and stride-4
heatmaps, with one pixel convention for both directions (see ``transforms`` for the convention
itself: pixel centres at integer coordinates, a grid of N pixels covering [-0.5, N - 0.5]).
The heatmap grid covers exactly the same extent as the input grid, so

    x_heatmap = (x_input + 0.5) / 4 - 0.5        x_input = 4 · x_heatmap + 1.5

and a Gaussian is centred at the *unrounded* heatmap coordinate. A decode of an encode is
therefore exact up to the decoder's quantisation (±0.25 heatmap px with the quarter offset,
near 0 with DARK). Under this convention a horizontal flip of the input (x → W - 1 - x) is
exactly a flip of the heatmap (x → W/4 - 1 - x): the flip test needs no 1-pixel shift.

What it is not: the crop (``transforms``) or the mapping back to image coordinates
(``inference``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

STRIDE = 4  # heatmap = input / 4
DARK_BLUR_SIGMA = 2.0  # DARK's modulation blur (kernel 11 in the paper's code, sigma 2)


def input_to_heatmap(points: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """Input-pixel coordinates (..., 2) → heatmap-pixel coordinates (same extent)."""
    return (np.asarray(points, dtype=np.float64) + 0.5) / stride - 0.5


def heatmap_to_input(points: np.ndarray, stride: int = STRIDE) -> np.ndarray:
    """Heatmap-pixel coordinates (..., 2) → input-pixel coordinates."""
    return (np.asarray(points, dtype=np.float64) + 0.5) * stride - 0.5


def encode_heatmaps(
    coords: np.ndarray, weights: np.ndarray, size: tuple[int, int], sigma: float
) -> np.ndarray:
    """Gaussian targets, closed form (no blurring), peak 1 at the exact sub-pixel location.

    coords: (K, 2) heatmap-pixel coordinates; weights: (K,), a joint with weight 0 gets an
    all-zero map; size: (w, h) of the heatmap. Returns float32 (K, h, w).
    """
    w, h = size
    coords = np.asarray(coords, dtype=np.float64)
    xs = np.arange(w, dtype=np.float64)
    ys = np.arange(h, dtype=np.float64)
    inv = 1.0 / (2.0 * sigma * sigma)
    gx = np.exp(-((xs[None, :] - coords[:, 0:1]) ** 2) * inv)  # (K, w)
    gy = np.exp(-((ys[None, :] - coords[:, 1:2]) ** 2) * inv)  # (K, h)
    gy *= (np.asarray(weights) > 0)[:, None]
    return (gy[:, :, None] * gx[:, None, :]).astype(np.float32)  # (K, h, w)


def decode_heatmaps(
    heatmaps: np.ndarray | torch.Tensor, *, dark: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Heatmaps (N, K, h, w) → coordinates (N, K, 2) in heatmap pixels and confidences (N, K).

    Argmax per map (an all-equal map gives index 0), then either the quarter-pixel step toward
    the higher neighbour on each axis (reference/HRNet; not on the border) or, with ``dark``,
    DARK's second-order Taylor refinement on the log of the blurred map (Zhang et al. 2020).
    The confidence is the map's maximum value.
    """
    hm = _as_numpy(heatmaps)
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, h * w)
    idx = flat.argmax(axis=2)  # (N, K)
    maxvals = np.take_along_axis(flat, idx[..., None], axis=2)[..., 0]
    x = (idx % w).astype(np.int64)
    y = (idx // w).astype(np.int64)
    coords = np.stack([x, y], axis=-1).astype(np.float64)  # (N, K, 2)
    if dark:
        coords += _dark_offsets(hm, x, y)
    else:
        coords += _quarter_offsets(hm, x, y)
    return coords, maxvals.astype(np.float64)


def _as_numpy(heatmaps: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(heatmaps, torch.Tensor):
        heatmaps = heatmaps.detach().to("cpu", torch.float32).numpy()
    hm = np.asarray(heatmaps, dtype=np.float32)
    if hm.ndim != 4:
        raise ValueError(f"heatmaps must be (N, K, h, w), got shape {hm.shape}")
    return hm


def _at(hm: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """hm[n, k, y[n, k], x[n, k]] for index arrays (N, K) (clipped to the map)."""
    n, k, h, w = hm.shape
    yy = np.clip(y, 0, h - 1)
    xx = np.clip(x, 0, w - 1)
    return hm[np.arange(n)[:, None], np.arange(k)[None, :], yy, xx]


def _quarter_offsets(hm: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, K, 2) offsets of ±0.25 toward the higher neighbour, per axis; 0 on an axis whose
    argmax is on the map border (the reference needs both axes interior for either)."""
    _, _, h, w = hm.shape
    dx = _at(hm, y, x + 1) - _at(hm, y, x - 1)
    dy = _at(hm, y + 1, x) - _at(hm, y - 1, x)
    inside_x = (x > 0) & (x < w - 1)
    inside_y = (y > 0) & (y < h - 1)
    return 0.25 * np.stack([np.sign(dx) * inside_x, np.sign(dy) * inside_y], axis=-1)


def _dark_offsets(hm: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N, K, 2) DARK offsets: Newton step on log(blurred map) at the argmax. The blur pads
    with zeros (nothing lies outside the map); reflecting borders would mirror a peak near the
    edge and pull the estimate toward it."""
    _, _, h, w = hm.shape
    peak = hm.max(axis=(2, 3), keepdims=True)
    blurred = gaussian_filter(
        hm, sigma=(0, 0, DARK_BLUR_SIGMA, DARK_BLUR_SIGMA), mode="constant", truncate=2.5
    )
    # Keep each map's peak value (DARK's modulation), then take the log.
    bpeak = np.maximum(blurred.max(axis=(2, 3), keepdims=True), 1e-10)
    logm = np.log(np.maximum(blurred * (peak / bpeak), 1e-10))
    f = lambda dy, dx: _at(logm, y + dy, x + dx)  # noqa: E731
    dx = 0.5 * (f(0, 1) - f(0, -1))
    dy = 0.5 * (f(1, 0) - f(-1, 0))
    dxx = 0.25 * (f(0, 2) - 2 * f(0, 0) + f(0, -2))
    dyy = 0.25 * (f(2, 0) - 2 * f(0, 0) + f(-2, 0))
    dxy = 0.25 * (f(1, 1) - f(-1, 1) - f(1, -1) + f(-1, -1))
    det = dxx * dyy - dxy * dxy
    ok = (x > 1) & (x < w - 2) & (y > 1) & (y < h - 2) & (np.abs(det) > 1e-12)
    safe = np.where(ok, det, 1.0)
    ox = -(dyy * dx - dxy * dy) / safe
    oy = -(dxx * dy - dxy * dx) / safe
    # A Newton step further than a pixel means the map is not a peak there: keep the argmax.
    ok &= (np.abs(ox) <= 1.0) & (np.abs(oy) <= 1.0)
    return np.stack([np.where(ok, ox, 0.0), np.where(ok, oy, 0.0)], axis=-1)


def flip_back(heatmaps: torch.Tensor, flip_perm: Sequence[int]) -> torch.Tensor:
    """Maps predicted for horizontally flipped inputs (B, K, h, w) → maps for the originals:
    mirror along W and swap left/right channels (``KeypointSchema.flip_permutation()``). Exact
    under this package's pixel convention; no shift."""
    perm = torch.as_tensor(list(flip_perm), device=heatmaps.device, dtype=torch.long)
    return heatmaps.flip(-1).index_select(1, perm)
