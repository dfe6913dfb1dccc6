"""A synthetic COCO-format keypoint set of stick figures that a small CNN learns on CPU.

What this is: ``write_synthetic_coco`` draws one or two stick figures per image on a noisy,
cluttered background, with a saturated coloured blob centred exactly (to 1/16 px) on each
keypoint, and writes a valid COCO keypoint dataset. Layout under ``root``:

    root/synthetic.json                          the generator settings (the "done" marker)
    root/annotations/person_keypoints_train.json
    root/annotations/person_keypoints_val.json
    root/train/000000000001.jpg …                image ids 1 … train_images
    root/val/000000100001.jpg …                  image ids 100001 … (val never reuses an id)

Left/right is learnable under flip augmentation, as in real data: a left and a right joint
share one colour and are told apart by geometry only (figures face the camera, upright ±25°,
so ``left_*`` lies on the image-right side of the body axis). A mirrored image with swapped
labels obeys the same rule. About 6 % of in-image keypoints are covered by an occluder patch
and labelled v = 1; keypoints outside the image are v = 0 with (0, 0).

Planted structure, so that a part-specific search has something to find (``planted``):
one limb group is marked for long-range context only, the other for local detail only, and
the two modes exchange the roles, so the same search on the two sets must flip its preference.

    planted="context_legs"   hips, knees, ankles: context;  shoulders, elbows, wrists: detail
    planted="context_arms"   shoulders, elbows, wrists: context;  hips, knees, ankles: detail

A *context* keypoint has nothing at its spot: it is the centre of a thin ring of radius
``RING_RADIUS`` · figure height in its group's colour, so only a receptive field that spans the
ring (coarser fabric rows, or a wide stack of ops) locates it. A *detail* keypoint is a small
dot (the face's size) and nothing else. In both modes no limb line and no torso polygon is
drawn (their bends and corners would be local cues); a spine line, the neck, the head disc and
the face stay, so the body axis (left/right) reads as usual. Arms and legs have the same
build (root joint, bend, end), so the two modes differ only in which group gets which mark.
(Measured: a short search follows the swap, but the dot group reads the coarser rows;
benchmarks/RESULTS.md, "Planted structure: a swap test".)

The dot turned out too small to see (1-px at the usual sizes: the group meant as "detail" was
the hard one, benchmarks/RESULTS.md, "one batch of 60 fresh seeds"), and its side (left or
right) could only be read from the body axis, i.e. from context. The ``_sided`` modes
(``context_legs_sided``, ``context_arms_sided``: the same groups) draw each detail keypoint as
a disc of ``SIDED_RADIUS`` with a tick ``SIDED_TICK`` radii long toward the joint's own side
(image-right for ``left_*``, which a mirrored image with swapped labels obeys too), so the
finest row locates it and tells its side; the rings are unchanged. (Measured: both marks
are then located equally well, the trained supernet relies on the coarse layout more for the
ring group, β does not follow; benchmarks/RESULTS.md, "the sided plant". The test fabric's
finest row alone locates neither mark, nor the unplanted set's blobs, and both groups gain
alike from its coarser rows: "Planted structure: what the data rewards".)

The ``_coloured`` modes draw the detail disc of the ``_sided`` size with no tick, each right
joint in a colour of its own (``_RIGHT_COLORS``), so its side is read at its spot; this holds
only without flip augmentation (a flip swaps the labels, not the colours), so a set of these
modes is refused with ``data.augment.flip`` on (specs.DataSpec).

Writing is idempotent and atomic: the set is generated into a temporary sibling folder and
renamed onto ``root``; a second call (or a process that lost the race) finds ``root`` with the
same settings and leaves it alone. Same seed → same bytes.
What it is not: a reader (``build_dataset`` reads the result exactly like COCO).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import cv2
import numpy as np

from nfs_orchestrator.errors import InputError, SpecError
from nfs_orchestrator.keypoints import KeypointSchema

GENERATOR_VERSION = 1
# planted mode → (context group, detail group, detail mark), see the module docstring
_LEGS, _ARMS = ("hip", "knee", "ankle"), ("shoulder", "elbow", "wrist")
PLANTED_GROUPS = {
    "context_legs": (_LEGS, _ARMS, "dot"),
    "context_arms": (_ARMS, _LEGS, "dot"),
    "context_legs_sided": (_LEGS, _ARMS, "sided"),
    "context_arms_sided": (_ARMS, _LEGS, "sided"),
    "context_legs_coloured": (_LEGS, _ARMS, "coloured"),
    "context_arms_coloured": (_ARMS, _LEGS, "coloured"),
}
PLANTED = ("none", *PLANTED_GROUPS)
RING_RADIUS = 0.16  # a context keypoint's ring, in figure heights
DETAIL_RADIUS = 0.016  # a detail keypoint's dot, in figure heights (the face's size)
SIDED_RADIUS = 0.035  # a sided detail keypoint's disc, in figure heights
SIDED_TICK = 2.2  # its tick's length from the centre, in disc radii
# A "coloured" detail keypoint on the right side: its own saturated colour (RGB), apart from
# every colour of _COLORS, so that its side is read at its spot (left joints keep _COLORS).
_RIGHT_COLORS = {
    "shoulder": (255, 0, 128),
    "elbow": (128, 255, 0),
    "wrist": (0, 128, 255),
    "hip": (0, 0, 0),
    "knee": (128, 0, 0),
    "ankle": (0, 0, 128),
}
MANIFEST = "synthetic.json"
VAL_ID_OFFSET = 100_000
JPEG_QUALITY = 92
OCCLUDED_PROB = 0.06

COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
# One colour per left/right pair (RGB).
_COLORS = {
    "nose": (255, 255, 255),
    "eye": (255, 255, 0),
    "ear": (255, 0, 255),
    "shoulder": (255, 0, 0),
    "elbow": (0, 255, 0),
    "wrist": (0, 0, 255),
    "hip": (0, 255, 255),
    "knee": (255, 128, 0),
    "ankle": (160, 0, 255),
}
_LIMBS = (
    ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"),
    ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"),
    ("left_hip", "left_knee"), ("left_knee", "left_ankle"),
    ("right_hip", "right_knee"), ("right_knee", "right_ankle"),
    ("left_shoulder", "right_shoulder"), ("left_hip", "right_hip"),
)  # fmt: skip


def _dir(angle_deg: float, side: float) -> np.ndarray:
    """Unit vector ``angle`` degrees from straight down, turned outward to ``side`` (±1)."""
    t = np.deg2rad(angle_deg)
    return np.array([side * np.sin(t), np.cos(t)])


def random_pose(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """COCO-17 keypoints of a frontal figure in body units (height ≈ 1, pelvis at the origin,
    y down, +x = the body's left side)."""
    p: dict[str, np.ndarray] = {}
    yaw = rng.uniform(-0.015, 0.015)
    p["nose"] = np.array([yaw, -0.40 + rng.uniform(-0.01, 0.01)])
    for side, s in (("left", 1.0), ("right", -1.0)):
        p[f"{side}_eye"] = np.array([s * 0.026 + yaw, -0.425])
        p[f"{side}_ear"] = np.array([s * 0.052 + 0.5 * yaw, -0.41])
        sh = np.array([s * rng.uniform(0.10, 0.12), -0.30 + rng.uniform(-0.01, 0.01)])
        upper = rng.uniform(-20, 160)
        elbow = sh + 0.15 * _dir(upper, s)
        wrist = elbow + 0.14 * _dir(upper + rng.uniform(-90, 90), s)
        hip = np.array([s * rng.uniform(0.06, 0.08), 0.0])
        thigh = rng.uniform(-10, 45)
        knee = hip + 0.23 * _dir(thigh, s)
        ankle = knee + 0.23 * _dir(thigh + rng.uniform(-35, 25), s)
        p[f"{side}_shoulder"], p[f"{side}_elbow"], p[f"{side}_wrist"] = sh, elbow, wrist
        p[f"{side}_hip"], p[f"{side}_knee"], p[f"{side}_ankle"] = hip, knee, ankle
    return p


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Low-frequency colour field + clutter + pixel noise, muted (BGR uint8 (h, w, 3))."""
    coarse = rng.uniform(50, 190, size=(4, 4, 3)).astype(np.float32)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(3, 7))):
        color = tuple(float(c) for c in rng.uniform(40, 200, size=3))
        a = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        b = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if rng.random() < 0.5:
            cv2.line(img, a, b, color, int(rng.integers(1, 4)), cv2.LINE_AA)
        else:
            cv2.rectangle(img, a, b, color, -1)
    img += rng.normal(0, 10, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _draw_figure(
    img: np.ndarray, pts: np.ndarray, names: tuple[str, ...], height_px: float,
    rng: np.random.Generator, planted: str = "none",
) -> np.ndarray:  # fmt: skip
    """Draws one figure with keypoints ``pts`` (K, 2) image px; returns visibility v (K,)."""
    h, w = img.shape[:2]
    idx = {n: i for i, n in enumerate(names)}
    body = tuple(float(c) for c in rng.uniform(70, 140, size=3))
    thick = max(2, int(round(0.035 * height_px)))

    def fix(q: np.ndarray) -> tuple[int, int]:  # sub-pixel drawing with shift=4
        return int(round(q[0] * 16)), int(round(q[1] * 16))

    context, detail, mark = PLANTED_GROUPS.get(planted, ((), (), "dot"))
    if planted == "none":
        torso = np.stack([pts[idx[n]] for n in ("left_shoulder", "right_shoulder",
                                                 "right_hip", "left_hip")])  # fmt: skip
        cv2.fillPoly(img, [np.round(torso * 16).astype(np.int32)], body, cv2.LINE_AA, shift=4)
        for a, b in _LIMBS:
            cv2.line(img, fix(pts[idx[a]]), fix(pts[idx[b]]), body, thick, cv2.LINE_AA, shift=4)
    neck = 0.5 * (pts[idx["left_shoulder"]] + pts[idx["right_shoulder"]])
    if planted != "none":  # the body axis only: no limb, no torso corner
        pelvis = 0.5 * (pts[idx["left_hip"]] + pts[idx["right_hip"]])
        cv2.line(img, fix(neck), fix(pelvis), body, thick, cv2.LINE_AA, shift=4)
    cv2.line(img, fix(neck), fix(pts[idx["nose"]]), body, thick, cv2.LINE_AA, shift=4)
    head_r = 0.065 * height_px
    cv2.circle(img, fix(pts[idx["nose"]]), int(head_r * 16), body, -1, cv2.LINE_AA, shift=4)

    inside = (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
    vis = np.where(inside, 2.0, 0.0)
    for i, name in enumerate(names):  # rings first: no ring covers another group's dot
        group = name.split("_")[-1]
        if inside[i] and group in context:  # labelled, but nothing marks the spot
            ring = int(round(RING_RADIUS * height_px * 16))
            cv2.circle(img, fix(pts[i]), ring, _COLORS[group][::-1], max(1, thick // 2),
                       cv2.LINE_AA, shift=4)  # fmt: skip
    for i, name in enumerate(names):
        group = name.split("_")[-1]
        if not inside[i] or group in context:
            continue
        face = group in ("nose", "eye", "ear")
        r = max(1.0, (0.016 if face else 0.028) * height_px)
        rgb = _COLORS[group]
        if group in detail:
            r = max(1.0, (DETAIL_RADIUS if mark == "dot" else SIDED_RADIUS) * height_px)
            if mark == "coloured" and name.startswith("right_"):
                rgb = _RIGHT_COLORS[group]
        cv2.circle(img, fix(pts[i]), int(r * 16), rgb[::-1], -1, cv2.LINE_AA, shift=4)
        if group in detail and mark == "sided":  # a tick outward: left joints to image-right
            side = 1.0 if name.startswith("left_") else -1.0
            end = pts[i] + np.array([side * SIDED_TICK * r, 0.0])
            cv2.line(img, fix(pts[i]), fix(end), rgb[::-1], max(1, int(round(0.7 * r))),
                     cv2.LINE_AA, shift=4)  # fmt: skip
        if rng.random() < OCCLUDED_PROB:
            half = 1.4 * r + 1
            color = tuple(float(c) for c in rng.uniform(60, 180, size=3))
            p0 = fix(pts[i] - half + rng.uniform(-0.5, 0.5, 2))
            p1 = fix(pts[i] + half + rng.uniform(-0.5, 0.5, 2))
            cv2.rectangle(img, p0, p1, color, -1, cv2.LINE_AA, shift=4)
            vis[i] = 1
    return vis


def _make_image(
    rng: np.random.Generator, size: tuple[int, int], names: tuple[str, ...], planted: str = "none"
) -> tuple[np.ndarray, list[dict]]:
    """One BGR image and its person annotations (without ids)."""
    w, h = size
    img = _background(rng, w, h)
    count = 2 if rng.random() < 0.3 else 1
    people = []
    for j in range(count):
        for _ in range(20):  # resample until enough keypoints fall inside the image
            height_px = rng.uniform(0.45, 0.9) * min(w, h) / (1.0 if count == 1 else 1.3)
            lo, hi = (0.3, 0.7) if count == 1 else ((0.15, 0.4) if j == 0 else (0.6, 0.85))
            origin = np.array([rng.uniform(lo, hi) * w, rng.uniform(0.45, 0.65) * h])
            t = np.deg2rad(rng.uniform(-25, 25))
            rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
            pose = random_pose(rng)
            pts = np.stack([pose[n] for n in names]) @ rot.T * height_px + origin  # (K, 2)
            inside = (
                (pts[:, 0] >= 0) & (pts[:, 0] <= w - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= h - 1)
            )
            if inside.sum() >= 6:
                break
        vis = _draw_figure(img, pts, names, height_px, rng, planted)
        if not vis.any():
            continue
        people.append(_annotation(pts, vis, height_px, w, h))
    return img, people


def _annotation(pts: np.ndarray, vis: np.ndarray, height_px: float, w: int, h: int) -> dict:
    """COCO annotation fields of one figure: keypoints, bbox around the labelled ones (+pad),
    area = 0.6 · box area (a person covers about that much of its box)."""
    kps = np.zeros((len(vis), 3))
    lab = vis > 0
    kps[lab, :2] = np.round(pts[lab], 2)
    kps[:, 2] = vis
    pad = 0.07 * height_px
    x0, y0 = np.maximum(pts[lab].min(axis=0) - pad, 0)
    x1, y1 = np.minimum(pts[lab].max(axis=0) + pad, [w - 1, h - 1])
    bw, bh = float(x1 - x0), float(y1 - y0)
    box = [round(float(x0), 2), round(float(y0), 2), round(bw, 2), round(bh, 2)]
    return {
        "keypoints": [float(v) if i % 3 != 2 else int(v) for i, v in enumerate(kps.ravel())],
        "num_keypoints": int(lab.sum()),
        "bbox": box,
        "area": round(0.6 * bw * bh, 2),
        "iscrowd": 0,
        "category_id": 1,
        "segmentation": [[box[0], box[1], box[0] + box[2], box[1], box[0] + box[2],
                          box[1] + box[3], box[0], box[1] + box[3]]],
    }  # fmt: skip


def _write_split(
    folder: Path, split: str, n: int, first_id: int, size: tuple[int, int], seed: int,
    names: tuple[str, ...], planted: str = "none",
) -> dict:  # fmt: skip
    (folder / split).mkdir(parents=True)
    images, annotations = [], []
    split_code = 0 if split == "train" else 1
    for i in range(n):
        image_id = first_id + i
        rng = np.random.default_rng([seed, split_code, i])
        img, people = _make_image(rng, size, names, planted)
        name = f"{image_id:012d}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise InputError(f"{folder / split / name}: JPEG encoding failed")
        (folder / split / name).write_bytes(buf.tobytes())
        images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
        for j, ann in enumerate(people):
            annotations.append({"id": image_id * 10 + j, "image_id": image_id, **ann})
    return {
        "info": {"description": "posenfs synthetic stick figures", "version": GENERATOR_VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(names),
                "skeleton": [[names.index(a) + 1, names.index(b) + 1] for a, b in _LIMBS],
            }
        ],
    }


def _manifest(
    train: int, val: int, size: tuple[int, int], seed: int, schema: str, planted: str = "none"
) -> dict:
    out = {
        "generator_version": GENERATOR_VERSION,
        "train_images": train,
        "val_images": val,
        "image_size": list(size),
        "seed": seed,
        "schema": schema,
    }
    if planted != "none":  # sets written before the option keep their manifest
        out["planted"] = planted
    return out


def _read_manifest(root: Path) -> dict | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def write_synthetic_coco(
    root: str | Path,
    *,
    train_images: int,
    val_images: int,
    image_size: tuple[int, int],
    seed: int,
    schema: KeypointSchema,
    planted: str = "none",
) -> Path:
    """Writes the synthetic set under ``root`` (layout in the module docstring) unless it is
    already there with the same settings; returns ``root``. ``image_size`` is (W, H).

    Raises ``SpecError`` for a schema other than COCO-17 and ``InputError`` when ``root``
    holds something else (a different synthetic set or other files).
    """
    if tuple(schema.keypoints) != COCO17:
        raise SpecError(f"synthetic data: only the coco17 schema is supported, not {schema.name}")
    if train_images < 1 or val_images < 1 or min(image_size) < 32:
        raise SpecError("synthetic: train_images and val_images must be ≥ 1, image sides ≥ 32")
    root = Path(root)
    size = (int(image_size[0]), int(image_size[1]))
    if planted not in PLANTED:
        raise SpecError(f"synthetic: planted {planted!r} is not one of {list(PLANTED)}")
    want = _manifest(train_images, val_images, size, seed, schema.name, planted)
    if _read_manifest(root) == want:
        return root
    if root.exists() and any(root.iterdir()):
        raise InputError(f"{root}: exists and is not this synthetic set ({MANIFEST} differs)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "annotations").mkdir(parents=True)
        for split, n, first in (("train", train_images, 1), ("val", val_images, VAL_ID_OFFSET + 1)):
            data = _write_split(tmp, split, n, first, size, seed, schema.keypoints, planted)
            (tmp / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(data))
        (tmp / MANIFEST).write_text(json.dumps(want, indent=1))  # written last: "complete"
        try:
            os.rename(tmp, root)  # atomic; fails if another process already put a set there
        except OSError:
            if _read_manifest(root) != want:
                raise InputError(
                    f"{root}: could not be written (exists with other content)"
                ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
