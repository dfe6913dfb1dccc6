"""The top-down pose dataset (torch ``Dataset``) and ``build_dataset`` from a ``DataSpec``.

What this is: one sample per person instance of an annotation index: the affine crop of the
RGB image to ``DataSpec.input_size`` (with the training augmentation when asked), ImageNet
normalisation, Gaussian heatmap targets at input / 4 and per-joint target weights.
What it is not: a loader of annotation files (``coco.py``, ``mpii.py``, ``index.py``), the
augmentation math (``transforms.py``) or the target coder (``heatmaps.py``).

Sample format (``__getitem__``), all of which default-collates:

    image          float32 (3, H, W)        RGB, ImageNet-normalised
    heatmaps       float32 (K, H/4, W/4)    Gaussian targets, peak 1, zero where weight is 0
    target_weight  float32 (K,)             1 if labelled and inside the crop, else 0
    meta           dict:
        index      int                      position in this dataset
        image_id   int
        ann_id     int                      COCO annotation id; MPII row; -1 for detections
        center     float32 (2,)             crop centre, image px (after augmentation)
        scale      float32 (2,)             crop size (w, h), image px (after augmentation)
        rotation   float                    degrees
        flipped    int                      1 if mirrored (channels then hold swapped labels)
        affine     float32 (2, 3)           image px → input px (includes rotation and flip)
        box        float32 (4,)             the instance box x, y, w, h (before margin)
        score      float                    box score (1 for ground-truth boxes)
        area       float                    annotated area (box w·h for detections)
        joints     float32 (K, 3)           ground truth x, y, v in image px (zeros if unknown)

Randomness: a sample's training augmentation is drawn from its own generator. A key
``(index, seed, position)`` (what the loops' batch plans hand the DataLoader, ``SampleKey``) seeds
it from (the pass's seed, the sample's position in the pass), so the augmentation of every sample
is a function of where it sits in the sample order, whichever DataLoader worker loads it and
whether the epoch started at its first step or resumed in the middle (a mid-epoch checkpoint
holds no loader state). A plain ``index`` draws the seed from torch's global generator.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from nfs_orchestrator.data.coco import load_coco_index
from nfs_orchestrator.data.heatmaps import encode_heatmaps, input_to_heatmap
from nfs_orchestrator.data.index import Instances
from nfs_orchestrator.data.mpii import load_mpii_index
from nfs_orchestrator.data.synthetic import write_synthetic_coco
from nfs_orchestrator.data.transforms import (
    apply_affine,
    box_to_center_scale,
    crop_affine,
    half_body_box,
    lower_body_mask,
    sample_augmentation,
    warp_and_normalize,
)
from nfs_orchestrator.errors import InputError, SpecError
from nfs_orchestrator.keypoints import KeypointSchema
from nfs_orchestrator.specs import AugmentSpec, DataSpec

SampleKey = tuple[int, int, int]  # (instance index, pass seed, position in the pass's order)


@dataclass(frozen=True)
class CropSettings:
    """How a sample is cropped and encoded (the relevant part of a ``DataSpec``)."""

    input_size: tuple[int, int]  # (W, H)
    sigma: float  # heatmap pixels
    margin: float

    @property
    def heatmap_size(self) -> tuple[int, int]:
        return self.input_size[0] // 4, self.input_size[1] // 4


class TopDownDataset(Dataset):
    """Person crops with heatmap targets, one per instance of ``instances``.

    ``kind`` says how predictions are scored (``coco``: OKS AP against ``annotations``;
    ``mpii``: PCKh against ``gt_mat``). ``augment`` = None disables augmentation.
    """

    def __init__(
        self,
        instances: Instances,
        *,
        images_dir: str | Path,
        schema: KeypointSchema,
        crop: CropSettings,
        augment: AugmentSpec | None,
        kind: Literal["coco", "mpii"],
        annotations: str | Path,
        gt_mat: str | Path | None = None,
        capped: bool = False,
        scored_image_ids: np.ndarray | None = None,
        boxes: Literal["gt", "detections"] = "gt",
    ) -> None:
        if instances.num_keypoints != schema.num_keypoints:
            raise InputError(
                f"{annotations}: {instances.num_keypoints} keypoints per person, but schema "
                f"{schema.name} has {schema.num_keypoints}"
            )
        self.instances = instances
        self.images_dir = Path(images_dir)
        self.schema = schema
        self.crop = crop
        self.augment = augment
        self.kind = kind
        self.annotations = Path(annotations)
        self.gt_mat = Path(gt_mat) if gt_mat is not None else None
        self.capped = capped  # True when max_*_instances dropped instances
        # COCO: the images scoring covers when capped (None: every image of ``annotations``)
        self.scored_image_ids = scored_image_ids
        self.boxes = boxes  # whose person boxes the crops come from
        self.flip_perm = np.asarray(schema.flip_permutation(), dtype=np.int64)
        self._lower = lower_body_mask(schema.keypoints)

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def image_ids(self) -> np.ndarray:
        """(N,) image id of each instance."""
        return self.instances.image_id

    def image_path(self, index: int) -> Path:
        return self.images_dir / str(self.instances.file_name[index])

    def read_image(self, index: int) -> np.ndarray:
        """The BGR uint8 image (h, w, 3) of instance ``index``; ``InputError`` if unreadable."""
        path = self.image_path(index)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(
                f"{path}: record {index} (image_id {int(self.instances.image_id[index])}): "
                f"cannot read the image (missing, truncated or not an image)"
            )
        return image

    def __getitem__(self, key: int | SampleKey) -> dict[str, Any]:
        seed: list[int] | int | None = None
        if isinstance(key, tuple):  # SampleKey: the augmentation seeded by (seed, position)
            key, seed = key[0], [int(key[1]), int(key[2])]
        index = int(key)
        inst = self.instances
        joints = inst.joints[index]  # (K, 3) image px
        box = inst.box[index]
        rotation, flip, aug_scale = 0.0, False, 1.0
        if self.augment is not None:
            if seed is None:
                seed = int(torch.randint(0, 2**62, (1,)).item())
            rng = np.random.default_rng(seed)
            aug = sample_augmentation(self.augment, rng)
            if aug.half_body:
                box = half_body_box(joints, self._lower, rng) or box
            rotation, flip, aug_scale = aug.rotation, aug.flip, aug.scale

        w_in, h_in = self.crop.input_size
        center, scale = box_to_center_scale(box, w_in / h_in, self.crop.margin)
        scale = scale * aug_scale
        m = crop_affine(center, scale, rotation, (w_in, h_in), flip=flip)  # image → input

        image = warp_and_normalize(self.read_image(index), m, (w_in, h_in))  # (3, H, W)

        pts = apply_affine(joints[:, :2], m)  # (K, 2) input px
        labelled = joints[:, 2] > 0
        if flip:
            pts, labelled = pts[self.flip_perm], labelled[self.flip_perm]
        inside = (pts[:, 0] >= -0.5) & (pts[:, 0] < w_in - 0.5)
        inside &= (pts[:, 1] >= -0.5) & (pts[:, 1] < h_in - 0.5)
        weight = (labelled & inside).astype(np.float32)  # (K,)
        heatmaps = encode_heatmaps(
            input_to_heatmap(pts), weight, self.crop.heatmap_size, self.crop.sigma
        )  # (K, H/4, W/4)

        meta = {
            "index": index,
            "image_id": int(inst.image_id[index]),
            "ann_id": int(inst.ann_id[index]),
            "center": center.astype(np.float32),
            "scale": scale.astype(np.float32),
            "rotation": float(rotation),
            "flipped": int(flip),
            "affine": m.astype(np.float32),
            "box": inst.box[index].astype(np.float32),
            "score": float(inst.score[index]),
            "area": float(inst.area[index]),
            "joints": joints.astype(np.float32),
        }
        return {
            "image": torch.from_numpy(image),
            "heatmaps": torch.from_numpy(heatmaps),
            "target_weight": torch.from_numpy(weight),
            "meta": meta,
        }


# --------------------------------------------------------------------------------------------
# From a DataSpec
# --------------------------------------------------------------------------------------------


def synthetic_root(spec: DataSpec) -> Path:
    """Folder of the synthetic set of ``spec``: one per generator setting under ``spec.root``."""
    s = spec.synthetic
    w, h = s.image_size
    planted = "" if s.planted == "none" else f"-{s.planted}"
    return Path(spec.root) / (
        f"synthetic-{w}x{h}-{s.train_images}-{s.val_images}-seed{s.seed}{planted}"
    )


def _sources(spec: DataSpec, schema: KeypointSchema, split: str) -> tuple[Path, Path]:
    """(annotation file, images folder) of a split."""
    if spec.dataset == "synthetic":
        s = spec.synthetic
        root = write_synthetic_coco(
            synthetic_root(spec),
            train_images=s.train_images,
            val_images=s.val_images,
            image_size=s.image_size,
            seed=s.seed,
            schema=schema,
            planted=s.planted,
        )
        return root / "annotations" / f"person_keypoints_{split}.json", root / split
    ann = spec.train_annotations if split == "train" else spec.val_annotations
    images = spec.train_images if split == "train" else spec.val_images
    if not ann:
        raise SpecError(f"{split}_annotations: required to build the {split} split")
    return spec.path(ann), spec.path(images) if images else Path(spec.root)


def _cap(inst: Instances, limit: int | None, whole_images: bool) -> tuple[Instances, bool]:
    """The first ``limit`` instances (index order). With ``whole_images``, stops at an image
    boundary (at least one image) so that every kept image keeps all its instances."""
    if limit is None or len(inst) <= limit:
        return inst, False
    n = limit
    if whole_images:
        ids = inst.image_id
        while n > 0 and ids[n - 1] == ids[n]:
            n -= 1
        if n == 0:  # the first image alone has more than `limit` instances: keep it whole
            other = np.flatnonzero(ids != ids[0])
            n = int(other[0]) if len(other) else len(inst)
    return inst.take(np.arange(n)), True


def build_dataset(
    spec: DataSpec,
    schema: KeypointSchema,
    split: Literal["train", "val"],
    *,
    train: bool,
    cache_dir: str | None = None,
) -> TopDownDataset:
    """The dataset of ``split``; ``train`` enables augmentation (``spec.augment``).

    COCO / synthetic: ground-truth boxes, or for ``val`` the detector boxes of
    ``spec.detections`` as ``spec.val_boxes`` says (``DataSpec.val_detections``; a fallback
    to ground-truth boxes is said on stderr). MPII: the json people in file order.
    ``synthetic`` first writes its set under ``spec.root`` (once; see
    ``synthetic.write_synthetic_coco``). ``max_train_instances`` keeps the first instances of
    the index; ``max_val_instances`` keeps whole images only, so that scoring on those images
    stays exact: with detector boxes, the scored images are every annotated image up to the
    last kept one, those without a kept detection included (their people count as missed).
    ``cache_dir`` holds annotation indexes when the annotation folder is read-only.
    """
    if split not in ("train", "val"):
        raise SpecError(f"split: {split!r} must be 'train' or 'val'")
    ann, images = _sources(spec, schema, split)
    kind: Literal["coco", "mpii"] = "mpii" if spec.dataset == "mpii" else "coco"
    gt_mat, dets = None, None
    if kind == "mpii":
        index = load_mpii_index(ann, cache_dir=cache_dir)
        if split == "val" and spec.val_gt_mat:
            gt_mat = spec.path(spec.val_gt_mat)
    else:
        dets = spec.val_detections() if split == "val" else None
        if split == "val" and dets is None and spec.val_boxes == "detections_if_present":
            print(
                f"posenfs: {spec.path(spec.detections or '')} not found: validating on "
                f"ground-truth boxes (data.val_boxes: detections_if_present)",
                file=sys.stderr,
            )
        index = load_coco_index(
            ann,
            detections=dets,
            det_score_threshold=spec.det_score_threshold,
            cache_dir=cache_dir,
        )
    limit = spec.max_train_instances if split == "train" else spec.max_val_instances
    instances, capped = _cap(index.instances, limit, whole_images=split == "val")
    scored = None
    if capped:
        scored = np.unique(instances.image_id)
        if dets is not None and len(scored):  # + annotated images the detector left empty
            annotated = load_coco_index(ann, cache_dir=cache_dir).instances.image_id
            scored = np.union1d(scored, annotated[annotated <= scored[-1]])
    return TopDownDataset(
        instances,
        images_dir=images,
        schema=schema,
        crop=CropSettings(spec.input_size, spec.sigma, spec.margin),
        augment=spec.augment if train else None,
        kind=kind,
        annotations=ann,
        gt_mat=gt_mat,
        capped=capped,
        scored_image_ids=scored,
        boxes="gt" if dets is None else "detections",
    )


def worker_init(_: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (DataLoader already does
    this; kept as the explicit hook). It must not touch OpenCV's thread settings: changing them
    in a forked worker deadlocks when the parent had created a pool (``transforms`` disables
    OpenCV threading once, at import, instead)."""
    torch.set_num_threads(1)
