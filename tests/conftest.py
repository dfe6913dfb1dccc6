"""Shared test helpers: tiny, seeded trial specs on generated data (no Ray needed)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def pytest_itemcollected(item):
    """How `make test` (pytest-xdist, ``--dist loadgroup``) shares the tests out: every Ray
    integration test in one group, so they run one after another on one worker as they always
    have (each starts its own Ray; the smoke campaign's session fixture is made once), while
    the other worker takes the other tests, a file at a time (module fixtures made once). Marked
    as each test is collected: xdist reads the groups in its own collection_modifyitems."""
    group = "integration" if item.path.parent.name == "integration" else item.path.stem
    item.add_marker(pytest.mark.xdist_group(group))


# Under pytest-xdist (`make test`: two workers on CI's two cores) each test keeps to one torch
# thread: two workers of two threads each slowed some tests tenfold.
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    torch.set_num_threads(THREADS)


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
