"""COCO and MPII datasets on the real fixtures: samples, round trips, index cache, bad input,
the image-disjoint split, and model inference with an oracle model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from nfs_orchestrator.data import (
    build_dataset,
    decode_heatmaps,
    evaluate_model,
    heatmap_coords_to_image,
    load_coco_index,
    load_mpii_index,
    predict,
    split_image_disjoint,
)
from nfs_orchestrator.data.heatmaps import flip_back
from nfs_orchestrator.errors import InputError
from nfs_orchestrator.keypoints import load_schema
from nfs_orchestrator.specs import AugmentSpec, DataSpec

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COCO_DIR, MPII_DIR = FIXTURES / "coco", FIXTURES / "mpii"
COCO, MPII = load_schema("coco17"), load_schema("mpii16")
STRONG = AugmentSpec(scale_factor=0.3, rotation_factor=45, rotation_prob=1.0, flip=True)


@pytest.fixture
def coco_spec(tmp_path: Path) -> DataSpec:
    """The COCO fixture with its json copied to tmp (indexes are written beside it)."""
    for name in ("test_coco.json", "test_coco_det_AP_H_56.json"):
        shutil.copy(COCO_DIR / name, tmp_path / name)
    return DataSpec(
        dataset="coco",
        root=str(tmp_path),
        train_annotations="test_coco.json",
        train_images=str(COCO_DIR),
        val_annotations="test_coco.json",
        val_images=str(COCO_DIR),
        augment=STRONG,
    )


@pytest.fixture
def mpii_spec(tmp_path: Path) -> DataSpec:
    shutil.copy(MPII_DIR / "test_mpii.json", tmp_path / "test_mpii.json")
    return DataSpec(
        dataset="mpii",
        root=str(tmp_path),
        train_annotations="test_mpii.json",
        train_images=str(MPII_DIR),
        val_annotations="test_mpii.json",
        val_images=str(MPII_DIR),
        val_gt_mat=str(MPII_DIR / "gt_valid.mat"),
        input_size=(256, 256),
        augment=STRONG,
    )


def _round_trip_errors(dataset, n_passes: int) -> np.ndarray:
    """Decodes each sample's target heatmaps back to original image pixels and returns the
    errors (M, 2) of the labelled joints inside the crop, in heatmap pixels along the heatmap
    axes (the image-space error vector mapped through the crop's linear part, / 4)."""
    perm = dataset.schema.flip_permutation()
    errors = []
    for _ in range(n_passes):
        for i in range(len(dataset)):
            s = dataset[i]
            meta = s["meta"]
            coords, _ = decode_heatmaps(s["heatmaps"][None])
            flipped = np.array([meta["flipped"]])
            pts = heatmap_coords_to_image(coords, meta["affine"][None], flipped, perm)[0]
            weight = s["target_weight"].numpy()
            if meta["flipped"]:
                weight = weight[perm]
            diff = pts - meta["joints"][:, :2]  # (K, 2) image px
            err = diff @ meta["affine"][:, :2].T.astype(np.float64) / 4.0  # heatmap px
            errors.append(err[weight > 0])
    return np.concatenate(errors)


# --------------------------------------------------------------------------------------------
# Samples
# --------------------------------------------------------------------------------------------


def test_coco_sample_format_and_collate(coco_spec):
    ds = build_dataset(coco_spec, COCO, "val", train=False)
    assert len(ds) == 12  # 14 people, 2 without keypoints
    s = ds[0]
    assert s["image"].shape == (3, 256, 192) and s["image"].dtype == torch.float32
    assert s["heatmaps"].shape == (17, 64, 48) and s["target_weight"].shape == (17,)
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["image"].shape == (4, 3, 256, 192)
    meta = batch["meta"]
    assert meta["affine"].shape == (4, 2, 3) and meta["center"].shape == (4, 2)
    for key in ("index", "image_id", "score", "area", "rotation", "flipped"):
        assert meta[key].shape == (4,)
    # RGB, ImageNet-normalised: values span roughly [-2.1, 2.6].
    assert -2.2 < s["image"].min() < 0 < s["image"].max() < 2.7


def test_coco_boxes_cover_labelled_keypoints(coco_spec):
    inst = load_coco_index(coco_spec.path("test_coco.json")).instances
    for box, joints in zip(inst.box, inst.joints, strict=True):
        lab = joints[joints[:, 2] > 0, :2]
        assert (lab >= box[:2] - 1e-6).all() and (lab <= box[:2] + box[2:] + 1e-6).all()


def test_images_are_rgb(coco_spec):
    ds = build_dataset(coco_spec, COCO, "val", train=False)
    bgr = ds.read_image(0)
    s = ds[0]
    m = s["meta"]["affine"].astype(np.float64)
    # The crop centre pixel comes from the image pixel at the inverse affine of it.
    from nfs_orchestrator.data.transforms import apply_affine, invert_affine

    x, y = np.round(apply_affine(np.array([[96.0, 128.0]]), invert_affine(m))[0]).astype(int)
    rgb_expected = bgr[y, x, ::-1] / 255.0
    got = s["image"][:, 128, 96].numpy() * np.array([0.229, 0.224, 0.225]) + [0.485, 0.456, 0.406]
    assert np.allclose(got, rgb_expected, atol=0.08)


@pytest.mark.parametrize("train", [False, True])
def test_coco_encode_crop_decode_round_trip(coco_spec, train):
    torch.manual_seed(0)
    ds = build_dataset(coco_spec, COCO, "train", train=train)
    err = np.abs(_round_trip_errors(ds, n_passes=3 if train else 1))
    assert len(err) > 100
    assert err.max() < 0.5, err.max()  # per axis: the argmax is the nearest pixel
    assert np.median(np.linalg.norm(err, axis=1)) < 0.3


def test_mpii_round_trip_and_adjustments(mpii_spec):
    torch.manual_seed(1)
    ds = build_dataset(mpii_spec, MPII, "train", train=True)
    err = np.abs(_round_trip_errors(ds, n_passes=4))
    assert err.max() < 0.5
    inst = ds.instances
    raw = json.loads((MPII_DIR / "test_mpii.json").read_text())[0]
    side = raw["scale"] * 200.0  # scale·1.25·200/1.25
    assert np.allclose(inst.box[0, 2:], side)
    center = inst.box[0, :2] + 0.5 * side
    assert np.allclose(center, [raw["center"][0] - 1, raw["center"][1] + 15 * raw["scale"] - 1])
    assert np.allclose(inst.joints[0, :, :2], np.array(raw["joints"]) - 1)


def test_half_body_augmentation_runs(coco_spec):
    from nfs_orchestrator.specs import replace

    spec = replace(coco_spec, augment=AugmentSpec(half_body_prob=1.0))
    torch.manual_seed(0)
    ds = build_dataset(spec, COCO, "train", train=True)
    err = np.abs(_round_trip_errors(ds, n_passes=1))
    assert err.max() < 0.5


def test_detection_boxes_for_validation(coco_spec):
    from nfs_orchestrator.specs import replace

    spec = replace(
        coco_spec,
        val_boxes="detections",
        detections="test_coco_det_AP_H_56.json",
        det_score_threshold=0.5,
    )
    ds = build_dataset(spec, COCO, "val", train=False)
    dets = json.loads((COCO_DIR / "test_coco_det_AP_H_56.json").read_text())
    assert len(ds) == sum(d["score"] >= 0.5 and d["category_id"] == 1 for d in dets)
    assert (ds.instances.score >= 0.5).all() and (ds.instances.ann_id == -1).all()
    assert ds[0]["target_weight"].sum() == 0 and ds.boxes == "detections"
    assert build_dataset(replace(spec, val_boxes="gt"), COCO, "val", train=False).boxes == "gt"


def test_detections_if_present_falls_back_to_ground_truth_boxes(coco_spec, capsys):
    from nfs_orchestrator.specs import replace

    spec = replace(coco_spec, val_boxes="detections_if_present", detections="absent.json")
    ds = build_dataset(spec, COCO, "val", train=False)
    assert ds.boxes == "gt" and (ds.instances.ann_id >= 0).all()
    assert "absent.json not found: validating on ground-truth boxes" in capsys.readouterr().err
    with pytest.raises(InputError) as e:
        build_dataset(replace(spec, val_boxes="detections"), COCO, "val", train=False)
    assert _one_line(e).startswith(f"{Path(spec.root) / 'absent.json'}: no such detections file")


def test_max_instances_cap(coco_spec):
    from nfs_orchestrator.specs import replace

    spec = replace(coco_spec, max_train_instances=5, max_val_instances=5)
    train = build_dataset(spec, COCO, "train", train=False)
    assert len(train) == 5 and train.capped
    val = build_dataset(spec, COCO, "val", train=False)
    ids = val.image_ids
    full = build_dataset(coco_spec, COCO, "val", train=False).image_ids
    for i in set(ids.tolist()):  # whole images only
        assert (ids == i).sum() == (full == i).sum()
    assert len(val) <= 5 and val.capped


# --------------------------------------------------------------------------------------------
# Index cache
# --------------------------------------------------------------------------------------------


def test_index_built_once_reused_and_rebuilt_on_change(tmp_path):
    ann = tmp_path / "test_coco.json"
    shutil.copy(COCO_DIR / "test_coco.json", ann)
    first = load_coco_index(ann)
    assert first.built and first.path.parent == tmp_path and first.path.suffix == ".parquet"
    stamp = first.path.stat().st_mtime_ns
    second = load_coco_index(ann)
    assert not second.built and second.path.stat().st_mtime_ns == stamp
    assert np.array_equal(second.instances.joints, first.instances.joints)
    assert list(second.instances.file_name) == list(first.instances.file_name)
    # Touching without changing content keeps the index (same sha256).
    os.utime(ann, ns=(stamp + 10**9, stamp + 10**9))
    assert not load_coco_index(ann).built
    data = json.loads(ann.read_text())
    data["annotations"] = data["annotations"][1:]
    ann.write_text(json.dumps(data))
    third = load_coco_index(ann)
    assert third.built and len(third.instances) == len(first.instances) - 1


def test_index_goes_to_cache_dir_when_folder_is_read_only(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    shutil.copy(MPII_DIR / "test_mpii.json", ro / "test_mpii.json")
    ro.chmod(0o555)
    try:
        idx = load_mpii_index(ro / "test_mpii.json", cache_dir=tmp_path / "cache")
        assert idx.built and idx.path.parent == tmp_path / "cache"
        assert list(ro.iterdir()) == [ro / "test_mpii.json"]
        assert not load_mpii_index(ro / "test_mpii.json", cache_dir=tmp_path / "cache").built
    finally:
        ro.chmod(0o755)


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_truncated_json_is_one_line_input_error(tmp_path):
    bad = tmp_path / "person_keypoints_val.json"
    bad.write_bytes((COCO_DIR / "test_coco.json").read_bytes()[:5000])
    with pytest.raises(InputError) as e:
        load_coco_index(bad)
    assert _one_line(e).startswith(f"{bad}: invalid JSON at line")


def test_bad_annotation_record_is_named(tmp_path):
    data = json.loads((COCO_DIR / "test_coco.json").read_text())
    data["annotations"][3]["keypoints"] = data["annotations"][3]["keypoints"][:-3]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError) as e:
        load_coco_index(bad)
    assert "annotations record 3: 'keypoints' must be 51 numbers" in _one_line(e)
    mp = json.loads((MPII_DIR / "test_mpii.json").read_text())
    del mp[2]["center"]
    (tmp_path / "mpii.json").write_text(json.dumps(mp))
    with pytest.raises(InputError) as e:
        load_mpii_index(tmp_path / "mpii.json")
    assert "record 2: 'center' must be 2 numbers" in _one_line(e)


def test_unreadable_image_is_input_error(coco_spec, tmp_path):
    from nfs_orchestrator.specs import replace

    images = tmp_path / "images"
    images.mkdir()
    for jpg in COCO_DIR.glob("*.jpg"):
        shutil.copy(jpg, images / jpg.name)
    broken = images / "000000000785.jpg"
    broken.write_bytes(broken.read_bytes()[:200])  # truncated jpeg
    ds = build_dataset(replace(coco_spec, val_images=str(images)), COCO, "val", train=False)
    with pytest.raises(InputError) as e:
        ds[0]
    assert _one_line(e).startswith(f"{broken}: record 0 (image_id 785): cannot read the image")


def test_unknown_image_in_detections_is_named(coco_spec):
    from nfs_orchestrator.specs import replace

    dets = json.loads((COCO_DIR / "test_coco_det_AP_H_56.json").read_text())
    dets[7]["image_id"] = 99
    path = Path(coco_spec.root) / "test_coco_det_AP_H_56.json"
    path.write_text(json.dumps(dets))
    with pytest.raises(InputError) as e:
        spec = replace(coco_spec, val_boxes="detections", detections=path.name)
        build_dataset(spec, COCO, "val", train=False)
    assert _one_line(e) == f"{path}: record 7: image_id 99 is not in the annotations"


def test_wrong_schema_is_input_error(coco_spec):
    with pytest.raises(InputError, match="17 keypoints per person, but schema mpii16 has 16"):
        build_dataset(coco_spec, MPII, "val", train=False)


# --------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------


def test_split_is_image_disjoint_deterministic_and_about_two_to_one():
    rng = np.random.default_rng(0)
    image_ids = np.repeat(np.arange(300), rng.integers(1, 6, size=300))  # 1-5 people per image
    w, a = split_image_disjoint(image_ids, ratio=(2, 1), seed=7)
    assert sorted(w + a) == list(range(len(image_ids)))
    assert not set(image_ids[w]) & set(image_ids[a])
    assert abs(len(w) / len(image_ids) - 2 / 3) < 0.02
    assert (w, a) == split_image_disjoint(image_ids, ratio=(2, 1), seed=7)
    assert (w, a) != split_image_disjoint(image_ids, ratio=(2, 1), seed=8)


def test_split_of_dataset(coco_spec):
    ds = build_dataset(coco_spec, COCO, "train", train=True)
    w, a = split_image_disjoint(ds, seed=0)
    assert w and a and not set(ds.image_ids[w]) & set(ds.image_ids[a])
    with pytest.raises(InputError, match="at least 2 images"):
        split_image_disjoint(np.zeros(5, dtype=int))


# --------------------------------------------------------------------------------------------
# Inference with an oracle model (returns the target heatmaps of the image it is given)
# --------------------------------------------------------------------------------------------


class Oracle(torch.nn.Module):
    """Looks each input image up (also mirrored) and returns its target heatmaps."""

    def __init__(self, dataset) -> None:
        super().__init__()
        perm = dataset.schema.flip_permutation()
        self.table: dict[bytes, torch.Tensor] = {}
        for i in range(len(dataset)):
            s = dataset[i]
            self.table[self._key(s["image"])] = s["heatmaps"]
            mirrored = flip_back(s["heatmaps"][None], perm)[0]
            self.table[self._key(s["image"].flip(-1))] = mirrored

    @staticmethod
    def _key(image: torch.Tensor) -> bytes:
        return image.contiguous().numpy().tobytes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([self.table[self._key(img)] for img in x])


def test_predict_with_flip_test_recovers_ground_truth(coco_spec):
    ds = build_dataset(coco_spec, COCO, "val", train=False)
    oracle = Oracle(ds)
    pred = predict(oracle, ds, batch_size=5, flip_test=True)
    plain = predict(oracle, ds, batch_size=5, flip_test=False)
    assert np.allclose(pred.keypoints, plain.keypoints)
    lab = ds.instances.joints[..., 2] > 0
    err = np.linalg.norm(pred.keypoints - ds.instances.joints[..., :2], axis=-1)[lab]
    assert np.median(err) < 1.5 and err.max() < 5.0


def test_evaluate_model_coco_and_mpii_with_oracle(coco_spec, mpii_spec, tmp_path):
    ds = build_dataset(coco_spec, COCO, "val", train=False)
    stats = evaluate_model(Oracle(ds), ds, coco_spec, COCO, device="cpu", work_dir=tmp_path / "c")
    assert stats["AP"] > 0.95 and set(stats) >= {"AP", "AP50", "ARl"}
    assert json.loads((tmp_path / "c" / "keypoints_results.json").read_text())
    mp = build_dataset(mpii_spec, MPII, "val", train=False)
    stats = evaluate_model(Oracle(mp), mp, mpii_spec, MPII, device="cpu", work_dir=tmp_path / "m")
    assert stats == dict.fromkeys(stats, 100.0) and "Mean@0.1" in stats
    assert (tmp_path / "m" / "pred.mat").is_file()


def test_evaluate_model_on_capped_validation_scores_only_kept_images(
    coco_spec, mpii_spec, tmp_path
):
    from nfs_orchestrator.specs import replace

    spec = replace(coco_spec, max_val_instances=4, flip_test=False)
    ds = build_dataset(spec, COCO, "val", train=False)
    assert ds.capped and len(set(ds.image_ids.tolist())) < 4
    stats = evaluate_model(Oracle(ds), ds, spec, COCO, device="cpu", work_dir=tmp_path / "c")
    assert stats["AP"] > 0.95  # the other images' people are not counted as misses
    spec = replace(mpii_spec, max_val_instances=2)
    mp = build_dataset(spec, MPII, "val", train=False)
    assert len(mp) == 2 and mp.capped
    stats = evaluate_model(Oracle(mp), mp, spec, MPII, device="cpu", work_dir=tmp_path / "m")
    assert stats["Mean"] == 100.0


def _detections_from_ground_truth(spec, skip_image: int | None = None) -> list[dict]:
    """A detector that finds every annotated person at its ground-truth box (score 0.9), except
    in ``skip_image``: its crops equal the ground-truth ones, so the oracle knows them."""
    gt = build_dataset(spec, COCO, "val", train=False).instances
    return [
        {"image_id": int(i), "category_id": 1, "bbox": [float(v) for v in box], "score": 0.9}
        for i, box in zip(gt.image_id, gt.box, strict=True)
        if int(i) != skip_image
    ]


def test_capped_detector_boxes_are_scored_with_the_images_they_miss(coco_spec, tmp_path):
    from nfs_orchestrator.specs import replace

    gt_set = build_dataset(coco_spec, COCO, "val", train=False)
    first, skip, third, last = np.unique(gt_set.image_ids).tolist()  # 1, 2, 4, 5 people
    dets = _detections_from_ground_truth(coco_spec, skip_image=skip)  # nobody found in `skip`
    (Path(coco_spec.root) / "dets.json").write_text(json.dumps(dets))
    kept = int(np.isin(gt_set.image_ids, [first, third]).sum())
    spec = replace(
        coco_spec, val_boxes="detections", detections="dets.json", max_val_instances=kept
    )
    ds = build_dataset(spec, COCO, "val", train=False)
    assert ds.boxes == "detections" and ds.capped and len(ds) == kept
    assert sorted(set(ds.image_ids.tolist())) == [first, third]
    assert ds.scored_image_ids.tolist() == [first, skip, third]  # up to the last kept image
    stats = evaluate_model(Oracle(gt_set), ds, spec, COCO, device="cpu", work_dir=tmp_path)
    # the oracle is exact on every detected person (AP 1.0 alone); the 2 missed count
    assert 0.3 < stats["AP"] < 0.9


def test_dark_decoding_is_reachable_from_the_data_spec(coco_spec, tmp_path):
    from nfs_orchestrator.data.inference import coco_results
    from nfs_orchestrator.specs import replace

    ds = build_dataset(coco_spec, COCO, "val", train=False)
    oracle = Oracle(ds)
    quarter = predict(oracle, ds, batch_size=8, flip_test=False)
    dark = predict(oracle, ds, batch_size=8, flip_test=False, dark=True)
    lab = ds.instances.joints[..., 2] > 0
    gap = np.linalg.norm(dark.keypoints - quarter.keypoints, axis=-1)[lab]  # image px
    assert 0 < gap.max() < 5.0  # close, not identical
    err = {
        name: np.linalg.norm(p.keypoints - ds.instances.joints[..., :2], axis=-1)[lab]
        for name, p in (("quarter", quarter), ("dark", dark))
    }
    assert np.median(err["dark"]) < np.median(err["quarter"])  # the oracle's sub-pixel peaks
    spec = replace(coco_spec, decode="dark", flip_test=False)
    stats = evaluate_model(oracle, ds, spec, COCO, device="cpu", work_dir=tmp_path)
    assert stats["AP"] > 0.95
    written = json.loads((tmp_path / "keypoints_results.json").read_text())
    assert written == json.loads(json.dumps(coco_results(dark, COCO.sigmas)))  # DARK's points
    assert written != json.loads(json.dumps(coco_results(quarter, COCO.sigmas)))
