"""Small campaign specs the integration tests write (variants of experiments/smoke.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]


def one_worker_smoke(
    tmp_path: Path, name: str, *, trials: int, epochs: int, data: dict[str, Any] | None = None
) -> Path:
    """``experiments/smoke.yaml`` as campaign ``name``: ``trials`` trials × ``epochs`` epochs of
    one step (batch 2) on one worker, one trial at a time, no trial retries; data generated under
    ``tmp_path/data`` unless ``data`` replaces the data section. Returns the spec's path."""
    body = yaml.safe_load((REPO / "experiments" / "smoke.yaml").read_text())
    body["name"] = name
    body["data"] = data or {**body["data"], "root": str(tmp_path / "data")}
    body["search"].update(epochs=epochs, steps_per_epoch=1, batch_size=2)
    body["budget"].update(num_trials=trials, max_concurrent=1, trial_retries=0)
    body["resources"].update(workers_per_trial=1, cpus_per_worker=1.0)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(body))
    return path
