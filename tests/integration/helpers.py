"""What the integration tests share: the CLI, its environment on a local Ray, small campaign
specs (variants of experiments/smoke.yaml) and the registered checkpoint of a run."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import yaml

from nfs_orchestrator.runtime import LATEST

REPO = Path(__file__).resolve().parents[2]
POSENFS = [sys.executable, "-m", "nfs_orchestrator"]


def local_ray_env(ray_tmpdir: Path) -> dict[str, str]:
    """The environment for a `posenfs` subprocess that starts its own Ray: a private short
    RAY_TMPDIR, no usage stats, Ray Train's 0.5 s poll (results and run ends seen sooner), and no
    inherited MLflow run. (The Ray dashboard stays on, as for users: with it off, CI once saw
    test_promote_retrain's resumed retrain start again from epoch 0; not investigated.)"""
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmpdir), "RAY_USAGE_STATS_ENABLED": "0"}
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    env.pop("MLFLOW_RUN_ID", None)
    return env


@contextmanager
def private_ray_tmpdir() -> Iterator[Path]:
    """A short, private Ray temp dir (AF_UNIX paths ≤ 107 bytes); afterwards any Ray process of
    ours still alive (found by this dir in its command line) is killed by pid."""
    path = Path(f"/tmp/rt{secrets.token_hex(3)}")
    path.mkdir()
    try:
        yield path
    finally:
        for proc in psutil.process_iter(["pid", "cmdline"]):
            if str(path) in " ".join(proc.info["cmdline"] or []):
                proc.kill()
        shutil.rmtree(path, ignore_errors=True)


def posenfs(args: list[str], cwd: Path, ray_tmpdir: Path, timeout: float = 400):
    """`posenfs ARGS` run to its end in ``cwd``, on its own local Ray under ``ray_tmpdir``."""
    return subprocess.run(
        POSENFS + args,
        cwd=cwd,
        env=local_ray_env(ray_tmpdir),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def registered_epoch(train_dir: Path) -> int | None:
    """The epoch of the latest checkpoint registered for a run (or None): by Ray Train
    (several workers) or by ``RunCheckpoints`` (a one-worker search in its trial actor)."""
    try:
        if (train_dir / LATEST).is_file():
            return int(json.loads((train_dir / LATEST).read_text())["epoch"])
        snapshot = json.loads((train_dir / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def tune_recorded(experiment_dir: Path, trial_id: str) -> bool:
    """Whether Tune's experiment snapshot (what ``Tuner.restore`` reads) lists the trial."""
    return any(trial_id in p.read_text() for p in experiment_dir.glob("experiment_state-*.json"))


def one_worker_smoke(
    tmp_path: Path,
    name: str,
    *,
    trials: int,
    epochs: int,
    data: dict[str, Any] | None = None,
    worker_group: str = "auto",
) -> Path:
    """``experiments/smoke.yaml`` as campaign ``name``: ``trials`` trials × ``epochs`` epochs of
    one step (batch 2) on one worker (in the trial actor, unless ``worker_group="always"``), one
    trial at a time, no trial retries; data generated under ``tmp_path/data`` unless ``data``
    replaces the data section. Returns the spec's path."""
    body = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    body["name"] = name
    body["data"] = data or {**body["data"], "root": str(tmp_path / "data")}
    body["search"].update(epochs=epochs, steps_per_epoch=1, batch_size=2)
    body["budget"].update(num_trials=trials, max_concurrent=1, trial_retries=0)
    body["resources"].update(workers_per_trial=1, cpus_per_worker=1.0, worker_group=worker_group)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


def search_in_background(spec_path: Path, root: Path, ray_tmpdir: Path, log: Path):
    """Starts `posenfs search SPEC --root ROOT` in its own session (so the whole Ray it starts
    can be signalled), output to ``log``; returns the Popen."""
    with open(log, "w") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            POSENFS + ["search", str(spec_path), "--root", str(root)],
            cwd=log.parent,
            env=local_ray_env(ray_tmpdir),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
