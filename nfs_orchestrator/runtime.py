"""The seam between the pure core loops and the world that runs them.

``search.loop.run_search`` and ``retrain.loop.run_retrain`` talk to the outside only through a
``Runtime``: which device and rank they are, how gradients and objects are synchronised across
ranks, where the latest checkpoint is, and where a finished epoch is reported. ``LocalRuntime``
runs everything in this process (tests, the CLI without Ray); ``orchestration.ray_runtime``
implements the same protocol over Ray Train and MLflow. Nothing here imports ray/optuna/mlflow.

Checkpoints are directories. A loop writes its state into a fresh temporary directory and hands
it to ``report``; the runtime owns it from then on (persists, uploads, prunes old ones).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist


def checkpoint_name(epoch: int) -> str:
    """The folder name of ``epoch``'s checkpoint, for every runtime: ``epoch_NNNN``."""
    return f"epoch_{epoch:04d}"


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


class LocalRuntime(DistributedOps):
    """Runs a loop in this process: checkpoints under ``run_dir/checkpoints/epoch_NNNN``,
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
        self.history: list[dict[str, float]] = []
        self.stop_requested = False
        self._started = time.monotonic()

    def latest_checkpoint(self) -> Path | None:
        ckpts = sorted((self.run_dir / "checkpoints").glob("epoch_*"))
        return ckpts[-1] if ckpts else None

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
            root = self.run_dir / "checkpoints"
            root.mkdir(parents=True, exist_ok=True)
            final = root / checkpoint_name(int(metrics["epoch"]))
            tmp = root / f".{final.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(checkpoint_dir, tmp)
            shutil.rmtree(final, ignore_errors=True)
            tmp.rename(final)  # a checkpoint appears whole or not at all
            for old in sorted(root.glob("epoch_*"))[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
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
