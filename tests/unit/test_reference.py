"""Reference fidelity: the paper's own checkpoint computes the same function in posenfs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nfs_orchestrator.errors import InputError
from nfs_orchestrator.keypoints import load_grouping
from nfs_orchestrator.model_io import load_model
from nfs_orchestrator.nn.backbones import build_backbone
from nfs_orchestrator.nn.supernet import PoseSupernet
from nfs_orchestrator.reference import convert_state_dict, import_reference
from nfs_orchestrator.specs import load_fabric
from tests.conftest import SHARED

CKPTS = SHARED / "reference-checkpoints"
HRNET = CKPTS / "ref_hrnet_w32_cnf5_mpii_256x256.pt"
needs_fixture = pytest.mark.skipif(not HRNET.exists(), reason=f"{HRNET} is not present")


@needs_fixture
def test_cli_import_check_passes_on_the_shipped_fixture(tmp_path):
    out = tmp_path / "hrnet.pt"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nfs_orchestrator",
            "reference",
            "import",
            str(HRNET),
            "--fabric",
            "hrnet-w32_cnf5_mpii-256x256",
            "--grouping",
            "mpii-p5",
            "--backbone",
            "hrnet_w32",
            "--input",
            "256x256",
            "-o",
            str(out),
            "--check",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    last = json.loads(proc.stdout.strip().splitlines()[-1])
    assert last["ok"] is True and last["max_abs_err"] <= 1e-4 * max(1, last["max_abs_ref"])
    assert "dropped 65 keys" in proc.stdout and "left_arm_part.stem.*" in proc.stdout
    # the written checkpoint is a posenfs model that reproduces the reference output
    data = torch.load(HRNET, weights_only=True)
    model = load_model(out).eval()
    with torch.no_grad():
        ours = model(data["input"])
    assert ours.shape == (2, 16, 64, 64)
    assert (tmp_path / "hrnet.genotype.json").exists()


def mobilenet_reference_state(legacy: bool = False) -> dict[str, torch.Tensor]:
    """A state dict in the reference MobileNetV2 + CNF×3 COCO layout, from its key listing,
    filled with seeded random values (BN variances positive)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for line in (CKPTS / "ref_mobilenetv2_cnf3_coco_384x288.keys.txt").read_text().splitlines():
        key, shape, dtype = line.split("\t")
        dims = tuple(int(d) for d in re.findall(r"\d+", shape))
        if dtype == "int64":
            state[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            state[key] = torch.rand(dims, generator=g) + 0.5
        else:
            state[key] = torch.randn(dims, generator=g) * 0.1
    if legacy:  # a pre-2021 checkpoint: a second mixed op per cell and profiler buffers
        state["head_part.cell_3_0.cell_arch.1.ops.1.operation.0.weight"] = torch.zeros(64, 1, 3, 3)
        state["total_ops"] = torch.zeros(1)
        state["head_part.total_params"] = torch.zeros(1)
    return state


@pytest.mark.skipif(
    not (CKPTS / "ref_mobilenetv2_cnf3_coco_384x288.keys.txt").exists(),
    reason="key listing not present",
)
def test_mobilenet_vector_head_layout_imports_and_runs(tmp_path):
    ckpt = tmp_path / "ref_mobilenet.pt"
    torch.save(mobilenet_reference_state(legacy=True), ckpt)
    result = import_reference(
        ckpt,
        load_fabric("mobilenetv2_cnf3_coco-384x288"),
        load_grouping("coco-p3"),
        "mobilenet_v2",
        (96, 128),
        tmp_path / "mb.pt",
    )
    dropped = result["dropped"]
    assert any(".stem." in k for k in dropped) and "total_ops" in dropped
    assert any("features.17" in k for k in dropped)
    assert "head_part.cell_3_0.cell_arch.1.ops.1.operation.0.weight" in dropped
    model = load_model(tmp_path / "mb.pt").eval()
    with torch.no_grad():
        y = model(torch.randn(1, 3, 128, 96))
    assert y.shape == (1, 17, 32, 24)
    assert 0 <= float(y.min()) and float(y.max()) < 1  # the vector (squash) head
    # the imported weights are the file's, tensor for tensor
    src = mobilenet_reference_state()
    assert torch.equal(
        model.state_dict()["parts.upper_limb.head.conv.1.weight"],
        src["upper_limb_part.final_layer.1.weight"],
    )
    assert torch.equal(
        model.state_dict()["parts.head.cells.s1_d4.edges.0.ops.sep_conv_3x3.4.weight"],
        src["head_part.cell_4_1.cell_arch.0.ops.1.operation.4.weight"],
    )


def test_unknown_and_missing_keys_are_named():
    space, grouping = load_fabric("mobilenetv2_cnf3_coco-384x288"), load_grouping("coco-p3")
    net = PoseSupernet(space, grouping, build_backbone("mobilenet_v2", random_init=True))
    state = mobilenet_reference_state()
    with pytest.raises(InputError, match=r"unexpected keys .*head_part\.mystery"):
        convert_state_dict(
            {**state, "head_part.mystery.weight": torch.zeros(1)}, space, grouping, net.state_dict()
        )
    del state["head_part.betas"]
    with pytest.raises(InputError, match=r"lacks keys .*parts\.head\.beta"):
        convert_state_dict(state, space, grouping, net.state_dict())


def test_wrong_grouping_is_a_shape_or_key_error(tmp_path):
    space = load_fabric("mobilenetv2_cnf3_coco-384x288")
    grouping = load_grouping("coco-p5")
    net = PoseSupernet(space, grouping, build_backbone("mobilenet_v2", random_init=True))
    with pytest.raises(InputError):
        convert_state_dict(mobilenet_reference_state(), space, grouping, net.state_dict())


def test_missing_checkpoint_file_is_one_line(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "nfs_orchestrator",
            "reference",
            "import",
            str(tmp_path / "x.pt"),
            "--fabric",
            "tiny",
            "--grouping",
            "coco-p3",
            "--backbone",
            "tiny",
            "--input",
            "64x64",
            "-o",
            str(tmp_path / "o.pt"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such checkpoint file" in proc.stderr
    assert not Path(tmp_path / "o.pt").exists()
