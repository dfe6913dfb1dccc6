"""Per-part results: the accuracy and the cost of each body part of a grouping.

What this is:
- COCO OKS AP of one part: ``COCOeval(..., "keypoints")`` on the ground truth and the
  predictions restricted to the part's keypoints, with those keypoints' OKS sigmas. A ground-truth
  person keeps its ``area``; its ``num_keypoints`` becomes the number of the part's keypoints it
  has labelled, so a person with none of them is ignored, as pycocotools ignores any person with
  ``num_keypoints == 0``.
- MPII PCKh@0.5 of one part: correct visible joints of the part over its visible joints (pooled,
  as the MPII ``Mean`` weights joints by their visible counts; pelvis and thorax count when the
  part holds them). Percentages.
- Parameters and MACs of each part's fabric (``model.parts[<part>]``, adapters and head included,
  the shared backbone not), MACs from ``torch.utils.flop_counter`` on the forward that runs.
- The metric names the loops report: ``val_ap.<part>`` / ``val_pckh.<part>``, ``params.<part>``,
  ``macs.<part>``. A dot groups them in the MLflow UI; the ledger keeps every dotted metric.

An undefined AP (no labelled person for the part) is NaN, not pycocotools' -1.
What this is not: the whole-body scorers (``evaluation``) or the inference (``data.inference``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.keypoints import PartGrouping

if TYPE_CHECKING:
    from torch import nn

    from nfs_orchestrator.evaluation import MpiiGroundTruth
    from nfs_orchestrator.genotype import Genotype
    from nfs_orchestrator.specs import FabricSpace

PART_METRICS = ("val_ap", "val_pckh", "params", "macs")
# evaluate_model's per-part stat → the name validation reports
_STAT_TO_METRIC = {"AP": "val_ap", "PCKh": "val_pckh"}


def part_metric(metric: str, part: str) -> str:
    """The reported name of ``metric`` for ``part``: ``val_ap.head``."""
    return f"{metric}.{part}"


def split_part_metric(name: str) -> tuple[str, str] | None:
    """``"val_ap.head"`` → ``("val_ap", "head")``; None for a name without a dot."""
    metric, dot, part = name.partition(".")
    return (metric, part) if dot and metric and part else None


# --------------------------------------------------------------------------------------------
# COCO OKS AP per part
# --------------------------------------------------------------------------------------------


def _triplets(values: Sequence[float], indices: Sequence[int]) -> list[float]:
    return [v for i in indices for v in values[3 * i : 3 * i + 3]]


def restrict_coco_ground_truth(data: Mapping[str, Any], indices: Sequence[int]) -> dict:
    """A COCO keypoint annotation dict with only the keypoints ``indices`` (in that order):
    ``keypoints`` and ``num_keypoints`` restricted, ``area`` and ``bbox`` unchanged, the
    category's keypoint names restricted and its skeleton dropped."""
    out = dict(data)
    out["annotations"] = []
    for ann in data["annotations"]:
        kps = _triplets(ann["keypoints"], indices)
        labelled = sum(1 for v in kps[2::3] if v > 0)
        out["annotations"].append({**ann, "keypoints": kps, "num_keypoints": labelled})
    out["categories"] = []
    for cat in data["categories"]:
        cat = dict(cat)
        if isinstance(cat.get("keypoints"), list):
            cat["keypoints"] = [cat["keypoints"][i] for i in indices]
            cat["skeleton"] = []
        out["categories"].append(cat)
    return out


def restrict_coco_results(results: Sequence[Mapping[str, Any]], indices: Sequence[int]) -> list:
    """COCO keypoint results with only the keypoints ``indices`` (in that order)."""
    return [{**r, "keypoints": _triplets(r["keypoints"], indices)} for r in results]


def coco_ap(
    gt_data: Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    sigmas: Sequence[float],
    image_ids: Sequence[int] | None = None,
) -> float:
    """COCOeval keypoint AP (IoU .50:.95, all areas) of ``results`` on ``gt_data``; NaN when
    undefined (no labelled person), 0 for no results."""
    from pycocotools.coco import COCO

    from nfs_orchestrator.evaluation import _quiet, cocoeval_stats

    if not results:
        return 0.0
    with _quiet():
        gt = COCO()
        gt.dataset = dict(gt_data)
        gt.createIndex()
    ap = cocoeval_stats(gt, results, sigmas, image_ids)[0]
    return ap if ap >= 0 else math.nan


def coco_part_ap(
    annotations: str | Path | Mapping[str, Any],
    results: Sequence[Mapping[str, Any]],
    grouping: PartGrouping,
    *,
    image_ids: Sequence[int] | None = None,
) -> dict[str, float]:
    """``{part: AP}`` of COCO keypoint ``results`` (the official results list, all K keypoints)
    against ``annotations`` (a ``person_keypoints_*.json`` path or its loaded dict), each part
    scored on its own keypoints with their sigmas (``grouping.schema.sigmas``)."""
    if isinstance(annotations, Mapping):
        data = annotations
    else:
        with open(annotations, "rb") as f:
            data = json.load(f)
    sigmas = grouping.schema.sigmas
    if sigmas is None:
        raise SpecError(f"schema {grouping.schema.name}: COCO scoring needs OKS sigmas")
    out = {}
    for part in grouping.parts:
        idx = grouping.indices(part)
        out[part.name] = coco_ap(
            restrict_coco_ground_truth(data, idx),
            restrict_coco_results(results, idx),
            [sigmas[i] for i in idx],
            image_ids,
        )
    return out


# --------------------------------------------------------------------------------------------
# MPII PCKh per part
# --------------------------------------------------------------------------------------------


def pckh_joint_hits(
    gt: MpiiGroundTruth,
    preds: np.ndarray,
    *,
    rows: Sequence[int] | None = None,
    threshold: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """(correct, visible) counts per joint (16,) of ``preds`` (M, 16, 2; 0-based px) against
    the ground-truth people ``rows`` (default all), by the protocol of ``evaluation.pckh``."""
    from nfs_orchestrator.evaluation import pckh_scaled_errors

    scaled, visible = pckh_scaled_errors(gt, preds, rows)  # (16, M) each
    return ((scaled <= threshold) * visible).sum(axis=1), visible.sum(axis=1)


def mpii_part_pckh(
    gt: MpiiGroundTruth,
    preds: np.ndarray,
    grouping: PartGrouping,
    *,
    rows: Sequence[int] | None = None,
) -> dict[str, float]:
    """``{part: PCKh@0.5}`` (percent): correct visible joints of the part over its visible
    joints; NaN for a part with no visible joint. Joint indices are the schema's, which is the
    original MPII order of ``gt_valid.mat`` and of ``preds``."""
    hits, visible = pckh_joint_hits(gt, preds, rows=rows)
    out = {}
    for part in grouping.parts:
        idx = list(grouping.indices(part))
        n = float(visible[idx].sum())
        out[part.name] = 100.0 * float(hits[idx].sum()) / n if n > 0 else math.nan
    return out


def model_grouping(model: Any) -> PartGrouping | None:
    """The part grouping of a supernet (``grouping``) or derived network (``genotype.grouping``),
    None for any other model."""
    grouping = getattr(model, "grouping", None)
    if grouping is None:
        grouping = getattr(getattr(model, "genotype", None), "grouping", None)
    return grouping if hasattr(grouping, "parts") else None


def part_accuracy_metrics(stats: Mapping[str, float]) -> dict[str, float]:
    """The per-part stats of ``evaluate_model`` (``AP.<part>``, ``PCKh.<part>``) under their
    reported names (``val_ap.<part>``, ``val_pckh.<part>``)."""
    out = {}
    for name, value in stats.items():
        split = split_part_metric(name)
        if split and split[0] in _STAT_TO_METRIC:
            out[part_metric(_STAT_TO_METRIC[split[0]], split[1])] = float(value)
    return out


# --------------------------------------------------------------------------------------------
# Cost per part
# --------------------------------------------------------------------------------------------


def _fabric_params(fabric) -> int:
    """Weights of one part's fabric (α and β of a search fabric excluded)."""
    return sum(p.numel() for n, p in fabric.named_parameters() if n not in ("alpha", "beta"))


def part_costs(model: nn.Module, input_size: tuple[int, int]) -> dict[str, dict[str, int]]:
    """``{part: {"params": int, "macs": int}}`` of a supernet or derived network (anything with
    a ``backbone`` and its fabrics in ``parts``), MACs of one batch-1 forward at ``input_size``
    (W, H) in eval mode; the backbone is shared and counted in no part. A supernet computing its
    parts batched is counted on its per-part path (the same operations)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    w, h = input_size
    was_training, batched = model.training, getattr(model, "batched", False)
    model.eval()
    if batched:
        model.batched = False
    try:
        device = next(model.parameters()).device
        with FlopCounterMode(display=False) as counter:  # no no_grad: its tracker needs grad_fns
            model(torch.zeros(1, 3, h, w, device=device))
    finally:
        model.train(was_training)
        if batched:
            model.batched = True
    counts = {
        key.split(".", 1)[1]: sum(per_op.values())
        for key, per_op in counter.get_flop_counts().items()
        if "." in key
    }
    return {
        name: {"params": _fabric_params(fabric), "macs": int(counts.get(f"parts.{name}", 0)) // 2}
        for name, fabric in model.parts.items()
    }


def _pyramid(channels: Sequence[int]) -> nn.Module:
    """Stand-in for a backbone when only the parts are measured: zero maps of the backbone's
    ``channels`` at strides 4, 8, 16, 32 (what every backbone returns), no parameters."""
    import torch
    from torch import nn

    class Pyramid(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.channels = tuple(channels)

        def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
            b, _, h, w = images.shape  # (B, 3, H, W) → 4 × (B, c_l, H/s, W/s)
            return [
                images.new_zeros(b, c, h // s, w // s)
                for c, s in zip(self.channels, (4, 8, 16, 32), strict=True)
            ]

    return Pyramid()


def genotype_part_costs(
    genotype: Genotype, input_size: tuple[int, int], channels: Sequence[int]
) -> dict[str, dict[str, int]]:
    """``part_costs`` of the derived network of ``genotype`` on a backbone with ``channels``
    (e.g. ``backbone.channels``), without building or running the backbone itself."""
    from nfs_orchestrator.nn.derived import DerivedPoseNet

    return part_costs(DerivedPoseNet(genotype, _pyramid(channels)), input_size)


def supernet_part_costs(
    space: FabricSpace, grouping: PartGrouping, input_size: tuple[int, int], channels: Sequence[int]
) -> dict[str, dict[str, int]]:
    """``part_costs`` of the supernet of ``space`` and ``grouping`` (random weights) on a
    backbone with ``channels``; params exclude α and β."""
    from nfs_orchestrator.nn.supernet import PoseSupernet

    return part_costs(PoseSupernet(space, grouping, _pyramid(channels)), input_size)


def part_cost_metrics(costs: Mapping[str, Mapping[str, int]]) -> dict[str, float]:
    """``{"params.<part>": …, "macs.<part>": …}`` of ``part_costs``' result."""
    return {
        part_metric(kind, part): float(cost[kind])
        for part, cost in costs.items()
        for kind in ("params", "macs")
    }


def genotype_part_metrics(
    genotype: Genotype, input_size: tuple[int, int], channels: Sequence[int]
) -> dict[str, float]:
    """What a search epoch reports of its genotype's parts: ``params.<part>``, ``macs.<part>``
    of the derived network at ``input_size`` on a backbone with ``channels``. Remembered per
    genotype fingerprint (a search often derives the same genotype epoch after epoch; measuring
    a large fabric takes seconds on a CPU)."""
    key = (genotype.fingerprint(), tuple(input_size), tuple(channels))
    if key not in _COST_CACHE:
        if len(_COST_CACHE) >= 16:
            _COST_CACHE.pop(next(iter(_COST_CACHE)))
        _COST_CACHE[key] = part_cost_metrics(genotype_part_costs(genotype, input_size, channels))
    return dict(_COST_CACHE[key])


_COST_CACHE: dict[tuple, dict[str, float]] = {}
