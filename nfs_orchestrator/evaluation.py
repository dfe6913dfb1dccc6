"""Scoring of keypoint predictions: COCO OKS AP (pycocotools) and MPII PCKh (standard protocol).

What this is: validation of ground-truth and prediction files (every problem is one
``InputError`` line naming the file and the record; ``validate_coco`` is also the check
``data.coco`` indexes with), the two scorers, readable tables, writers of results files (through
``files.write_atomic``), and ``run_evaluate_cli`` behind ``posenfs evaluate coco|mpii``.
What it is not: a model runner; ``data.inference`` turns a model's heatmaps into the
prediction files scored here. Pure numpy / scipy / pycocotools: no torch needed.

COCO: ``evaluate_coco(gt.json, dt.json)`` runs ``COCOeval(gt, dt, "keypoints")`` and returns
AP, AP50, AP75, APm, APl, AR, AR50, AR75, ARm, ARl as the fractions COCOeval reports (-1 where
a stat is undefined, e.g. no medium people). ``dt.json`` is the official results format: a
list of ``{"image_id", "category_id", "keypoints": [x, y, v] * K, "score"}``.

MPII: ``evaluate_mpii(gt_valid.mat, pred.mat)`` follows the common MPII evaluation code
(HRNet / mmpose): ``pred.mat`` holds ``preds`` (N, 16, 2), 0-based image pixels in the original
MPII joint order, one row per person of the ground truth, in its order; they are made 1-based
(+1) to match ``pos_gt_src`` (16, 2, N, 1-based MATLAB pixels). A joint is correct when its
distance is ≤ 0.5 × (0.6 × head-box diagonal) (``headboxes_src`` (2, 2, N)); only visible joints
count (``1 - jnt_missing``, (16, N)). Stats are percentages; Mean excludes pelvis and thorax and
weights joints by their visible counts. Mean@0.1 uses threshold 0.1 exactly (the HRNet code
indexes its threshold grid at 0.11 under this name; mmpose uses 0.1).
"""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from nfs_orchestrator.errors import InputError
from nfs_orchestrator.files import read_checked, read_json, write_atomic

COCO_STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
MPII_STATS = ("Head", "Shoulder", "Elbow", "Wrist", "Hip", "Knee", "Ankle", "Mean", "Mean@0.1")
MPII_JOINT_NAMES = (
    "rank", "rkne", "rhip", "lhip", "lkne", "lank", "pelv", "thor",
    "neck", "head", "rwri", "relb", "rsho", "lsho", "lelb", "lwri",
)  # fmt: skip
PCKH_SC_BIAS = 0.6
PCKH_THRESHOLD = 0.5
PERSON_CATEGORY = 1

# --------------------------------------------------------------------------------------------
# Results files (written through files.write_atomic: never left half-written)
# --------------------------------------------------------------------------------------------


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    return write_atomic(path, json.dumps(obj))


def write_mat_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """``scipy.io.savemat`` through ``files.write_atomic``."""
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, arrays)
    return write_atomic(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------


def finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


@contextlib.contextmanager
def _quiet():
    """Silences pycocotools' progress prints. Redirecting stdout is not enough inside a Ray
    Train worker, whose patched ``print`` also logs every line, so ``print`` itself is muted for
    the block (a print from another thread in that window is lost too)."""
    saved = builtins.print
    builtins.print = lambda *args, **kwargs: None
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        builtins.print = saved


def validate_coco(
    data: Any, path: Path, require: Sequence[str] = ()
) -> tuple[dict[int, dict], int]:
    """Checks a COCO keypoint annotation file's layout; returns images by id and the number of
    keypoints K. ``require``: annotation keys that must be present besides the checked ones
    (scoring needs ``area`` and ``num_keypoints``).

    Raises ``InputError`` naming the file and the first bad record.
    """
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a COCO json object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{path}: missing list {key!r} (not a COCO annotation file)")
    images: dict[int, dict] = {}
    for i, img in enumerate(data["images"]):
        if not isinstance(img, dict):
            raise InputError(f"{path}: images record {i}: not an object")
        for key in ("id", "width", "height"):
            if not isinstance(img.get(key), int):
                raise InputError(f"{path}: images record {i}: {key!r} missing or not an integer")
        if not isinstance(img.get("file_name"), str):
            raise InputError(f"{path}: images record {i}: 'file_name' missing or not a string")
        images[img["id"]] = img
    k = _num_keypoints(data, path)
    for i, ann in enumerate(data["annotations"]):
        where = f"{path}: annotations record {i}"
        if not isinstance(ann, dict):
            raise InputError(f"{where}: not an object")
        if ann.get("image_id") not in images:
            raise InputError(f"{where}: image_id {ann.get('image_id')!r} is not in 'images'")
        kps = ann.get("keypoints")
        if not isinstance(kps, list) or len(kps) != 3 * k or not all(map(finite_number, kps)):
            raise InputError(f"{where}: 'keypoints' must be {3 * k} numbers (x, y, v) * {k}")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(map(finite_number, bbox)):
            raise InputError(f"{where}: 'bbox' must be 4 numbers [x, y, w, h]")
        if not finite_number(ann.get("area", 0)) or not isinstance(ann.get("id"), int):
            raise InputError(f"{where}: 'area' must be a number and 'id' an integer")
        for key in require:
            if key not in ann:
                raise InputError(f"{where}: missing {key!r}")
    return images, k


def _num_keypoints(data: dict, path: Path) -> int:
    for cat in data["categories"]:
        if isinstance(cat, dict) and cat.get("id") == PERSON_CATEGORY:
            names = cat.get("keypoints")
            if isinstance(names, list) and names:
                return len(names)
    for ann in data["annotations"]:
        if isinstance(ann, dict) and isinstance(ann.get("keypoints"), list):
            return len(ann["keypoints"]) // 3
    raise InputError(f"{path}: no person category with 'keypoints' and no annotations")


def _coco_gt(path: Path) -> tuple[Any, int]:
    """A pycocotools ``COCO`` of the ground truth (checked by ``validate_coco``) and its K."""
    from pycocotools.coco import COCO

    data = read_json(path)
    _, k = validate_coco(data, path, require=("area", "num_keypoints"))
    gt = COCO()
    gt.dataset = data
    with _quiet():
        gt.createIndex()
    return gt, k


def validate_coco_results(results: Any, path: Path, gt: Any, num_keypoints: int) -> list[dict]:
    """Checks a results list against the ground truth; returns it (records as given)."""
    if not isinstance(results, list):
        raise InputError(f"{path}: expected a list of results, got {type(results).__name__}")
    images = set(gt.getImgIds())
    categories = set(gt.getCatIds())
    n = 3 * num_keypoints
    for i, rec in enumerate(results):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: not an object")
        for key in ("image_id", "category_id", "keypoints", "score"):
            if key not in rec:
                raise InputError(f"{where}: missing {key!r}")
        if rec["image_id"] not in images:
            raise InputError(f"{where}: image_id {rec['image_id']!r} is not in the annotations")
        if rec["category_id"] not in categories:
            raise InputError(
                f"{where}: category_id {rec['category_id']!r} is not in the annotations"
            )
        kps = rec["keypoints"]
        if not isinstance(kps, list) or len(kps) != n:
            got = len(kps) if isinstance(kps, list) else type(kps).__name__
            raise InputError(
                f"{where}: 'keypoints' has {got} values, expected {n} ({num_keypoints} × x, y, v)"
            )
        if not all(map(finite_number, kps)):
            raise InputError(f"{where}: 'keypoints' holds a value that is not a finite number")
        if not finite_number(rec["score"]):
            raise InputError(f"{where}: 'score' is not a finite number")
    return results


def evaluate_coco(
    annotations: str | Path,
    predictions: str | Path,
    *,
    image_ids: Iterable[int] | None = None,
    sigmas: Sequence[float] | None = None,
) -> dict[str, float]:
    """COCO keypoint AP/AR of a results file against ``person_keypoints_*.json``.

    ``image_ids`` restricts scoring to those images (e.g. a capped validation set); ``sigmas``
    replaces pycocotools' COCO-17 OKS sigmas (needed for K ≠ 17). An empty results list
    scores 0 everywhere.
    """

    ann, pred = Path(annotations), Path(predictions)
    gt, k = _coco_gt(ann)
    results = validate_coco_results(read_json(pred), pred, gt, k)
    if sigmas is None and k != 17:
        raise InputError(
            f"{ann}: {k} keypoints; OKS sigmas are needed for a schema other than COCO-17"
        )
    if not results:
        return dict.fromkeys(COCO_STATS, 0.0)
    stats = cocoeval_stats(gt, results, sigmas, image_ids)
    return {name: float(v) for name, v in zip(COCO_STATS, stats, strict=True)}


def cocoeval_stats(
    gt: Any,
    results: Sequence[Mapping[str, Any]],
    sigmas: Sequence[float] | None = None,
    image_ids: Iterable[int] | None = None,
) -> list[float]:
    """pycocotools' ten keypoint stats of ``results`` (non-empty) on the ``COCO`` object ``gt``,
    with ``sigmas`` for the OKS (default: COCO-17's) and scoring restricted to ``image_ids``."""
    from pycocotools.cocoeval import COCOeval

    with _quiet():
        dt = gt.loadRes([dict(r) for r in results])
        ev = COCOeval(gt, dt, "keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        if image_ids is not None:
            ev.params.imgIds = sorted({int(i) for i in image_ids})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


# --------------------------------------------------------------------------------------------
# MPII
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MpiiGroundTruth:
    """The standard validation ground truth (``gt_valid.mat``), N people."""

    joint_names: tuple[str, ...]  # 16 MPII short names, e.g. 'rank', 'head'
    jnt_missing: np.ndarray  # (16, N) 1 = not annotated
    pos_gt_src: np.ndarray  # (16, 2, N) 1-based MATLAB pixels
    headboxes_src: np.ndarray  # (2, 2, N) [corner, xy, person]

    @property
    def num_people(self) -> int:
        return int(self.pos_gt_src.shape[2])


def _loadmat(path: Path) -> dict[str, Any]:
    from scipy.io import loadmat

    return read_checked(  # scipy raises several types for a bad file
        path,
        lambda p: loadmat(str(p)),
        failure=lambda e: f"not a readable .mat file: {str(e).splitlines()[0]}",
    )


def _joint_names(value: np.ndarray, path: Path) -> tuple[str, ...]:
    names = []
    for v in np.ravel(value):
        while isinstance(v, np.ndarray) and v.size == 1 and v.dtype == object:
            v = v.item()
        names.append(str(np.squeeze(v)))
    if sorted(names) != sorted(MPII_JOINT_NAMES):
        raise InputError(f"{path}: dataset_joints {names} are not the 16 MPII joint names")
    return tuple(names)


def load_mpii_ground_truth(path: str | Path) -> MpiiGroundTruth:
    """Reads and checks ``gt_valid.mat`` (fields ``dataset_joints``, ``jnt_missing``,
    ``pos_gt_src``, ``headboxes_src``)."""
    path = Path(path)
    mat = _loadmat(path)
    for key in ("dataset_joints", "jnt_missing", "pos_gt_src", "headboxes_src"):
        if key not in mat:
            raise InputError(f"{path}: field {key!r} is missing (not an MPII gt_valid.mat)")
    pos = np.asarray(mat["pos_gt_src"], dtype=np.float64)
    if pos.ndim == 2:
        pos = pos[:, :, None]  # savemat drops a trailing singleton (N = 1)
    if pos.ndim != 3 or pos.shape[:2] != (16, 2):
        raise InputError(f"{path}: pos_gt_src has shape {pos.shape}, expected (16, 2, N)")
    n = pos.shape[2]
    missing = np.asarray(mat["jnt_missing"], dtype=np.float64).reshape(16, -1)
    boxes = np.asarray(mat["headboxes_src"], dtype=np.float64)
    if boxes.ndim == 2:
        boxes = boxes[:, :, None]
    if missing.shape != (16, n) or boxes.shape != (2, 2, n):
        raise InputError(
            f"{path}: jnt_missing {missing.shape} / headboxes_src {boxes.shape} do not match "
            f"pos_gt_src (16, 2, {n})"
        )
    return MpiiGroundTruth(_joint_names(mat["dataset_joints"], path), missing, pos, boxes)


def load_mpii_predictions(path: str | Path, num_people: int) -> np.ndarray:
    """``preds`` (N, 16, 2) from ``pred.mat`` (0-based pixels); N must be ``num_people``."""
    path = Path(path)
    mat = _loadmat(path)
    if "preds" not in mat:
        raise InputError(f"{path}: field 'preds' is missing")
    preds = np.asarray(mat["preds"], dtype=np.float64)
    if preds.ndim == 2 and preds.shape[0] == 16:
        preds = preds[None]  # N = 1
    if preds.ndim != 3 or preds.shape[1] != 16 or preds.shape[2] < 2:
        raise InputError(f"{path}: preds has shape {preds.shape}, expected (N, 16, 2)")
    if preds.shape[0] != num_people:
        raise InputError(
            f"{path}: preds has {preds.shape[0]} people, the ground truth has {num_people}"
        )
    if not np.isfinite(preds[..., :2]).all():
        row = int(np.argwhere(~np.isfinite(preds[..., :2]))[0, 0])
        raise InputError(f"{path}: record {row}: preds holds a value that is not finite")
    return preds[..., :2]


def pckh_scaled_errors(
    gt: MpiiGroundTruth, preds: np.ndarray, rows: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(errors scaled by the head size, visibility), both (16, M), of ``preds`` (M, 16, 2;
    0-based image px) against the ground-truth people ``rows`` (default: all N, then M = N),
    by the standard protocol (1-based MPII coordinates, head box × ``PCKH_SC_BIAS``)."""
    sel = np.arange(gt.num_people) if rows is None else np.asarray(rows, dtype=np.int64)
    if len(sel) != len(preds):
        raise InputError(f"{len(preds)} predictions for {len(sel)} ground-truth people")
    visible = 1.0 - gt.jnt_missing[:, sel]  # (16, M)
    pos_pred = np.transpose(np.asarray(preds, dtype=np.float64) + 1.0, (1, 2, 0))  # (16, 2, M)
    err = np.linalg.norm(pos_pred - gt.pos_gt_src[:, :, sel], axis=1)  # (16, M)
    boxes = gt.headboxes_src[:, :, sel]  # (2, 2, M)
    head_size = np.linalg.norm(boxes[1] - boxes[0], axis=0) * PCKH_SC_BIAS  # (M,)
    return err / np.maximum(head_size, 1e-12)[None, :], visible


def pckh(
    gt: MpiiGroundTruth, preds: np.ndarray, *, rows: Sequence[int] | None = None
) -> dict[str, float]:
    """PCKh stats of ``preds`` (M, 16, 2; 0-based image px) against the ground-truth people
    ``rows`` (default: all N, then M = N)."""
    j = {name: i for i, name in enumerate(gt.joint_names)}
    scaled, visible = pckh_scaled_errors(gt, preds, rows)  # (16, M) each
    count = visible.sum(axis=1)  # (16,)

    def pck_at(threshold: float) -> np.ndarray:
        hits = ((scaled <= threshold) * visible).sum(axis=1)
        return np.divide(100.0 * hits, count, out=np.zeros(16), where=count > 0)

    at05, at01 = pck_at(PCKH_THRESHOLD), pck_at(0.1)
    in_mean = np.ones(16, dtype=bool)
    in_mean[[j["pelv"], j["thor"]]] = False
    weights = np.where(in_mean, count, 0.0)
    weights = weights / weights.sum() if weights.sum() > 0 else weights

    def pair(a: str, b: str) -> float:
        return float(0.5 * (at05[j[a]] + at05[j[b]]))

    return {
        "Head": float(at05[j["head"]]),
        "Shoulder": pair("lsho", "rsho"),
        "Elbow": pair("lelb", "relb"),
        "Wrist": pair("lwri", "rwri"),
        "Hip": pair("lhip", "rhip"),
        "Knee": pair("lkne", "rkne"),
        "Ankle": pair("lank", "rank"),
        "Mean": float(np.sum(at05 * weights)),
        "Mean@0.1": float(np.sum(at01 * weights)),
    }


def evaluate_mpii(annotations_mat: str | Path, predictions_mat: str | Path) -> dict[str, float]:
    """PCKh@0.5 of ``pred.mat`` against ``gt_valid.mat`` (percentages; see module docstring)."""
    gt = load_mpii_ground_truth(annotations_mat)
    preds = load_mpii_predictions(predictions_mat, gt.num_people)
    return pckh(gt, preds)


# --------------------------------------------------------------------------------------------
# Tables and the CLI entry
# --------------------------------------------------------------------------------------------


def _table(keys: Sequence[str], stats: dict[str, float], fmt: str) -> str:
    cells = [fmt.format(stats.get(k, float("nan"))) for k in keys]
    widths = [max(len(k), len(c)) for k, c in zip(keys, cells, strict=True)]
    head = "| " + " | ".join(k.rjust(w) for k, w in zip(keys, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    row = "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths, strict=True)) + " |"
    return "\n".join([head, rule, row])


def format_coco_table(stats: dict[str, float]) -> str:
    """A markdown table of the ten COCO keypoint stats (fractions, 3 decimals)."""
    return _table(COCO_STATS, stats, "{:.3f}")


def format_mpii_table(stats: dict[str, float]) -> str:
    """A markdown table of the MPII PCKh stats (percentages, 2 decimals)."""
    return _table(MPII_STATS, stats, "{:.2f}")


def format_table(kind: Literal["coco", "mpii"], stats: dict[str, float]) -> str:
    return format_coco_table(stats) if kind == "coco" else format_mpii_table(stats)


def run_evaluate_cli(
    kind: Literal["coco", "mpii"],
    annotations: str | Path,
    predictions: str | Path,
    json_out: str | Path | None = None,
) -> dict[str, float]:
    """``posenfs evaluate coco|mpii``: scores ``predictions`` against ``annotations`` and
    returns the stats dict (COCO_STATS or MPII_STATS keys). With ``json_out``, also writes
    exactly that one JSON object there (atomically). Prints nothing; the CLI prints
    ``format_table(kind, stats)``."""
    if kind == "coco":
        stats = evaluate_coco(annotations, predictions)
    elif kind == "mpii":
        stats = evaluate_mpii(annotations, predictions)
    else:
        raise InputError(f"evaluate: unknown kind {kind!r}; expected 'coco' or 'mpii'")
    if json_out is not None:
        write_json_atomic(json_out, stats)
    return stats
