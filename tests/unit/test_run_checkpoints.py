"""RunCheckpoints: the checkpoint store of one-worker trials that run in their Tune trial actor.
The pointer names only complete checkpoints, old ones are pruned, and a copy interrupted by a
kill neither moves the pointer nor blocks the next save of that epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs

from nfs_orchestrator.runtime import LATEST, RunCheckpoints


def checkpoint(tmp_path: Path, epoch: int) -> Path:
    """A checkpoint folder as the search loop writes one (a file and a sub-folder)."""
    folder = tmp_path / f"local-{epoch}"
    (folder / "extra").mkdir(parents=True)
    (folder / "state.pt").write_bytes(bytes([epoch]) * 1000)
    (folder / "extra" / "genotype.json").write_text(json.dumps({"epoch": epoch}))
    return folder


def test_round_trip_and_pruning(tmp_path):
    store = RunCheckpoints(str(tmp_path / "train"), "run-a", keep=2)
    assert store.latest() is None
    for epoch in range(4):
        store.save(checkpoint(tmp_path, epoch), epoch)
    run = tmp_path / "train" / "run-a"
    assert sorted(p.name for p in run.iterdir()) == ["epoch_0002", "epoch_0003", LATEST]
    entry = store.latest()
    assert entry == {"epoch": 3, "dir": "epoch_0003"}
    local = store.download(entry)
    assert (local / "state.pt").read_bytes() == bytes([3]) * 1000
    assert json.loads((local / "extra" / "genotype.json").read_text()) == {"epoch": 3}
    # a second store on the same folder (a retried trial) sees the same latest checkpoint
    assert RunCheckpoints(str(tmp_path / "train"), "run-a", keep=2).latest() == entry


def test_an_interrupted_copy_leaves_the_pointer_on_the_last_complete_checkpoint(tmp_path):
    store = RunCheckpoints(str(tmp_path / "train"), "run-b", keep=3)
    store.save(checkpoint(tmp_path, 0), 0)
    run = tmp_path / "train" / "run-b"
    (run / "epoch_0001").mkdir()  # killed while copying epoch 1: a partial folder
    (run / "epoch_0001" / "state.pt").write_bytes(b"partial")
    assert store.latest() == {"epoch": 0, "dir": "epoch_0000"}
    store.save(checkpoint(tmp_path, 1), 1)  # the resumed run writes epoch 1 again
    assert store.latest() == {"epoch": 1, "dir": "epoch_0001"}
    local = store.download(store.latest())
    assert (local / "state.pt").read_bytes() == bytes([1]) * 1000
    assert not list(run.glob(".*"))  # no temporary pointer left behind


def test_uri_storage(tmp_path):
    """A ``file://`` URI reaches the same store as the plain path (object stores go the same
    way through pyarrow)."""
    store = RunCheckpoints(f"file://{tmp_path / 'train'}", "run-c", keep=1)
    store.save(checkpoint(tmp_path, 5), 5)
    assert RunCheckpoints(str(tmp_path / "train"), "run-c", keep=1).latest()["epoch"] == 5
    assert isinstance(store.fs, pafs.LocalFileSystem)
