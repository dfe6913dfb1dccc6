"""Heatmap encode/decode, the pixel convention, the crop and the flip test (no files needed)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nfs_orchestrator.data.heatmaps import (
    decode_heatmaps,
    encode_heatmaps,
    flip_back,
    heatmap_to_input,
    input_to_heatmap,
)
from nfs_orchestrator.data.inference import _model_heatmaps
from nfs_orchestrator.data.transforms import (
    apply_affine,
    box_to_center_scale,
    crop_affine,
    invert_affine,
)
from nfs_orchestrator.keypoints import load_schema

COCO = load_schema("coco17")


def test_input_heatmap_convention_is_area_aligned_and_invertible():
    # Input pixels 0..3 make heatmap pixel 0: their centre 1.5 is heatmap coordinate 0.
    assert np.allclose(input_to_heatmap(np.array([1.5, 5.5])), [0.0, 1.0])
    # Both grids cover the same extent [-0.5, N - 0.5].
    assert np.allclose(input_to_heatmap(np.array([-0.5, 191.5])), [-0.5, 47.5])
    pts = np.random.default_rng(0).uniform(-5, 200, size=(10, 2))
    assert np.allclose(heatmap_to_input(input_to_heatmap(pts)), pts)
    # A flip of the input (x -> W-1-x) is a flip of the heatmap (x -> W/4-1-x): no shift.
    x = np.array([0.0, 17.3, 100.0, 191.0])
    assert np.allclose(input_to_heatmap(191.0 - x), 47.0 - input_to_heatmap(x))


def test_encode_is_closed_form_gaussian_with_zero_maps_for_unlabelled():
    coords = np.array([[10.0, 20.0], [3.25, 4.75], [0.0, 0.0]])
    hm = encode_heatmaps(coords, np.array([1, 1, 0]), (48, 64), sigma=2.0)
    assert hm.shape == (3, 64, 48) and hm.dtype == np.float32
    assert hm[0, 20, 10] == 1.0 and np.isclose(hm[0, 20, 12], np.exp(-4 / 8))
    assert hm[1].max() < 1.0  # the peak lies between pixels
    assert not hm[2].any()


def test_decode_of_encode_is_exact_up_to_quantisation():
    rng = np.random.default_rng(1)
    coords = rng.uniform(2, 45, size=(50, 2))
    hm = encode_heatmaps(coords, np.ones(50), (48, 48), sigma=2.0)[None]  # (1, 50, 48, 48)
    quarter, conf = decode_heatmaps(hm)
    assert np.abs(quarter[0] - coords).max() <= 0.26
    assert np.all(conf > 0.85)
    dark, _ = decode_heatmaps(torch.from_numpy(hm), dark=True)
    err = np.abs(dark[0] - coords).max(axis=1)
    interior = (coords.min(axis=1) > 6) & (coords.max(axis=1) < 41)  # 3 sigma from the border
    assert err.max() < 0.25 and err[interior].max() < 0.01
    integer = np.array([[[10.0, 20.0]]])
    exact, _ = decode_heatmaps(encode_heatmaps(integer[0], np.ones(1), (48, 48), 2.0)[None])
    assert np.array_equal(exact, integer)


def test_crop_affine_maps_box_onto_input_extent_and_inverts():
    center, scale = box_to_center_scale([100, 50, 60, 120], 192 / 256, 1.25)
    assert np.isclose(scale[0] / scale[1], 192 / 256) and np.isclose(scale[1], 150)
    m = crop_affine(center, scale, 0.0, (192, 256))
    corners = center + np.array([[-0.5, -0.5], [0.5, 0.5]]) * scale
    assert np.allclose(apply_affine(corners, m), [[-0.5, -0.5], [191.5, 255.5]])
    for rot, flip in [(30.0, False), (-70.0, True)]:
        m = crop_affine(center, scale, rot, (192, 256), flip=flip)
        pts = np.random.default_rng(2).uniform(0, 300, size=(7, 2))
        assert np.allclose(apply_affine(apply_affine(pts, m), invert_affine(m)), pts)
    m = crop_affine(center, scale, 0.0, (192, 256), flip=True)
    assert np.allclose(apply_affine(corners, m), [[191.5, -0.5], [-0.5, 255.5]])


class MirrorEquivariant(torch.nn.Module):
    """A model with f(flip x) = flip_back(f(x)) exactly: channel k pools image channel 0
    weighted by a ramp that runs left→right for left joints, right→left for right joints and
    is flat for centre joints."""

    def __init__(self, schema, width: int) -> None:
        super().__init__()
        ramp = torch.linspace(0.2, 1.0, width)
        rows = []
        for name in schema.keypoints:
            rows.append(
                ramp
                if name.startswith("left")
                else ramp.flip(0)
                if name.startswith("right")
                else torch.ones(width)
            )
        self.register_buffer("w", torch.stack(rows)[None, :, None, :])  # (1, K, 1, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x[:, :1] * self.w, 4)  # (B, K, H/4, W/4)


def test_flip_test_of_equivariant_model_equals_plain_prediction():
    model = MirrorEquivariant(COCO, 48)
    x = torch.rand(2, 3, 64, 48)
    perm = COCO.flip_permutation()
    plain = model(x)
    _, merged = _model_heatmaps(model, x, perm, flip_test=True)
    assert torch.allclose(merged, plain, atol=1e-6)
    # With a 1-px shift (the HRNet convention) the merge would not be exact here.
    shifted = flip_back(model(x.flip(-1)), perm)
    shifted[..., 1:] = shifted[..., :-1].clone()
    assert not torch.allclose(0.5 * (plain + shifted), plain, atol=1e-3)


def test_flip_test_of_symmetric_input_is_symmetric():
    model = MirrorEquivariant(COCO, 48)
    perm = COCO.flip_permutation()
    ys, xs = np.mgrid[0:64, 0:48]

    def blob(cx: float, cy: float, amp: float) -> np.ndarray:
        return amp * np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 3.0**2))

    # Left/right symmetric image: a mirrored pair of blobs and a brighter one on the axis.
    img = blob(10, 20, 1.0) + blob(37, 20, 1.0) + blob(23.5, 44, 1.3)
    x = torch.from_numpy(img.astype(np.float32))[None, None].expand(1, 3, 64, 48)
    _, merged = _model_heatmaps(model, x, perm, flip_test=True)
    assert torch.allclose(flip_back(merged, perm), merged, atol=1e-6)
    coords, _ = decode_heatmaps(merged, dark=True)
    # Mirror images of each other under the schema swap: x_k = (48/4 - 1) - x_perm(k). The
    # centre joints' peak lies exactly between two pixels (a tie): DARK gets within 0.02.
    assert np.allclose(coords[0, :, 0], 11.0 - coords[0, perm, 0], atol=0.02)
    assert np.allclose(coords[0, :, 1], coords[0, perm, 1], atol=1e-3)


def test_pooled_blob_decodes_to_its_input_pixel():
    """A stride-4 average pool of a blob centred at input pixel x decodes to x: the encode and
    decode convention is the geometry of a stride-4 network, not an arbitrary offset."""
    h, w = 64, 96
    ys, xs = np.mgrid[0:h, 0:w]
    for cx, cy in [(37.0, 21.0), (50.3, 30.8)]:
        blob = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 8.0**2)).astype(np.float32)
        hm = F.avg_pool2d(torch.from_numpy(blob)[None, None], 4)  # (1, 1, 16, 24)
        coords, _ = decode_heatmaps(hm, dark=True)
        assert np.allclose(heatmap_to_input(coords[0, 0]), [cx, cy], atol=0.15)
