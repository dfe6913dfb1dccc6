"""The command line: the core commands work, and every bad input is one line on stderr with exit
status 2 and no traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import scipy.io as sio

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "genotype_tiny_coco-p3.json"


def posenfs(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nfs_orchestrator", *args], capture_output=True, text=True, cwd=cwd
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert fragment in lines[0], lines[0]


def test_space_summary_json_counts_what_runs():
    proc = posenfs(
        "space",
        "summary",
        "tiny",
        "--grouping",
        "coco-p3",
        "--backbone",
        "tiny",
        "--input",
        "64x64",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary == {"params": 325251, "arch_params": 66, "macs": 11359232}


def test_genotype_show_and_draw(tmp_path):
    proc = posenfs("genotype", "show", str(GOLDEN))
    assert proc.returncode == 0 and "part upper_limb" in proc.stdout
    for name in ("fabric.svg", "fabric.png"):
        proc = posenfs("genotype", "draw", str(GOLDEN), "-o", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / name).stat().st_size > 2000


def test_evaluate_commands_on_fixtures(tmp_path):
    gt = json.loads((FIXTURES / "coco" / "test_coco.json").read_text())
    dt = [
        {"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"], "score": 1.0}
        for a in gt["annotations"]
        if a["num_keypoints"] > 0
    ]
    (tmp_path / "dt.json").write_text(json.dumps(dt))
    proc = posenfs(
        "evaluate",
        "coco",
        "--annotations",
        str(FIXTURES / "coco" / "test_coco.json"),
        "--predictions",
        str(tmp_path / "dt.json"),
        "--json",
        str(tmp_path / "s.json"),
    )
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "s.json").read_text())
    assert list(stats) == ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    assert stats["AP"] == 1.0
    mat = sio.loadmat(FIXTURES / "mpii" / "gt_valid.mat")
    sio.savemat(tmp_path / "pred.mat", {"preds": mat["pos_gt_src"].transpose(2, 0, 1) - 1})
    proc = posenfs(
        "evaluate",
        "mpii",
        "--annotations",
        str(FIXTURES / "mpii" / "gt_valid.mat"),
        "--predictions",
        str(tmp_path / "pred.mat"),
        "--json",
        str(tmp_path / "m.json"),
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "m.json").read_text())["Mean"] == 100.0


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["genotype", "show", "missing.json"], "missing.json: no such genotype file"),
        (["space", "summary", "nope", "--grouping", "coco-p3"], "no such fabric"),
        (
            ["space", "summary", "tiny", "--grouping", "coco-p3", "--input", "65x64"],
            "not divisible by the fabric's coarsest stride 32",
        ),
        (["space", "summary", "tiny", "--grouping", "mpii-p9"], "no such grouping"),
        (["evaluate", "coco", "--annotations", "gt.json", "--predictions", "dt.json"], "gt.json"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, fragment, tmp_path):
    assert_one_line_error(posenfs(*args, cwd=tmp_path), fragment)


def test_bad_spec_files_are_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text("name: x\nops: [zero, skip\n")
    assert_one_line_error(
        posenfs("space", "summary", str(tmp_path / "bad.yaml"), "--grouping", "coco-p3"),
        "invalid YAML",
    )
    (tmp_path / "ops.yaml").write_text("name: x\nops: [zero, conv_7x7]\n")
    assert_one_line_error(
        posenfs("space", "summary", str(tmp_path / "ops.yaml"), "--grouping", "coco-p3"),
        "unknown op 'conv_7x7'",
    )
    (tmp_path / "g.yaml").write_text("name: g\nschema: coco17\nparts:\n  face: [nose]\n")
    assert_one_line_error(
        posenfs("space", "summary", "tiny", "--grouping", str(tmp_path / "g.yaml")),
        "not covered by any part",
    )


def test_debug_shows_the_traceback():
    proc = posenfs("--debug", "genotype", "show", "missing.json")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_validate_accepts_every_shipped_file_and_names_its_kind():
    repo = Path(__file__).resolve().parents[2]
    files = sorted(str(p) for p in (repo / "experiments").glob("*.yaml"))
    proc = posenfs("validate", *files)
    assert proc.returncode == 0, proc.stderr
    for path in files:
        kind = "retrain" if Path(path).name.startswith("retrain") else "campaign"
        assert f"{path}: ok, {kind} " in proc.stdout
    # the COCO paper campaigns validate on detector boxes where the file exists, else say so
    dets = "/mnt/data/coco/COCO_val2017_detections_AP_H_56_person.json"
    assert proc.stdout.count(f"validation  ground-truth boxes ({dets} absent here)") == 2
    paper = str(repo / "experiments" / "search_mobilenetv2_cnf3_coco-384x288.yaml")
    strict = posenfs("validate", paper, "--set", "data.val_boxes=detections")
    assert_one_line_error(strict, f"{dets}: no such detections file")


def test_arch_preset_applies_before_set_and_bad_names_are_one_line():
    repo = Path(__file__).resolve().parents[2]
    quickstart = str(repo / "experiments" / "quickstart.yaml")
    plain = posenfs("validate", quickstart)
    reference = posenfs("validate", quickstart, "--arch-preset", "reference")
    assert plain.returncode == reference.returncode == 0
    assert plain.stdout.splitlines()[0] != reference.stdout.splitlines()[0]  # another campaign
    back = posenfs(
        "validate", quickstart, "--arch-preset", "reference", "--set",
        "search.arch_optimizer.weight_decay=0.0", "--set", "search.arch_start_epoch=null",
        "--set", "search.arch_optimizer.lr=0.05", "--set", "search.alpha_entropy_weight=0.003",
    )  # fmt: skip
    assert back.stdout.splitlines()[0] == plain.stdout.splitlines()[0]  # --set comes after
    assert_one_line_error(posenfs("validate", quickstart, "--arch-preset", "refrence"), "preset")


def test_validate_names_the_no_feedback_control_and_refuses_it_outside_first_order():
    quickstart = str(Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml")
    plain = posenfs("validate", quickstart)
    control = posenfs("validate", quickstart, "--set", "search.weight_mixture=uniform")
    assert control.returncode == 0, control.stderr
    assert "weight steps at uniform α/β (no-feedback control)" in control.stdout
    assert "no-feedback" not in plain.stdout
    sync = ("--set", "search.weight_mixture=uniform", "--set", "search.mode=sync")
    assert_one_line_error(posenfs("validate", quickstart, *sync), "needs mode first_order")


def test_dry_run_of_a_gpu_campaign_plans_without_gpus_here():
    repo = Path(__file__).resolve().parents[2]
    paper = repo / "experiments" / "search_hrnet-w32_cnf5_mpii-256x256_groupings.yaml"
    proc = posenfs("search", str(paper), "--dry-run", "--step-seconds", "0.5")  # nothing timed
    assert proc.returncode == 0, proc.stderr
    assert "+ 4 GPU per trial" in proc.stdout and "trials: 8 × 200 epochs" in proc.stdout
    # the forecast: 926 steps × 200 epochs × 0.5 s + 25 s start, × 8 trials × 4 GPUs
    assert "GPU-hours" in proc.stdout and " 823 " in proc.stdout, proc.stdout
    assert "mpii: train 22,246 instances" in proc.stdout
    bad = (
        (("--dry-run", "--step-seconds", "0"), "--step-seconds: 0 must be > 0"),
        (("--dry-run", "--device-profile", "tpu"), "--device-profile: 'tpu' is not one of"),
        (("--step-seconds", "2"), "--step-seconds: only with --dry-run"),
    )
    for args, fragment in bad:
        assert_one_line_error(posenfs("search", str(paper), *args), fragment)
