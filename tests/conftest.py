"""Shared test helpers: tiny, seeded trial specs on generated data (no Ray needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """One generated COCO-format set shared by the session's tests."""
    return tmp_path_factory.mktemp("synthetic")


def tiny_trial(data_root: Path, mode: str = "first_order", epochs: int = 2, **search):
    from nfs_orchestrator.keypoints import load_grouping
    from nfs_orchestrator.specs import (
        BackboneSpec,
        DataSpec,
        SearchSpec,
        SyntheticSpec,
        TrialSpec,
        load_fabric,
    )

    return TrialSpec(
        name="tiny",
        seed=0,
        data=DataSpec(
            dataset="synthetic",
            root=str(data_root),
            input_size=(64, 64),
            synthetic=SyntheticSpec(train_images=48, val_images=12, image_size=(128, 128)),
        ),
        backbone=BackboneSpec(name="tiny", random_init=True),
        fabric=load_fabric("tiny"),
        grouping=load_grouping("coco-p3"),
        search=SearchSpec(
            mode=mode,
            epochs=epochs,
            batch_size=8,
            steps_per_epoch=search.pop("steps", 3),
            **search,
        ),
    )
