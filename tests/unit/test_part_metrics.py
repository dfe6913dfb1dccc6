"""Per-part accuracy (COCO OKS AP, MPII PCKh) and cost (params, MACs), on the real fixtures."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from nfs_orchestrator.evaluation import load_mpii_ground_truth, pckh
from nfs_orchestrator.keypoints import Part, PartGrouping, load_grouping, load_schema
from nfs_orchestrator.nn.backbones import build_backbone
from nfs_orchestrator.nn.counting import count_macs, count_params
from nfs_orchestrator.nn.derived import DerivedPoseNet
from nfs_orchestrator.nn.supernet import PoseSupernet
from nfs_orchestrator.part_metrics import (
    coco_part_ap,
    genotype_part_costs,
    genotype_part_metrics,
    model_grouping,
    mpii_part_pckh,
    part_accuracy_metrics,
    part_costs,
    split_part_metric,
    supernet_part_costs,
)
from nfs_orchestrator.specs import load_fabric
from tests.unit.test_data_datasets import Oracle, coco_spec, mpii_spec  # noqa: F401 (fixtures)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
COCO_GT = FIXTURES / "coco" / "test_coco.json"
MPII_DIR = FIXTURES / "mpii"
MPII_GT = MPII_DIR / "gt_valid.mat"


def _noisy_results(seed: int = 0) -> list[dict]:
    """The ground truth as predictions, every keypoint moved by a few pixels, one person's
    head far off, and varied scores: an AP well inside (0, 1) that differs per part."""
    rng = np.random.default_rng(seed)
    data = json.loads(COCO_GT.read_text())
    out = []
    for n, ann in enumerate(data["annotations"]):
        kps = np.asarray(ann["keypoints"], dtype=np.float64).reshape(17, 3)
        kps[:, :2] += rng.normal(0.0, 6.0, size=(17, 2))
        if n == 1:
            kps[:5, :2] += 80.0  # a head far away
        kps[:, 2] = 1.0
        out.append(
            {
                "image_id": ann["image_id"],
                "category_id": 1,
                "keypoints": [round(float(v), 2) for v in kps.ravel()],
                "score": float(rng.uniform(0.3, 1.0)),
            }
        )
    return out


def _pycocotools_on_files(gt_path: Path, dt_path: Path, sigmas, image_ids=None) -> float:
    """AP by pycocotools straight from files, the way its own demo runs it."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(dt_path))
        ev = COCOeval(gt, dt, "keypoints")
        ev.params.kpt_oks_sigmas = np.asarray(sigmas)
        if image_ids is not None:
            ev.params.imgIds = image_ids
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0])


def _restrict_by_hand(
    tmp_path: Path, part: str, names, results, gt_file: Path = COCO_GT
) -> tuple[Path, Path, list]:
    """GT and DT files holding only the keypoints ``names``, written by plain loops."""
    schema = load_schema("coco17")
    idx = [schema.keypoints.index(n) for n in names]
    data = json.loads(gt_file.read_text())
    for ann in data["annotations"]:
        kept = []
        for i in idx:
            kept += ann["keypoints"][3 * i : 3 * i + 3]
        ann["keypoints"] = kept
        ann["num_keypoints"] = sum(1 for v in kept[2::3] if v > 0)
    data["categories"][0]["keypoints"] = list(names)
    data["categories"][0]["skeleton"] = []
    dt = []
    for r in results:
        kept = []
        for i in idx:
            kept += r["keypoints"][3 * i : 3 * i + 3]
        dt.append({**r, "keypoints": kept})
    gt_path, dt_path = tmp_path / f"gt_{part}.json", tmp_path / f"dt_{part}.json"
    gt_path.write_text(json.dumps(data))
    dt_path.write_text(json.dumps(dt))
    return gt_path, dt_path, [schema.sigmas[i] for i in idx]


def test_coco_part_ap_equals_pycocotools_on_hand_restricted_files(tmp_path):
    grouping = load_grouping("coco-p3")
    results = _noisy_results()
    ours = coco_part_ap(COCO_GT, results, grouping)
    assert set(ours) == {"upper_limb", "head", "lower_limb"}
    for part in grouping.parts:
        gt, dt, sigmas = _restrict_by_hand(tmp_path, part.name, part.keypoints, results)
        assert ours[part.name] == pytest.approx(_pycocotools_on_files(gt, dt, sigmas), abs=1e-12)
    assert 0 < min(ours.values()) and max(ours.values()) < 1  # not a trivial 0/1 case
    assert len(set(ours.values())) == 3  # the parts really score differently
    # one image only (a capped validation set)
    capped = coco_part_ap(COCO_GT, results, grouping, image_ids=[785])
    for part in grouping.parts:
        gt, dt, sigmas = _restrict_by_hand(tmp_path, part.name, part.keypoints, results)
        want = _pycocotools_on_files(gt, dt, sigmas, image_ids=[785])
        assert capped[part.name] == pytest.approx(want, abs=1e-12)
    assert capped != ours
    # the loaded dict gives the same as the path
    assert coco_part_ap(json.loads(COCO_GT.read_text()), results, grouping) == ours


def test_a_person_without_the_parts_keypoints_is_ignored_for_that_part(tmp_path):
    """A person whose head keypoints are all unlabelled: num_keypoints 0 for ``head``, so
    pycocotools ignores it there (a prediction on it is no false positive), not elsewhere."""
    data = json.loads(COCO_GT.read_text())
    target = max(data["annotations"], key=lambda a: a["num_keypoints"])
    kps = target["keypoints"]
    for i in range(5):  # nose, eyes, ears
        kps[3 * i : 3 * i + 3] = [0, 0, 0]
    target["num_keypoints"] = sum(1 for v in kps[2::3] if v > 0)
    gt_file = tmp_path / "gt.json"
    gt_file.write_text(json.dumps(data))
    grouping = load_grouping("coco-p3")
    results = _noisy_results()
    ours = coco_part_ap(gt_file, results, grouping)
    for part in grouping.parts:
        gt, dt, sigmas = _restrict_by_hand(tmp_path, part.name, part.keypoints, results, gt_file)
        restricted = {a["id"]: a for a in json.loads(gt.read_text())["annotations"]}
        assert (restricted[target["id"]]["num_keypoints"] == 0) == (part.name == "head")
        assert ours[part.name] == pytest.approx(_pycocotools_on_files(gt, dt, sigmas), abs=1e-12)
    assert ours != coco_part_ap(COCO_GT, results, grouping)


def test_coco_part_ap_edge_cases():
    grouping = load_grouping("coco-p3")
    assert coco_part_ap(COCO_GT, [], grouping) == dict.fromkeys(
        ("upper_limb", "head", "lower_limb"), 0.0
    )
    data = json.loads(COCO_GT.read_text())
    for ann in data["annotations"]:  # nobody has a labelled head keypoint
        for i in range(5):
            ann["keypoints"][3 * i + 2] = 0
    ours = coco_part_ap(data, _noisy_results(), grouping)
    assert math.isnan(ours["head"]) and ours["lower_limb"] > 0  # undefined, not -1


def test_gt_as_predictions_scores_one_in_every_part():
    data = json.loads(COCO_GT.read_text())
    results = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in data["annotations"]
        if a["num_keypoints"] > 0
    ]
    for name in ("coco-p1", "coco-p5", "coco-p8"):
        ours = coco_part_ap(COCO_GT, results, load_grouping(name))
        assert all(v == pytest.approx(1.0) for v in ours.values()), (name, ours)


# --------------------------------------------------------------------------------------------
# MPII
# --------------------------------------------------------------------------------------------


def _mpii_gt_preds() -> np.ndarray:
    people = json.loads((MPII_DIR / "test_mpii.json").read_text())
    return np.array([p["joints"] for p in people], dtype=np.float64) - 1.0  # 0-based


def test_mpii_part_pckh():
    gt = load_mpii_ground_truth(MPII_GT)
    grouping = load_grouping("mpii-p3")
    assert mpii_part_pckh(gt, _mpii_gt_preds(), grouping) == dict.fromkeys(
        ("upper_limb", "head", "lower_limb"), 100.0
    )
    preds = _mpii_gt_preds()
    schema = grouping.schema
    preds[:, schema.index("right_wrist")] += 1000.0
    preds[0, schema.index("head_top")] += 1000.0
    ours = mpii_part_pckh(gt, preds, grouping)
    visible = 1 - gt.jnt_missing  # (16, N)
    for part in grouping.parts:  # brute force: correct visible joints / visible joints
        idx = grouping.indices(part)
        total = sum(visible[i, n] for i in idx for n in range(gt.num_people))
        wrong = sum(visible[schema.index("right_wrist"), n] for n in range(gt.num_people))
        wrong = wrong if part.name == "upper_limb" else 0
        wrong += visible[schema.index("head_top"), 0] if part.name == "head" else 0
        assert ours[part.name] == pytest.approx(100.0 * (total - wrong) / total)
    assert ours["lower_limb"] == 100.0 and ours["upper_limb"] < 100.0 and ours["head"] < 100.0
    rows = [1, 3]
    assert mpii_part_pckh(gt, preds[rows], grouping, rows=rows)["head"] == 100.0


def test_mpii_part_pckh_pools_like_the_mpii_mean():
    """A part of the 14 joints in the MPII Mean scores exactly the Mean (count-weighted)."""
    schema = load_schema("mpii16")
    torso = ("pelvis", "thorax")
    grouping = PartGrouping(
        name="mean14",
        schema=schema,
        parts=(
            Part("mean14", tuple(k for k in schema.keypoints if k not in torso)),
            Part("torso", torso),
        ),
    )
    gt = load_mpii_ground_truth(MPII_GT)
    preds = _mpii_gt_preds()
    preds[:, schema.index("right_wrist")] += 1000.0
    preds[2, schema.index("left_knee")] += 1000.0
    preds[:, schema.index("pelvis")] += 1000.0
    ours = mpii_part_pckh(gt, preds, grouping)
    assert ours["mean14"] == pytest.approx(pckh(gt, preds)["Mean"])
    assert ours["torso"] < 100.0


def test_the_models_own_grouping():
    net = _searched()
    assert model_grouping(net) is net.grouping
    derived = DerivedPoseNet(net.genotype(), net.backbone)
    assert model_grouping(derived) == net.grouping
    assert model_grouping(torch.nn.Linear(1, 1)) is None


def test_evaluate_model_stats_become_reported_names():
    stats = {"AP": 0.5, "AP.head": 0.25, "PCKh.legs": 80.0, "Mean": 1.0}
    assert part_accuracy_metrics(stats) == {"val_ap.head": 0.25, "val_pckh.legs": 80.0}
    assert split_part_metric("macs.lower_limb") == ("macs", "lower_limb")
    assert split_part_metric("val_ap") is None


# --------------------------------------------------------------------------------------------
# Cost
# --------------------------------------------------------------------------------------------


def _searched(grouping: str = "coco-p3"):
    backbone = build_backbone("tiny", random_init=True)
    net = PoseSupernet(load_fabric("tiny"), load_grouping(grouping), backbone)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.arch_parameters():
            p.copy_(torch.randn(p.shape))
    return net


def test_part_costs_add_up_to_the_derived_network():
    net = _searched()
    size = (64, 64)
    genotype = net.genotype(size, "tiny")
    derived = DerivedPoseNet(genotype, net.backbone)
    costs = part_costs(derived, size)
    assert set(costs) == {"upper_limb", "head", "lower_limb"}
    # backbone + parts = the whole derived network (merging the parts costs no MAC)
    assert count_params(net.backbone) + sum(c["params"] for c in costs.values()) == genotype.params
    assert count_macs(net.backbone, size) + sum(c["macs"] for c in costs.values()) == genotype.macs
    for name, cost in costs.items():
        assert cost["params"] == count_params(derived.parts[name])
    # without building the backbone: the same numbers
    assert genotype_part_costs(genotype, size, net.backbone.channels) == costs
    want = {f"{kind}.{name}": float(cost[kind]) for name, cost in costs.items() for kind in cost}
    assert genotype_part_metrics(genotype, size, net.backbone.channels) == want
    got = genotype_part_metrics(genotype, size, net.backbone.channels)  # remembered
    got["macs.head"] = -1.0  # a caller's copy
    assert genotype_part_metrics(genotype, size, net.backbone.channels) == want


def test_supernet_part_costs():
    net = _searched()
    size = (64, 64)
    net.batched = True  # counted on the per-part path (the same operations), left as it was
    costs = part_costs(net, size)
    assert len(costs) == 3 and net.batched
    net.batched = False
    assert supernet_part_costs(net.space, net.grouping, size, net.backbone.channels) == costs
    arch = sum(p.numel() for p in net.arch_parameters())
    assert count_params(net) == count_params(net.backbone) + arch + sum(
        c["params"] for c in costs.values()
    )
    assert count_macs(net, size) == count_macs(net.backbone, size) + sum(
        c["macs"] for c in costs.values()
    )
    genotype = net.genotype(size, "tiny")
    derived = genotype_part_costs(genotype, size, net.backbone.channels)
    assert all(derived[p]["macs"] < costs[p]["macs"] for p in costs)  # derived is smaller


# --------------------------------------------------------------------------------------------
# Reported by the loops
# --------------------------------------------------------------------------------------------


def test_search_and_retrain_report_per_part_metrics(tmp_path, synthetic_root):
    from nfs_orchestrator.genotype import read_genotype
    from nfs_orchestrator.retrain.loop import run_retrain
    from nfs_orchestrator.runtime import LocalRuntime
    from nfs_orchestrator.search.loop import run_search
    from tests.conftest import tiny_trial
    from tests.unit.test_retrain_loop import retrain_spec

    trial = tiny_trial(synthetic_root, mode="first_order", epochs=1, steps=1)
    metrics = run_search(trial, LocalRuntime(tmp_path / "search", verbose=False))
    parts = [p.name for p in trial.grouping.parts]
    for kind in ("val_ap", "params", "macs"):
        assert {f"{kind}.{p}" for p in parts} <= set(metrics), kind
    assert all(0.0 <= metrics[f"val_ap.{p}"] <= 1.0 for p in parts)
    backbone = build_backbone("tiny", random_init=True)
    size = trial.data.input_size
    assert count_params(backbone) + sum(metrics[f"params.{p}"] for p in parts) == metrics["params"]
    assert count_macs(backbone, size) + sum(metrics[f"macs.{p}"] for p in parts) == metrics["macs"]

    genotype = read_genotype(tmp_path / "search" / "artifacts" / "genotype.json")
    spec = retrain_spec(synthetic_root, epochs=1, steps_per_epoch=1)
    last = run_retrain(spec, genotype, LocalRuntime(tmp_path / "retrain", verbose=False))
    assert {f"val_ap.{p}" for p in parts} <= set(last)


def test_evaluate_model_scores_every_part_with_an_oracle(coco_spec, mpii_spec, tmp_path):  # noqa: F811
    from nfs_orchestrator.data import build_dataset, evaluate_model

    coco = load_grouping("coco-p3")
    ds = build_dataset(coco_spec, coco.schema, "val", train=False)
    stats = evaluate_model(
        Oracle(ds), ds, coco_spec, coco.schema, device="cpu", work_dir=tmp_path / "c", grouping=coco
    )
    assert {f"AP.{p.name}" for p in coco.parts} <= set(stats)
    assert all(stats[f"AP.{p.name}"] > 0.9 for p in coco.parts), stats
    mpii = load_grouping("mpii-p5")
    mp = build_dataset(mpii_spec, mpii.schema, "val", train=False)
    stats = evaluate_model(
        Oracle(mp), mp, mpii_spec, mpii.schema, device="cpu", work_dir=tmp_path / "m", grouping=mpii
    )
    assert {k: v for k, v in stats.items() if k.startswith("PCKh.")} == {
        f"PCKh.{p.name}": 100.0 for p in mpii.parts
    }
    assert part_accuracy_metrics(stats)[f"val_pckh.{mpii.parts[0].name}"] == 100.0
