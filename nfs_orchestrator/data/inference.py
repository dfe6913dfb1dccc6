"""Run a heatmap model over a dataset, decode, write prediction files and score them.

What this is: ``predict`` (model → heatmaps, optional flip test, decode, back to original image
pixels), the COCO post-processing of the reference (instance rescoring, greedy OKS-NMS at 0.9,
the official results json) and ``evaluate_model``, which ties these to ``evaluation``.
What it is not: a trainer, nor the scorer itself (``nfs_orchestrator.evaluation``).

The model maps images (B, 3, H, W) to heatmaps (B, K, H/4, W/4). The flip test runs it again
on the mirrored batch and averages with ``heatmaps.flip_back`` of that output: under this
package's pixel convention a mirrored input is exactly a mirrored heatmap, so no 1-px shift.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from nfs_orchestrator.data.dataset import TopDownDataset
from nfs_orchestrator.data.heatmaps import decode_heatmaps, flip_back, heatmap_to_input
from nfs_orchestrator.data.transforms import apply_affine, invert_affine
from nfs_orchestrator.errors import InputError, SpecError
from nfs_orchestrator.evaluation import (
    evaluate_coco,
    load_mpii_ground_truth,
    pckh,
    write_json_atomic,
    write_mat_atomic,
)
from nfs_orchestrator.hardware import Execution, run_model
from nfs_orchestrator.keypoints import KeypointSchema, PartGrouping
from nfs_orchestrator.part_metrics import coco_part_ap, mpii_part_pckh
from nfs_orchestrator.specs import DataSpec

NMS_OKS_THRESHOLD = 0.9
RESCORE_CONFIDENCE_THRESHOLD = 0.2


@dataclass(frozen=True)
class Predictions:
    """Decoded predictions, one row per dataset instance, in dataset order."""

    keypoints: np.ndarray  # (N, K, 2) original image pixels, schema order
    confidences: np.ndarray  # (N, K) heatmap maxima
    image_ids: np.ndarray  # (N,) int64
    box_scores: np.ndarray  # (N,)
    box_areas: np.ndarray  # (N,) box w·h (the OKS-NMS area)
    ann_ids: np.ndarray  # (N,) int64 (MPII: ground-truth row)
    indices: np.ndarray  # (N,) dataset indices

    def __len__(self) -> int:
        return len(self.image_ids)


def heatmap_coords_to_image(
    coords: np.ndarray, affines: np.ndarray, flipped: np.ndarray, flip_perm: Sequence[int]
) -> np.ndarray:
    """Heatmap-pixel coordinates (B, K, 2) → original image pixels (B, K, 2).

    ``affines`` (B, 2, 3) map image → input (``meta["affine"]``); for ``flipped`` samples the
    channels hold mirrored labels and are put back in schema order.
    """
    pts = apply_affine(heatmap_to_input(coords), invert_affine(affines))  # (B, K, 2)
    flipped = np.asarray(flipped, dtype=bool)
    if flipped.any():
        pts[flipped] = pts[flipped][:, list(flip_perm)]
    return pts


def _model_heatmaps(
    model: torch.nn.Module,
    images: torch.Tensor,
    flip_perm,
    flip_test: bool,
    execution: Execution | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(plain, decoded) heatmaps (B, K, H/4, W/4): the plain forward, and with ``flip_test``
    its average with the flipped forward mapped back (else the plain one again)."""
    plain = run_model(model, images, execution)
    if not flip_test:
        return plain, plain
    flipped = run_model(model, images.flip(-1), execution)
    return plain, 0.5 * (plain + flip_back(flipped, flip_perm))


def predict(
    model: torch.nn.Module,
    dataset: TopDownDataset,
    *,
    batch_size: int = 32,
    flip_test: bool = True,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    dark: bool = False,
    observe: Callable[[torch.Tensor, dict], None] | None = None,
    execution: Execution | None = None,
) -> Predictions:
    """Runs ``model`` (eval mode, no grad; its train/eval mode is restored after) over
    ``dataset`` in order and decodes each heatmap (argmax + quarter offset, or DARK).
    ``observe(plain_heatmaps, batch)``, if given, sees every batch's unflipped forward (e.g. a
    validation loss computed in the same pass). ``execution``: precision and input layout of
    the forward passes (``hardware.run_model``; None = plain fp32)."""
    device = torch.device(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    flip_perm = dataset.schema.flip_permutation()
    was_training = model.training
    model.eval()
    parts: dict[str, list[np.ndarray]] = {k: [] for k in Predictions.__dataclass_fields__}
    try:
        with torch.no_grad():
            for batch in loader:
                meta = batch["meta"]
                plain, heatmaps = _model_heatmaps(
                    model,
                    batch["image"].to(device, non_blocking=True),
                    flip_perm,
                    flip_test,
                    execution,
                )
                if observe is not None:
                    observe(plain, batch)
                coords, maxvals = decode_heatmaps(heatmaps, dark=dark)  # (B, K, 2), (B, K)
                pts = heatmap_coords_to_image(
                    coords, meta["affine"].numpy(), meta["flipped"].numpy(), flip_perm
                )
                if meta["flipped"].numpy().any():
                    f = meta["flipped"].numpy().astype(bool)
                    maxvals[f] = maxvals[f][:, flip_perm]
                box = meta["box"].numpy().astype(np.float64)
                parts["keypoints"].append(pts)
                parts["confidences"].append(maxvals)
                parts["image_ids"].append(meta["image_id"].numpy())
                parts["box_scores"].append(meta["score"].numpy().astype(np.float64))
                parts["box_areas"].append(box[:, 2] * box[:, 3])
                parts["ann_ids"].append(meta["ann_id"].numpy())
                parts["indices"].append(meta["index"].numpy())
    finally:
        model.train(was_training)
    k = dataset.schema.num_keypoints
    empty = {"keypoints": (0, k, 2), "confidences": (0, k)}
    return Predictions(
        **{
            name: np.concatenate(v) if v else np.zeros(empty.get(name, (0,)))
            for name, v in parts.items()
        }
    )


# --------------------------------------------------------------------------------------------
# COCO post-processing
# --------------------------------------------------------------------------------------------


def rescore(
    box_scores: np.ndarray, confidences: np.ndarray, threshold: float = RESCORE_CONFIDENCE_THRESHOLD
) -> np.ndarray:
    """Instance score = box score × mean of the keypoint confidences above ``threshold``
    (0 when none is). box_scores (N,), confidences (N, K) → (N,)."""
    above = confidences > threshold
    total = np.where(above, confidences, 0.0).sum(axis=1)
    count = above.sum(axis=1)
    mean = np.divide(total, count, out=np.zeros(len(count)), where=count > 0)
    return box_scores * mean


def oks_matrix(keypoints: np.ndarray, areas: np.ndarray, sigmas: Sequence[float]) -> np.ndarray:
    """Pairwise OKS (N, N) of keypoints (N, K, 2) with per-instance areas (N,); the area of a
    pair is the mean of the two (as the HRNet/reference ``oks_iou``)."""
    var = (2.0 * np.asarray(sigmas, dtype=np.float64)) ** 2  # (K,)
    d2 = ((keypoints[:, None, :, :] - keypoints[None, :, :, :]) ** 2).sum(-1)  # (N, N, K)
    area = 0.5 * (areas[:, None] + areas[None, :]) + np.spacing(1)  # (N, N)
    e = d2 / var / area[..., None] / 2.0
    return np.exp(-e).mean(axis=-1)


def oks_nms(
    keypoints: np.ndarray,
    scores: np.ndarray,
    areas: np.ndarray,
    sigmas: Sequence[float],
    threshold: float = NMS_OKS_THRESHOLD,
) -> list[int]:
    """Greedy OKS-NMS: keeps the best-scored instance and drops the rest with OKS > threshold
    to it, repeatedly. Returns kept indices, best first."""
    order = list(np.argsort(-scores, kind="stable"))
    oks = oks_matrix(keypoints, areas, sigmas)
    keep = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        order = [j for j in order if oks[i, j] <= threshold]
    return keep


def coco_results(
    pred: Predictions,
    sigmas: Sequence[float],
    *,
    nms_threshold: float = NMS_OKS_THRESHOLD,
    confidence_threshold: float = RESCORE_CONFIDENCE_THRESHOLD,
) -> list[dict]:
    """The official COCO keypoint results list: rescoring, then OKS-NMS per image."""
    scores = rescore(pred.box_scores, pred.confidences, confidence_threshold)
    out = []
    for image_id in np.unique(pred.image_ids):
        rows = np.flatnonzero(pred.image_ids == image_id)
        keep = oks_nms(
            pred.keypoints[rows], scores[rows], pred.box_areas[rows], sigmas, nms_threshold
        )
        for r in rows[keep]:
            kps = np.concatenate([pred.keypoints[r], pred.confidences[r][:, None]], axis=1)
            out.append(
                {
                    "image_id": int(image_id),
                    "category_id": 1,
                    "keypoints": [round(float(v), 3) for v in kps.ravel()],
                    "score": float(scores[r]),
                }
            )
    return out


# --------------------------------------------------------------------------------------------
# Model → metrics
# --------------------------------------------------------------------------------------------


def evaluate_model(
    model: torch.nn.Module,
    dataset: TopDownDataset,
    spec: DataSpec,
    schema: KeypointSchema,
    *,
    device: str | torch.device,
    batch_size: int = 32,
    work_dir: str | Path,
    num_workers: int = 0,
    observe: Callable[[torch.Tensor, dict], None] | None = None,
    execution: Execution | None = None,
    grouping: PartGrouping | None = None,
) -> dict[str, float]:
    """Predicts ``dataset`` (flip test per ``spec.flip_test``, decoding per ``spec.decode``)
    and scores it.

    COCO / synthetic: rescoring and OKS-NMS at ``spec.oks_nms_threshold``, then writes
    ``work_dir/keypoints_results.json`` and returns the ten COCO stats (only
    ``dataset.scored_image_ids`` are scored when it was capped). MPII: writes
    ``work_dir/pred.mat`` (``preds`` (N, 16, 2), 0-based) and returns the PCKh stats against
    ``dataset.gt_mat`` (``spec.val_gt_mat``), on the ground-truth rows the dataset holds.
    ``num_workers``, ``observe`` and ``execution`` go to ``predict``. With ``grouping``, each
    part is scored on its own keypoints too: ``AP.<part>`` (COCO) or ``PCKh.<part>`` (MPII), see
    ``part_metrics``.
    """
    pred = predict(
        model,
        dataset,
        batch_size=batch_size,
        flip_test=spec.flip_test,
        device=device,
        num_workers=num_workers,
        dark=spec.decode == "dark",
        observe=observe,
        execution=execution,
    )
    work = Path(work_dir)
    if dataset.kind == "mpii":
        if dataset.gt_mat is None:
            raise SpecError("val_gt_mat: required to score MPII predictions (PCKh)")
        write_mat_atomic(work / "pred.mat", {"preds": pred.keypoints})
        gt = load_mpii_ground_truth(dataset.gt_mat)
        if pred.ann_ids.size and pred.ann_ids.max() >= gt.num_people:
            raise InputError(
                f"{dataset.gt_mat}: has {gt.num_people} people, the dataset "
                f"{dataset.annotations} has more"
            )
        stats = pckh(gt, pred.keypoints, rows=pred.ann_ids)
        if grouping is not None:
            stats.update(
                _per_part("PCKh", mpii_part_pckh(gt, pred.keypoints, grouping, rows=pred.ann_ids))
            )
        return stats
    if schema.sigmas is None:
        raise SpecError(f"schema {schema.name}: COCO scoring needs OKS sigmas")
    results = coco_results(pred, schema.sigmas, nms_threshold=spec.oks_nms_threshold)
    path = write_json_atomic(work / "keypoints_results.json", results)
    image_ids = None
    if dataset.capped:
        scored = dataset.scored_image_ids
        image_ids = (scored if scored is not None else np.unique(dataset.image_ids)).tolist()
    stats = evaluate_coco(dataset.annotations, path, image_ids=image_ids, sigmas=schema.sigmas)
    if grouping is not None:
        parts = coco_part_ap(dataset.annotations, results, grouping, image_ids=image_ids)
        stats.update(_per_part("AP", parts))
    return stats


def _per_part(stat: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{stat}.{part}": v for part, v in values.items()}
