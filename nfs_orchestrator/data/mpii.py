"""MPII human pose: read the common json layout into an index (HRNet/mmpose ``train.json``,
``valid.json``: ``image``, ``center``, ``scale``, ``joints`` 1-based, ``joints_vis``).

What this is: validation with one-line ``InputError`` messages and the standard adjustments
(center_y += 15·scale, scale ×= 1.25, minus 1 for 0-based pixels). The person box stored in
the index is the square of side ``scale·200 / 1.25`` (= the original ``scale·200``) about the
adjusted centre, so that the crop's usual margin of 1.25 gives the standard ``scale·200``
crop. Joints keep the original MPII order. ``ann_id`` is the person's row in the file, which
is also its row in the standard ``gt_valid.mat``.
What it is not: PCKh scoring (``evaluation.evaluate_mpii``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from nfs_orchestrator.data.index import AnnotationIndex, Instances, cached_index
from nfs_orchestrator.errors import InputError
from nfs_orchestrator.evaluation import finite_number
from nfs_orchestrator.files import read_json

MPII_NUM_JOINTS = 16
PIXEL_STD = 200.0
SCALE_MARGIN = 1.25  # the standard scale ×= 1.25
CENTER_SHIFT = 15.0  # center_y += 15·scale


def mpii_instances(data: Any, path: Path) -> Instances:
    """All people of an MPII json, in file order (width/height 0: MPII json files do not
    store image sizes)."""
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a list of MPII people, got {type(data).__name__}")
    image_ids: dict[str, int] = {}
    records = []
    for i, rec in enumerate(data):
        where = f"{path}: record {i}"
        if not isinstance(rec, dict):
            raise InputError(f"{where}: not an object")
        image = rec.get("image")
        if not isinstance(image, str):
            raise InputError(f"{where}: 'image' missing or not a string")
        center, scale = rec.get("center"), rec.get("scale")
        if not (isinstance(center, list) and len(center) == 2 and all(map(finite_number, center))):
            raise InputError(f"{where}: 'center' must be 2 numbers")
        if not finite_number(scale) or scale <= 0:
            raise InputError(f"{where}: 'scale' must be a positive number")
        joints = np.zeros((MPII_NUM_JOINTS, 3))
        if "joints" in rec:
            j = np.asarray(rec["joints"], dtype=object)
            vis = np.asarray(rec.get("joints_vis", [1] * MPII_NUM_JOINTS), dtype=object)
            if j.shape != (MPII_NUM_JOINTS, 2) or not all(map(finite_number, j.ravel())):
                raise InputError(f"{where}: 'joints' must be {MPII_NUM_JOINTS} pairs of numbers")
            if vis.shape != (MPII_NUM_JOINTS,) or not all(map(finite_number, vis)):
                raise InputError(f"{where}: 'joints_vis' must be {MPII_NUM_JOINTS} numbers")
            joints[:, :2] = j.astype(np.float64) - 1.0  # 1-based MATLAB → 0-based
            joints[:, 2] = (vis.astype(np.float64) > 0).astype(np.float64)
        cx, cy = float(center[0]), float(center[1])
        s = float(scale)
        if cx != -1:
            cy += CENTER_SHIFT * s
        s *= SCALE_MARGIN
        cx, cy = cx - 1.0, cy - 1.0
        side = s * PIXEL_STD / SCALE_MARGIN
        records.append(
            {
                "image_id": image_ids.setdefault(image, len(image_ids)),
                "file_name": image,
                "width": 0,
                "height": 0,
                "box": [cx - 0.5 * side, cy - 0.5 * side, side, side],
                "score": 1.0,
                "area": side * side,
                "ann_id": i,
                "joints": joints,
            }
        )
    return Instances.from_records(records, MPII_NUM_JOINTS)


def load_mpii_index(
    annotations: str | Path, *, cache_dir: str | Path | None = None
) -> AnnotationIndex:
    """The cached index of an MPII json file. Built once; rebuilt when the file changes."""
    ann = Path(annotations)
    return cached_index(
        [ann], "mpii", {}, lambda: mpii_instances(read_json(ann), ann), cache_dir=cache_dir
    )
