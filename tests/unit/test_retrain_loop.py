"""Retraining a derived network in-process: trains, resumes, starts from shared weights, and
refuses a genotype that does not fit the spec before training starts."""

from __future__ import annotations

import pytest
import torch

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.model_io import load_model, save_model
from nfs_orchestrator.retrain.loop import MODEL_FILE, build_derived, run_retrain
from nfs_orchestrator.runtime import LocalRuntime
from nfs_orchestrator.specs import BackboneSpec, DataSpec, RetrainSpec, SyntheticSpec
from tests.unit.test_genotype import hand_set_supernet


def retrain_spec(root, **changes) -> RetrainSpec:
    body = dict(
        name="r",
        data=DataSpec(
            dataset="synthetic",
            root=str(root),
            input_size=(64, 64),
            synthetic=SyntheticSpec(train_images=48, val_images=12, image_size=(128, 128)),
        ),
        backbone=BackboneSpec(name="tiny", random_init=True),
        epochs=2,
        batch_size=8,
        steps_per_epoch=3,
    )
    body.update(changes)
    return RetrainSpec(**body)


def test_retrain_trains_resumes_and_writes_a_model(tmp_path, synthetic_root):
    genotype = hand_set_supernet().genotype((64, 64), "tiny")
    spec = retrain_spec(synthetic_root)
    first = LocalRuntime(tmp_path, verbose=False)
    first.stop_requested = True  # stop after one epoch, as a pre-emption would
    assert run_retrain(spec, genotype, first)["epoch"] == 0
    last = run_retrain(spec, genotype, LocalRuntime(tmp_path, verbose=False))
    assert last["start_epoch"] == 1 and last["epoch"] == 1 and "val_ap" in last
    model = load_model(LocalRuntime(tmp_path).latest_checkpoint() / MODEL_FILE)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 17, 16, 16)


def test_initial_weights_from_a_supernet_checkpoint(tmp_path, synthetic_root):
    net = hand_set_supernet()
    genotype = net.genotype()
    path = save_model(
        tmp_path / "super.pt",
        net,
        kind="supernet",
        space=net.space,
        grouping=net.grouping,
        backbone="tiny",
    )
    derived = build_derived(retrain_spec(synthetic_root, init_weights=str(path)), genotype)
    sup, der = net.state_dict(), derived.state_dict()
    # upper_limb (1,2) keeps input 'above' (slot 1) and op sep_conv_3x3
    assert torch.equal(
        der["parts.upper_limb.cells.s1_d2.resample.0.0.weight"],
        sup["parts.upper_limb.cells.s1_d2.resample.1.0.weight"],
    )
    assert torch.equal(
        der["parts.upper_limb.cells.s1_d2.edges.0.4.weight"],
        sup["parts.upper_limb.cells.s1_d2.edges.0.ops.sep_conv_3x3.4.weight"],
    )
    backbone = [k for k in sup if k.startswith("backbone.")]
    assert backbone and all(torch.equal(der[k], sup[k]) for k in backbone)


def test_mismatched_genotype_is_refused_before_training(tmp_path):
    genotype = hand_set_supernet().genotype()
    spec = retrain_spec(
        tmp_path / "never-written",
        data=DataSpec(
            dataset="mpii", root=str(tmp_path), train_annotations="train.json", input_size=(64, 64)
        ),
    )
    with pytest.raises(SpecError, match="grouping coco-p3 is for coco17, the data is mpii"):
        run_retrain(spec, genotype, LocalRuntime(tmp_path / "run", verbose=False))
    assert not (tmp_path / "run").exists()
    other = retrain_spec(tmp_path, backbone=BackboneSpec(name="resnet50", random_init=True))
    with pytest.raises(SpecError, match="searched with backbone tiny"):
        run_retrain(
            other,
            hand_set_supernet().genotype((64, 64), "tiny"),
            LocalRuntime(tmp_path / "run", verbose=False),
        )
