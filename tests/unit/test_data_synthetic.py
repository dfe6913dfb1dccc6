"""The synthetic COCO-format stick-figure set: valid COCO, deterministic, idempotent, race-safe,
and readable through ``build_dataset``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing as mp
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from nfs_orchestrator.data import build_dataset, decode_heatmaps, synthetic_root
from nfs_orchestrator.data import write_synthetic_coco as write
from nfs_orchestrator.errors import InputError, SpecError
from nfs_orchestrator.keypoints import load_schema
from nfs_orchestrator.specs import DataSpec, SyntheticSpec

SCHEMA = load_schema("coco17")
SMALL = {"train_images": 6, "val_images": 3, "image_size": (96, 128), "seed": 3}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_writes_valid_coco_with_matching_image_sizes(tmp_path):
    root = write(tmp_path / "syn", schema=SCHEMA, **SMALL)
    for split, n in (("train", 6), ("val", 3)):
        ann = root / "annotations" / f"person_keypoints_{split}.json"
        with contextlib.redirect_stdout(io.StringIO()):
            coco = COCO(str(ann))
        assert len(coco.getImgIds()) == n
        assert coco.loadCats(1)[0]["keypoints"] == list(SCHEMA.keypoints)
        for img in coco.loadImgs(coco.getImgIds()):
            pixels = cv2.imread(str(root / split / img["file_name"]))
            assert pixels.shape == (img["height"], img["width"], 3) == (128, 96, 3)
        for a in coco.loadAnns(coco.getAnnIds()):
            kps = np.array(a["keypoints"]).reshape(17, 3)
            assert a["num_keypoints"] == (kps[:, 2] > 0).sum() > 0
            x, y, w, h = a["bbox"]
            lab = kps[kps[:, 2] > 0, :2]
            assert (lab >= [x, y]).all() and (lab <= [x + w, y + h]).all() and a["area"] > 0
    assert not _image_ids(root, "train") & _image_ids(root, "val")


def _image_ids(root: Path, split: str) -> set[int]:
    data = json.loads((root / "annotations" / f"person_keypoints_{split}.json").read_text())
    return {img["id"] for img in data["images"]}


def test_deterministic_from_seed_and_idempotent(tmp_path):
    a = write(tmp_path / "a", schema=SCHEMA, **SMALL)
    b = write(tmp_path / "b", schema=SCHEMA, **SMALL)
    assert _digest(a) == _digest(b)
    c = write(tmp_path / "c", schema=SCHEMA, **{**SMALL, "seed": 4})
    assert _digest(a) != _digest(c)
    before = (a / "annotations" / "person_keypoints_train.json").stat().st_mtime_ns
    write(a, schema=SCHEMA, **SMALL)  # second call: nothing rewritten
    assert (a / "annotations" / "person_keypoints_train.json").stat().st_mtime_ns == before
    with pytest.raises(InputError, match="exists and is not this synthetic set"):
        write(a, schema=SCHEMA, **{**SMALL, "seed": 9})
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _race(root: str) -> str:
    return str(write(Path(root), schema=SCHEMA, **SMALL))


def test_two_processes_racing_both_succeed(tmp_path):
    ctx = mp.get_context("spawn")
    with ctx.Pool(2) as pool:
        out = pool.map(_race, [str(tmp_path / "syn")] * 2)
    assert out == [str(tmp_path / "syn")] * 2
    assert _digest(tmp_path / "syn") == _digest(write(tmp_path / "ref", schema=SCHEMA, **SMALL))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref", "syn"]


def test_only_coco17(tmp_path):
    with pytest.raises(SpecError, match="only the coco17 schema"):
        write(tmp_path / "x", schema=load_schema("mpii16"), **SMALL)


def test_build_dataset_synthetic_reads_it_as_coco(tmp_path):
    spec = DataSpec(
        dataset="synthetic",
        root=str(tmp_path),
        input_size=(96, 128),
        synthetic=SyntheticSpec(train_images=6, val_images=3, image_size=(96, 128), seed=3),
    )
    torch.manual_seed(0)
    train = build_dataset(spec, SCHEMA, "train", train=True)
    val = build_dataset(spec, SCHEMA, "val", train=False)
    root = synthetic_root(spec)
    assert (root / "synthetic.json").is_file() and train.kind == val.kind == "coco"
    assert len(train) >= 6 and len(val) >= 3
    s = val[0]
    assert s["image"].shape == (3, 128, 96) and s["heatmaps"].shape == (17, 32, 24)
    coords, _ = decode_heatmaps(s["heatmaps"][None])
    assert s["target_weight"].sum() > 0 and np.isfinite(coords).all()
    again = build_dataset(spec, SCHEMA, "val", train=False)  # reuses set and index
    assert np.array_equal(again.instances.joints, val.instances.joints)
