"""COCO person keypoints: read ``person_keypoints_*.json`` (and person detections) into an index.

What this is: the reference's instance selection (area > 0, ≥ 1 labelled keypoint, not crowd;
box enlarged to cover the labelled keypoints + 5 px, clipped to the image), detector boxes for
validation (category 1, score ≥ threshold), and the cached Parquet index of either.
What it is not: the torch dataset (``dataset.py``), nor the validator of the COCO layout, which
``evaluation.validate_coco`` is for both indexing and scoring (one-line ``InputError`` messages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nfs_orchestrator.data.index import AnnotationIndex, Instances, cached_index
from nfs_orchestrator.errors import InputError
from nfs_orchestrator.evaluation import PERSON_CATEGORY, finite_number, validate_coco
from nfs_orchestrator.files import read_json

RECTIFY_MARGIN = 5  # px added around the labelled keypoints (reference bbox_rectify)


def rectify_box(
    box: list[float], joints: np.ndarray, width: int, height: int, margin: int = RECTIFY_MARGIN
) -> list[float]:
    """Enlarges box (x, y, w, h) to cover the labelled joints (K, 3) plus ``margin`` px,
    clipped to the image (the reference's ``bbox_rectify``, integer-truncated like it)."""
    labelled = joints[joints[:, 2] > 0]
    if len(labelled) == 0:
        return list(box)
    x0 = min(labelled[:, 0].min(), box[0])
    y0 = min(labelled[:, 1].min(), box[1])
    x1 = max(labelled[:, 0].max(), box[0] + box[2])
    y1 = max(labelled[:, 1].max(), box[1] + box[3])
    x0, y0 = max(0, int(x0 - margin)), max(0, int(y0 - margin))
    x1, y1 = min(width, int(x1 + margin)), min(height, int(y1 + margin))
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def coco_gt_instances(data: dict, path: Path) -> Instances:
    """Instances with ground-truth boxes: area > 0, ≥ 1 labelled keypoint, not crowd; box
    rectified; ordered by (image_id, annotation id)."""
    images, k = validate_coco(data, path)
    records = []
    for ann in data["annotations"]:
        joints = np.asarray(ann["keypoints"], dtype=np.float64).reshape(k, 3)
        if ann.get("iscrowd", 0) or ann.get("area", 0) <= 0 or not (joints[:, 2] > 0).any():
            continue
        img = images[ann["image_id"]]
        box = rectify_box(ann["bbox"], joints, img["width"], img["height"])
        if box[2] <= 0 or box[3] <= 0:
            continue
        records.append(
            {
                "image_id": ann["image_id"],
                "file_name": img["file_name"],
                "width": img["width"],
                "height": img["height"],
                "box": box,
                "score": 1.0,
                "area": float(ann["area"]),
                "ann_id": ann["id"],
                "joints": joints,
            }
        )
    records.sort(key=lambda r: (r["image_id"], r["ann_id"]))
    return Instances.from_records(records, k)


def coco_det_instances(
    data: dict, path: Path, dets: Any, det_path: Path, threshold: float
) -> Instances:
    """Instances from a person-detector results file (list of ``image_id, bbox, score,
    category_id``): category 1 only, score ≥ ``threshold``, positive size; ordered by image
    id then descending score. Joints are unknown (all zero)."""
    images, k = validate_coco(data, path)
    if not isinstance(dets, list):
        raise InputError(f"{det_path}: expected a list of detections, got {type(dets).__name__}")
    records = []
    for i, det in enumerate(dets):
        where = f"{det_path}: record {i}"
        if not isinstance(det, dict):
            raise InputError(f"{where}: not an object")
        bbox, score = det.get("bbox"), det.get("score")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(finite_number, bbox)):
            raise InputError(f"{where}: 'bbox' must be 4 numbers [x, y, w, h]")
        if not finite_number(score):
            raise InputError(f"{where}: 'score' must be a finite number")
        if det.get("category_id", PERSON_CATEGORY) != PERSON_CATEGORY or score < threshold:
            continue
        if det.get("image_id") not in images:
            raise InputError(f"{where}: image_id {det.get('image_id')!r} is not in the annotations")
        if bbox[2] <= 0 or bbox[3] <= 0:
            continue
        img = images[det["image_id"]]
        records.append(
            {
                "image_id": det["image_id"],
                "file_name": img["file_name"],
                "width": img["width"],
                "height": img["height"],
                "box": [float(v) for v in bbox],
                "score": float(score),
                "area": float(bbox[2] * bbox[3]),
                "ann_id": -1,
                "joints": np.zeros((k, 3)),
            }
        )
    records.sort(key=lambda r: (r["image_id"], -r["score"]))
    return Instances.from_records(records, k)


def load_coco_index(
    annotations: str | Path,
    *,
    detections: str | Path | None = None,
    det_score_threshold: float = 0.0,
    cache_dir: str | Path | None = None,
) -> AnnotationIndex:
    """The cached index of a COCO keypoint file: ground-truth instances, or detector boxes when
    ``detections`` is given. Built once; rebuilt when a source file changes."""
    ann = Path(annotations)
    if detections is None:
        return cached_index(
            [ann], "gt", {}, lambda: coco_gt_instances(read_json(ann), ann), cache_dir=cache_dir
        )
    det = Path(detections)
    options = {"det_score_threshold": float(det_score_threshold)}

    def build() -> Instances:
        return coco_det_instances(read_json(ann), ann, read_json(det), det, det_score_threshold)

    variant = f"det-{det.stem}"
    return cached_index([ann, det], variant, options, build, cache_dir=cache_dir)
