"""``RunCheckpoints``: the epoch checkpoints of a trial that runs in its Tune trial actor.

What this is: the checkpoint store of a one-worker trial that runs its search without a Ray
Train worker group (``trial.ActorRuntime``). It keeps the layout and the guarantee of a Train
run: under ``<train storage>/<run name>/`` one folder per checkpoint (``epoch_NNNN``) and a
pointer file ``latest.json`` (the epoch and its folder) that is replaced only after the folder
is complete, so the pointer always names a whole checkpoint and a run killed at any moment
resumes from the last one it finished. Only the newest ``keep`` folders stay.

Why not Tune's own checkpoints: Tune records a trial's checkpoints in its experiment snapshot,
which it saves every ≥ 10 s, so a campaign killed hard would resume its trials from older
epochs than they had written. This store is written by the trial itself, at once.

Storage is a local path or a URI pyarrow understands (``s3://``, ``gs://``), like Ray's
``storage_path``. What it is not: Ray Train's checkpoint manager (the multi-worker trials).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from nfs_orchestrator.runtime import checkpoint_name

LATEST = "latest.json"


class RunCheckpoints:
    """The checkpoints of one run under ``storage/name``, the newest ``keep`` of them kept."""

    def __init__(self, storage: str, name: str, keep: int) -> None:
        self.fs, base = pafs.FileSystem.from_uri(storage if "://" in storage else _local(storage))
        self.root = f"{base.rstrip('/')}/{name}"
        self.keep = max(1, keep)

    def latest(self) -> dict[str, Any] | None:
        """``{"epoch", "dir"}`` of the newest complete checkpoint, or None."""
        try:
            with self.fs.open_input_stream(f"{self.root}/{LATEST}") as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None

    def save(self, local_dir: Path, epoch: int) -> None:
        """Copies ``local_dir`` in as ``epoch``'s checkpoint, points ``latest.json`` at it, then
        removes the folders beyond ``keep``."""
        name = checkpoint_name(epoch)
        target = f"{self.root}/{name}"
        self.fs.delete_dir_contents(target, missing_dir_ok=True)  # a copy a kill interrupted
        self.fs.create_dir(target)
        pafs.copy_files(
            str(Path(local_dir).resolve()),
            target,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs,
        )
        pointer = json.dumps({"epoch": epoch, "dir": name}, sort_keys=True)
        self._replace(LATEST, pointer.encode())
        for old in self._epoch_dirs()[: -self.keep]:
            if old != name:
                self.fs.delete_dir(f"{self.root}/{old}")

    def download(self, entry: dict[str, Any]) -> Path:
        """A fresh local copy of the checkpoint ``entry`` (from ``latest``) names."""
        local = Path(tempfile.mkdtemp(prefix="posenfs-resume-"))
        try:
            pafs.copy_files(
                f"{self.root}/{entry['dir']}",
                str(local),
                source_filesystem=self.fs,
                destination_filesystem=pafs.LocalFileSystem(),
            )
        except BaseException:
            shutil.rmtree(local, ignore_errors=True)
            raise
        return local

    def _epoch_dirs(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
        return sorted(n for n in names if n.startswith("epoch_"))

    def _replace(self, name: str, data: bytes) -> None:
        """Writes ``name`` so that a reader sees the old or the new content, never a part: a
        rename on a local file system; a single object put on an object store."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            partial = f"{self.root}/.{name}.partial"
            with self.fs.open_output_stream(partial) as f:
                f.write(data)
            self.fs.move(partial, f"{self.root}/{name}")
        else:
            with self.fs.open_output_stream(f"{self.root}/{name}") as f:
                f.write(data)


def _local(path: str) -> str:
    return str(Path(path).expanduser().resolve())
