"""Top-down crop geometry and training augmentation (PoseNFS §3.3).

What this is: pure numpy/OpenCV functions that turn a person box into the affine map
image → network input, sample the random augmentation of one training instance, crop and
normalise an image, and map points through (or back through) a crop.
What it is not: a dataset (``dataset.py`` calls these per sample) nor a heatmap coder
(``heatmaps.py``).

Pixel convention, used by every grid in this package (image, network input, heatmap):
pixel centres lie at integer coordinates and a grid of N pixels covers the continuous extent
[-0.5, N - 0.5]. The crop maps the box [center ± scale/2] onto the input's extent
[-0.5, W - 0.5] × [-0.5, H - 0.5], and a horizontal flip of a W-pixel grid is x → W - 1 - x.
``cv2.warpAffine`` samples destination pixel (x, y) at ``M⁻¹·(x, y)`` with this same convention.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from nfs_orchestrator.specs import AugmentSpec

# OpenCV runs single-threaded in every process that imports this module: DataLoader workers
# give the parallelism, and an OpenCV thread pool created before a fork deadlocks the forked
# worker the moment it touches the pool (seen here: cv2.setNumThreads in a worker hangs in
# pthread_cond_destroy). Setting it here, before any pool exists, is the safe place.
cv2.setNumThreads(0)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_BODY_MIN_JOINTS = 8  # half-body crops need more labelled joints than this (HRNet)
HALF_BODY_EXPAND = 1.5  # the half-body box is enlarged by this before the usual margin

_LOWER_BODY_WORDS = ("hip", "knee", "ankle", "pelvis")


def box_to_center_scale(
    box: Sequence[float], aspect_ratio: float, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """A box (x, y, w, h) in image pixels → crop center (2,) and crop size (2,) = (w, h).

    The shorter side is enlarged so that w / h == aspect_ratio (input W / H), then both sides are
    multiplied by ``margin``. The result is what the crop maps onto the whole network input.
    """
    x, y, w, h = (float(v) for v in box)
    center = np.array([x + 0.5 * w, y + 0.5 * h], dtype=np.float64)
    if w > aspect_ratio * h:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w * margin, h * margin], dtype=np.float64)


def crop_affine(
    center: np.ndarray,
    scale: np.ndarray,
    rotation: float,
    output_size: tuple[int, int],
    *,
    flip: bool = False,
) -> np.ndarray:
    """The 2x3 affine map image → crop of size ``output_size`` = (W, H).

    The box ``center ± scale / 2`` (image pixels) covers the crop's extent; the crop is turned
    by ``rotation`` degrees about the box centre (positive = the person appears rotated
    counter-clockwise on screen); with ``flip`` the crop is then mirrored, x → W - 1 - x.
    """
    w_out, h_out = output_size
    theta = np.deg2rad(rotation)
    cos, sin = np.cos(theta), np.sin(theta)
    sx, sy = w_out / float(scale[0]), h_out / float(scale[1])
    # p_crop = diag(sx, sy) · R · (p - center) + crop centre; R turns image content by +theta
    # counter-clockwise as seen with the y axis pointing down.
    lin = np.array([[sx * cos, sx * sin], [-sy * sin, sy * cos]])
    crop_center = np.array([(w_out - 1) * 0.5, (h_out - 1) * 0.5])
    m = np.empty((2, 3), dtype=np.float64)
    m[:, :2] = lin
    m[:, 2] = crop_center - lin @ np.asarray(center, dtype=np.float64)
    if flip:
        m[0] = -m[0]
        m[0, 2] += w_out - 1
    return m


def invert_affine(m: np.ndarray) -> np.ndarray:
    """Inverse of one (2, 3) or a batch (..., 2, 3) of affine maps."""
    m = np.asarray(m, dtype=np.float64)
    full = np.zeros(m.shape[:-2] + (3, 3))
    full[..., :2, :] = m
    full[..., 2, 2] = 1.0
    return np.linalg.inv(full)[..., :2, :]


def apply_affine(points: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Points (..., P, 2) through affine maps (..., 2, 3) broadcast over the leading dims."""
    points = np.asarray(points, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    return points @ np.swapaxes(m[..., :, :2], -1, -2) + m[..., None, :, 2]


def lower_body_mask(keypoint_names: Sequence[str]) -> np.ndarray:
    """(K,) bool: keypoints of the lower body (hips, knees, ankles, pelvis), by name."""
    return np.array([any(w in n for w in _LOWER_BODY_WORDS) for n in keypoint_names])


@dataclass(frozen=True)
class Augmentation:
    """One draw of the training augmentation of a crop."""

    scale: float = 1.0  # multiplies the crop size (> 1 zooms out)
    rotation: float = 0.0  # degrees
    flip: bool = False
    half_body: bool = False


def sample_augmentation(spec: AugmentSpec, rng: np.random.Generator) -> Augmentation:
    """Draws scale, rotation, flip and the half-body coin as the reference code does (§3.3)."""
    sf, rf = spec.scale_factor, spec.rotation_factor
    scale = float(np.clip(1.0 + sf * rng.standard_normal(), 1.0 - sf, 1.0 + sf))
    rotation = float(np.clip(rf * rng.standard_normal(), -2.0 * rf, 2.0 * rf))
    if rng.random() >= spec.rotation_prob:
        rotation = 0.0
    flip = bool(spec.flip and rng.random() < 0.5)
    half_body = bool(spec.half_body_prob > 0 and rng.random() < spec.half_body_prob)
    return Augmentation(scale=scale, rotation=rotation, flip=flip, half_body=half_body)


def half_body_box(
    joints: np.ndarray, lower_mask: np.ndarray, rng: np.random.Generator
) -> tuple[float, float, float, float] | None:
    """A box (x, y, w, h) around the upper or the lower body's labelled joints, or None.

    joints: (K, 3) x, y, v in image pixels. Needs more than ``HALF_BODY_MIN_JOINTS`` labelled
    joints; picks the upper body with p = 0.5 (when it has ≥ 2 labelled joints), else the
    lower. The box is enlarged by ``HALF_BODY_EXPAND`` about its centre.
    """
    labelled = joints[:, 2] > 0
    if labelled.sum() <= HALF_BODY_MIN_JOINTS:
        return None
    upper = labelled & ~lower_mask
    lower = labelled & lower_mask
    chosen = upper if (rng.random() < 0.5 and upper.sum() >= 2) else lower
    if chosen.sum() < 2:
        chosen = upper
    if chosen.sum() < 2:
        return None
    pts = joints[chosen, :2]
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    center = 0.5 * (lo + hi)
    w, h = (hi - lo) * HALF_BODY_EXPAND
    return (center[0] - 0.5 * w, center[1] - 0.5 * h, max(w, 1.0), max(h, 1.0))


def warp_and_normalize(image_bgr: np.ndarray, m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crops a BGR uint8 image (h, w, 3) with ``m`` and returns float32 (3, H, W): RGB,
    ImageNet-normalised. Outside the image is black (before normalisation)."""
    crop = cv2.warpAffine(
        image_bgr, m, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )  # (H, W, 3) uint8 BGR
    crop = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    out = crop.astype(np.float32)
    out *= _NORM_MUL
    out -= _NORM_SUB
    return np.ascontiguousarray(out.transpose(2, 0, 1))  # (3, H, W)


_NORM_MUL = (1.0 / (255.0 * np.array(IMAGENET_STD))).astype(np.float32)
_NORM_SUB = (np.array(IMAGENET_MEAN) / np.array(IMAGENET_STD)).astype(np.float32)
