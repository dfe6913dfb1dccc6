"""The seam between the pure core loops and the world that runs them.

``search.loop.run_search`` and ``retrain.loop.run_retrain`` talk to the outside only through a
``Runtime``: which device and rank they are, how gradients and objects are synchronised across
ranks, where the latest checkpoint is, and where a finished epoch is reported. ``LocalRuntime``
runs everything in this process (tests, benchmarks); ``orchestration.train_worker`` implements
the same protocol over Ray Train and MLflow, ``orchestration.trial`` in a Tune trial actor.
Nothing here imports ray/optuna/mlflow.

``RunCheckpoints`` is the one store of epoch checkpoints that a runtime writes itself (not
through Ray Train): ``LocalRuntime``'s and that of a trial running in its Tune trial actor.

Checkpoints are directories. A loop writes its state into a fresh temporary directory and hands
it to ``report``; the runtime owns it from then on (persists, uploads, prunes old ones).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import pyarrow.fs as pafs
import torch
import torch.distributed as dist


def checkpoint_name(epoch: int, step: int | None = None) -> str:
    """The folder name of ``epoch``'s checkpoint, for every runtime: ``epoch_NNNN``; a mid-epoch
    one after ``step`` steps of ``epoch``: ``epoch_NNNN_step_NNNNNN``."""
    return f"epoch_{epoch:04d}" if step is None else f"epoch_{epoch:04d}_step_{step:06d}"


class Runtime(Protocol):
    """What a core loop may ask of whoever runs it."""

    device: torch.device
    rank: int
    world_size: int

    def latest_checkpoint(self) -> Path | None:
        """Directory of the latest committed checkpoint of this run, or None on a fresh start."""
        ...

    def report(
        self,
        metrics: Mapping[str, float],
        checkpoint_dir: Path | None = None,
        artifacts: Mapping[str, str | bytes] | None = None,
    ) -> None:
        """One finished epoch: metrics (identical on every rank), the checkpoint written on rank 0
        (None elsewhere), and named artifacts (e.g. ``genotype.json``) to keep with the run.
        Every rank calls it the same number of times."""
        ...

    def sync_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        """Averages the gradients of ``parameters`` over all ranks (no-op on one rank)."""
        ...

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        ...

    def all_reduce_mean(self, values: Mapping[str, float]) -> dict[str, float]:
        """The mean over ranks of each value."""
        ...

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank."""
        ...

    def should_stop(self) -> bool:
        """True when the run must checkpoint now and exit (pre-emption notice)."""
        ...

    def should_stop_step(self) -> bool:
        """The same question at a step boundary, asked after every step: True on every rank
        when the run must write a mid-epoch checkpoint and exit. Collective and cheap."""
        ...

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""
        ...

    def interrupt(self, checkpoint_dir: Path | None, epoch: int, step: int) -> None:
        """Keeps the mid-epoch checkpoint written on rank 0 (None elsewhere) after ``step``
        steps of ``epoch`` as the run's latest, and marks the run stopped (it exits next).
        Every rank calls it."""
        ...


class DistributedOps:
    """``sync_gradients``/``broadcast_object``/``all_reduce_mean`` over ``torch.distributed``.

    Used by every multi-rank runtime; with no process group it degrades to single-rank no-ops.
    Gradients travel flattened in one tensor per dtype, so a step costs one collective, and
    alpha/beta are averaged exactly like the weights (ranks never diverge: nni#5013).
    """

    @property
    def _distributed(self) -> bool:
        return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1

    def sync_gradients(self, parameters: Iterable[torch.nn.Parameter]) -> None:
        if not self._distributed:
            return
        parameters = list(parameters)
        if any(p.grad is not None for p in parameters):
            # ranks may leave different parameters unused (``sampling: gumbel`` draws an op per
            # edge on each rank): a missing gradient is a zero one, so every rank reduces the
            # same flat vector
            for p in parameters:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset : offset + n].view_as(g))
            offset += n

    def broadcast_object(self, obj: Any) -> Any:
        if not self._distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        if not self._distributed:
            return [obj]
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_mean(self, values: Mapping[str, float]) -> dict[str, float]:
        keys = sorted(values)
        if not self._distributed:
            return {k: float(values[k]) for k in keys}
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        t /= dist.get_world_size()
        return {k: float(v) for k, v in zip(keys, t.tolist())}

    def broadcast_parameters(self, module: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers on every rank (same start everywhere)."""
        if not self._distributed:
            return
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


LATEST = "latest.json"


class RunCheckpoints:
    """The epoch checkpoints of one run under ``<storage>/<name>/``, the newest ``keep`` kept.

    The layout and guarantee of a Ray Train run: one folder per checkpoint (``epoch_NNNN``) and
    a pointer file ``latest.json`` (the epoch and its folder) replaced only after the folder is
    complete, so the pointer always names a whole checkpoint and a run killed at any moment
    resumes from the last one it finished. Storage is a local path or a URI pyarrow understands
    (``s3://``, ``gs://``), like Ray's ``storage_path``. Why not Tune's own checkpoints for a
    trial in its actor: Tune records them in its experiment snapshot, saved every ≥ 1 s, so a
    campaign killed hard would resume its trials from older epochs than they had written.
    """

    def __init__(self, storage: str, name: str, keep: int) -> None:
        self.fs, base = pafs.FileSystem.from_uri(
            storage if "://" in storage else str(Path(storage).expanduser().resolve())
        )
        self.root = f"{base.rstrip('/')}/{name}"
        self.keep = max(1, keep)

    def latest(self) -> dict[str, Any] | None:
        """``{"epoch", "dir"}`` of the newest complete checkpoint, or None."""
        try:
            with self.fs.open_input_stream(f"{self.root}/{LATEST}") as f:
                return json.loads(f.read().decode())
        except FileNotFoundError:
            return None

    def save(self, local_dir: Path, epoch: int, step: int | None = None) -> None:
        """Copies ``local_dir`` in as ``epoch``'s checkpoint (after ``step`` steps of it: a
        mid-epoch one), points ``latest.json`` at it, then removes the folders beyond ``keep``."""
        name = checkpoint_name(epoch, step)
        target = f"{self.root}/{name}"
        self.fs.delete_dir_contents(target, missing_dir_ok=True)  # a copy a kill interrupted
        self.fs.create_dir(target)
        pafs.copy_files(
            str(Path(local_dir).resolve()),
            target,
            source_filesystem=pafs.LocalFileSystem(),
            destination_filesystem=self.fs,
        )
        entry: dict[str, Any] = {"epoch": epoch, "dir": name}
        if step is not None:
            entry["step"] = step
        pointer = json.dumps(entry, sort_keys=True)
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

    def local_path(self, entry: dict[str, Any]) -> Path | None:
        """The folder of checkpoint ``entry`` itself when the store is local, else None."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            return Path(f"{self.root}/{entry['dir']}")
        return None

    def _epoch_dirs(self) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        names = [i.base_name for i in infos if i.type == pafs.FileType.Directory]
        # oldest first; a mid-epoch checkpoint (epoch_NNNN_step_...) before its epoch's own
        return sorted(
            (n for n in names if n.startswith("epoch_")), key=lambda n: (n[:10], len(n) == 10)
        )

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


class LocalRuntime(DistributedOps):
    """Runs a loop in this process: checkpoints under ``run_dir/checkpoints/epoch_NNNN``
    (``RunCheckpoints``),
    metrics appended to ``run_dir/metrics.jsonl``, artifacts under ``run_dir/artifacts``.

    Re-running with the same ``run_dir`` resumes from the latest checkpoint, as a Ray run does.
    """

    def __init__(
        self,
        run_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        keep: int = 2,
        verbose: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.device = torch.device(device)
        self.rank = 0
        self.world_size = 1
        self.keep = keep
        self.verbose = verbose
        self.checkpoints = RunCheckpoints(str(self.run_dir), "checkpoints", keep)
        self.history: list[dict[str, float]] = []
        self.stop_requested = False
        self.stop_at_step: int | None = None  # a pre-emption notice after this many steps
        self.steps = 0  # steps this runtime has seen
        self._started = time.monotonic()

    def latest_checkpoint(self) -> Path | None:
        entry = self.checkpoints.latest()
        return None if entry is None else self.checkpoints.local_path(entry)

    def report(
        self,
        metrics: Mapping[str, float],
        checkpoint_dir: Path | None = None,
        artifacts: Mapping[str, str | bytes] | None = None,
    ) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        row = {k: float(v) for k, v in metrics.items()}
        self.history.append(row)
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
        for name, content in (artifacts or {}).items():
            path = self.run_dir / "artifacts" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        if checkpoint_dir is not None:
            self.checkpoints.save(checkpoint_dir, int(metrics["epoch"]))
        if self.verbose:
            shown = " ".join(f"{k}={v:.4g}" for k, v in row.items() if k not in ("epoch", "epochs"))
            elapsed = time.monotonic() - self._started
            print(
                f"[epoch {int(row['epoch']) + 1}/{int(row.get('epochs', 0))}] {shown} "
                f"({elapsed:.0f}s)",
                file=sys.stderr,
                flush=True,
            )

    def should_stop(self) -> bool:
        return self.stop_requested

    def should_stop_step(self) -> bool:
        self.steps += 1
        return self.stop_at_step is not None and self.steps >= self.stop_at_step

    def interrupt(self, checkpoint_dir: Path | None, epoch: int, step: int) -> None:
        if checkpoint_dir is not None:
            self.checkpoints.save(checkpoint_dir, epoch, step)
        self.stop_requested = True
