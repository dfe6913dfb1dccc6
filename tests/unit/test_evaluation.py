"""COCO OKS AP and MPII PCKh on the real fixtures, bad input, tables and the CLI entry."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.io import loadmat, savemat

from nfs_orchestrator.data.inference import oks_nms, rescore
from nfs_orchestrator.errors import InputError
from nfs_orchestrator.evaluation import (
    COCO_STATS,
    MPII_STATS,
    evaluate_coco,
    evaluate_mpii,
    format_coco_table,
    format_mpii_table,
    load_mpii_ground_truth,
    pckh,
    run_evaluate_cli,
    write_mat_atomic,
)
from nfs_orchestrator.keypoints import load_schema

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COCO_GT = FIXTURES / "coco" / "test_coco.json"
MPII_DIR = FIXTURES / "mpii"
MPII_GT = MPII_DIR / "gt_valid.mat"


def _gt_as_results(keep_empty: bool = False) -> list[dict]:
    data = json.loads(COCO_GT.read_text())
    return [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in data["annotations"]
        if keep_empty or a["num_keypoints"] > 0
    ]


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


def _mpii_gt_preds() -> np.ndarray:
    people = json.loads((MPII_DIR / "test_mpii.json").read_text())
    return np.array([p["joints"] for p in people], dtype=np.float64) - 1.0  # 0-based


def _one_line(e: pytest.ExceptionInfo) -> str:
    assert "\n" not in str(e.value)
    return str(e.value)


# --------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------


def test_coco_ground_truth_as_predictions_scores_one(tmp_path):
    stats = evaluate_coco(COCO_GT, _write(tmp_path / "dt.json", _gt_as_results()))
    assert tuple(stats) == COCO_STATS
    assert all(v == pytest.approx(1.0) for v in stats.values()), stats


def test_coco_scoring_prints_nothing_even_under_a_patched_print(tmp_path, monkeypatch, capsys):
    """Ray Train workers patch ``print`` to log every line; pycocotools must stay quiet there."""
    import builtins

    logged = []
    monkeypatch.setattr(builtins, "print", lambda *args, **kwargs: logged.append(args))
    evaluate_coco(COCO_GT, _write(tmp_path / "dt.json", _gt_as_results()))
    assert logged == [] and capsys.readouterr().out == ""


def test_coco_people_without_keypoints_count_as_false_positives(tmp_path):
    stats = evaluate_coco(COCO_GT, _write(tmp_path / "dt.json", _gt_as_results(keep_empty=True)))
    assert stats["AP"] == pytest.approx(0.894, abs=5e-4)  # SOURCES.md, pycocotools 2.0.11


def test_coco_empty_results_score_zero(tmp_path):
    assert evaluate_coco(COCO_GT, _write(tmp_path / "dt.json", [])) == dict.fromkeys(
        COCO_STATS, 0.0
    )


def test_coco_image_subset(tmp_path):
    res = [r for r in _gt_as_results() if r["image_id"] == 785]
    dt = _write(tmp_path / "dt.json", res)
    assert evaluate_coco(COCO_GT, dt)["AP"] < 0.5
    assert evaluate_coco(COCO_GT, dt, image_ids=[785])["AP"] == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda r: r[3].update(image_id=99), "record 3: image_id 99 is not in the annotations"),
        (
            lambda r: r[2].update(keypoints=r[2]["keypoints"][:-3]),
            "record 2: 'keypoints' has 48 values, expected 51 (17 × x, y, v)",
        ),
        (lambda r: r[0].pop("score"), "record 0: missing 'score'"),
        (lambda r: r[1].update(category_id=7), "record 1: category_id 7 is not in the annotations"),
    ],
)
def test_coco_bad_predictions_are_one_line_input_errors(tmp_path, mutate, message):
    res = _gt_as_results()
    mutate(res)
    dt = _write(tmp_path / "dt.json", res)
    with pytest.raises(InputError) as e:
        evaluate_coco(COCO_GT, dt)
    assert _one_line(e) == f"{dt}: {message}"


def test_coco_missing_or_truncated_files(tmp_path):
    dt = _write(tmp_path / "dt.json", _gt_as_results())
    with pytest.raises(InputError) as e:
        evaluate_coco(tmp_path / "nope.json", dt)
    assert _one_line(e) == f"{tmp_path / 'nope.json'}: no such file"
    truncated = tmp_path / "gt.json"
    truncated.write_bytes(COCO_GT.read_bytes()[:3000])
    with pytest.raises(InputError) as e:
        evaluate_coco(truncated, dt)
    assert _one_line(e).startswith(f"{truncated}: invalid JSON at line")
    broken = tmp_path / "dt_broken.json"
    broken.write_text(dt.read_text()[:-10])
    with pytest.raises(InputError, match="invalid JSON"):
        evaluate_coco(COCO_GT, broken)


def test_rescore_and_oks_nms():
    scores = rescore(np.array([0.9, 0.5]), np.array([[0.1, 0.5, 0.7], [0.1, 0.1, 0.1]]))
    assert np.allclose(scores, [0.9 * 0.6, 0.0])
    sigmas = load_schema("coco17").sigmas
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 100, size=(17, 2))
    kps = np.stack([a, a + 0.5, a + 60.0])  # 0 and 1 overlap (OKS ≈ 1), 2 is elsewhere
    keep = oks_nms(kps, np.array([0.5, 0.9, 0.7]), np.full(3, 100.0 * 100.0), sigmas)
    assert keep == [1, 2]


# --------------------------------------------------------------------------------------------
# MPII
# --------------------------------------------------------------------------------------------


def test_fixture_gt_valid_mat_matches_its_builder():
    sys.path.insert(0, str(MPII_DIR))
    try:
        from make_gt_valid import gt_arrays
    finally:
        sys.path.remove(str(MPII_DIR))
    want = gt_arrays(json.loads((MPII_DIR / "test_mpii.json").read_text()))
    mat = loadmat(str(MPII_GT))
    for key in ("jnt_missing", "pos_gt_src", "headboxes_src"):
        assert np.array_equal(mat[key], want[key]), key
    gt = load_mpii_ground_truth(MPII_GT)
    assert gt.num_people == 5 and gt.joint_names[9] == "head"


def test_mpii_ground_truth_as_predictions_scores_100(tmp_path):
    pred = write_mat_atomic(tmp_path / "pred.mat", {"preds": _mpii_gt_preds()})
    stats = evaluate_mpii(MPII_GT, pred)
    assert tuple(stats) == MPII_STATS
    assert stats == dict.fromkeys(MPII_STATS, 100.0)


def test_mpii_pckh_protocol():
    gt = load_mpii_ground_truth(MPII_GT)
    preds = _mpii_gt_preds()
    preds[:, 10] += 1000.0  # right wrists far away
    # Off by +1: PCKh compares 1-based ground truth with preds + 1 → still exact.
    stats = pckh(gt, preds)
    assert stats["Wrist"] == 50.0 and stats["Head"] == 100.0
    visible = 1 - gt.jnt_missing
    counted = np.ones(16, dtype=bool)
    counted[[6, 7]] = False  # pelvis, thorax
    ratio = visible.sum(1)[counted] / visible.sum(1)[counted].sum()
    expected = 100.0 * (1 - ratio[list(np.flatnonzero(counted)).index(10)])
    assert stats["Mean"] == pytest.approx(expected)
    # Moving a pelvis does not change the mean.
    preds2 = _mpii_gt_preds()
    preds2[:, 6] += 1000.0
    assert pckh(gt, preds2)["Mean"] == 100.0
    # Threshold: 0.5 × 0.6 × head diagonal. Just inside and just outside for the head joint.
    box = gt.headboxes_src[:, :, 0]
    thr = 0.5 * 0.6 * np.linalg.norm(box[1] - box[0])
    for delta, hit in [(0.99 * thr, 100.0), (1.01 * thr, 80.0)]:
        p = _mpii_gt_preds()
        p[0, 9, 0] += delta
        assert pckh(gt, p)["Head"] == hit
    assert pckh(gt, _mpii_gt_preds()[[1, 3]], rows=[1, 3])["Mean"] == 100.0


def test_mpii_missing_field_and_wrong_shapes(tmp_path):
    mat = loadmat(str(MPII_GT))
    bad = tmp_path / "gt.mat"
    savemat(str(bad), {k: mat[k] for k in ("dataset_joints", "jnt_missing", "pos_gt_src")})
    pred = write_mat_atomic(tmp_path / "pred.mat", {"preds": _mpii_gt_preds()})
    with pytest.raises(InputError) as e:
        evaluate_mpii(bad, pred)
    assert _one_line(e) == f"{bad}: field 'headboxes_src' is missing (not an MPII gt_valid.mat)"
    short = write_mat_atomic(tmp_path / "short.mat", {"preds": _mpii_gt_preds()[:3]})
    with pytest.raises(InputError) as e:
        evaluate_mpii(MPII_GT, short)
    assert _one_line(e) == f"{short}: preds has 3 people, the ground truth has 5"
    nopreds = write_mat_atomic(tmp_path / "x.mat", {"p": _mpii_gt_preds()})
    with pytest.raises(InputError, match="field 'preds' is missing"):
        evaluate_mpii(MPII_GT, nopreds)
    junk = tmp_path / "junk.mat"
    junk.write_bytes(b"not a mat file at all")
    with pytest.raises(InputError, match="not a readable .mat file"):
        evaluate_mpii(junk, pred)


# --------------------------------------------------------------------------------------------
# Tables and CLI entry
# --------------------------------------------------------------------------------------------


def test_tables():
    coco = format_coco_table(dict.fromkeys(COCO_STATS, 0.75))
    assert coco.splitlines()[0].split("|")[1].strip() == "AP" and "0.750" in coco
    mpii = format_mpii_table(dict.fromkeys(MPII_STATS, 91.234))
    assert "Mean@0.1" in mpii and "91.23" in mpii and len(mpii.splitlines()) == 3


def test_run_evaluate_cli_writes_one_json_object(tmp_path):
    dt = _write(tmp_path / "dt.json", _gt_as_results())
    out = tmp_path / "out" / "stats.json"
    stats = run_evaluate_cli("coco", COCO_GT, dt, str(out))
    assert json.loads(out.read_text()) == stats and tuple(stats) == COCO_STATS
    assert [p.name for p in out.parent.iterdir()] == ["stats.json"]  # no temporary left
    pred = write_mat_atomic(tmp_path / "pred.mat", {"preds": _mpii_gt_preds()})
    assert run_evaluate_cli("mpii", MPII_GT, pred, None)["Mean"] == 100.0
    bad = _write(tmp_path / "bad.json", [{"image_id": 99}])
    with pytest.raises(InputError):
        run_evaluate_cli("coco", COCO_GT, bad, str(tmp_path / "never.json"))
    assert not (tmp_path / "never.json").exists()
