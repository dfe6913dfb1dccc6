"""A trial whose search fails is recorded as FAILED, with the search's error, whether the
search runs in the Tune trial actor (one worker, the default) or on a Ray Train worker group.

The campaign reads a COCO-format set whose training images were deleted after the annotations
were written, so the spec validates and the first training batch fails in the worker. The
campaign must finish (exit 1: a trial failed), its ledger row and MLflow child run must be
FAILED, and the run's ``nfs.error`` tag must hold the worker's message naming the missing image.

Run inside a loopback-only network namespace:
    unshare -rn sh -c 'ip link set lo up && .venv/bin/pytest -q \
        tests/integration/test_trial_failure.py'
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.data.synthetic import write_synthetic_coco
from nfs_orchestrator.keypoints import load_schema
from nfs_orchestrator.orchestration import tracking
from nfs_orchestrator.orchestration.ledger import read_ledger
from tests.integration.helpers import one_worker_smoke, posenfs

pytestmark = pytest.mark.ray


def write_spec(tmp_path: Path, worker_group: str) -> Path:
    data = tmp_path / "broken-coco"
    schema = load_schema("coco17")
    write_synthetic_coco(
        data, train_images=4, val_images=2, image_size=(96, 96), seed=0, schema=schema
    )
    shutil.rmtree(data / "train")  # annotations still list the images
    coco = {
        "dataset": "coco",
        "root": str(data),
        "train_annotations": "annotations/person_keypoints_train.json",
        "train_images": "train",
        "val_annotations": "annotations/person_keypoints_val.json",
        "val_images": "val",
        "input_size": [64, 64],
        "flip_test": False,
    }
    return one_worker_smoke(
        tmp_path, "broken", trials=1, epochs=1, data=coco, worker_group=worker_group
    )


@pytest.mark.parametrize("worker_group", ["auto", "always"])
def test_search_error_ends_trial_failed_with_the_error(tmp_path, ray_tmpdir, worker_group):
    spec_path = write_spec(tmp_path, worker_group)
    cid = load_campaign(spec_path).campaign_id
    root = tmp_path / "runs"

    done = posenfs(["search", str(spec_path), "--root", str(root)], tmp_path, ray_tmpdir)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "1 failed" in done.stdout
    assert ("worker(s) (in the trial actor)" in done.stdout) == (worker_group == "auto")

    (row,) = read_ledger(root / "campaigns" / cid / "ledger.parquet")
    assert row["status"] == "FAILED"
    c = tracking.client(tracking.default_tracking_uri(root))
    exp = c.get_experiment_by_name(tracking.experiment_name(cid))
    (run,) = tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "trial"})
    assert run.info.status == "FAILED"
    error = run.data.tags.get(tracking.TAG_ERROR, "")
    assert "cannot read the image" in error and str(tmp_path / "broken-coco" / "train") in error
    (parent,) = tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "campaign"})
    assert parent.info.status == "FINISHED"  # the campaign ran its budget; a trial failed
