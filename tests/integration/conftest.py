"""Fixtures shared by the integration tests (each needs a real local Ray)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers import REPO, posenfs, private_ray_tmpdir


@pytest.fixture
def ray_tmpdir():
    with private_ray_tmpdir() as path:
        yield path


@dataclass(frozen=True)
class SmokeSearch:
    spec: str  # experiments/smoke.yaml
    data: str  # the override that puts its data under the session's folder
    root: Path  # the campaign's --root
    done: subprocess.CompletedProcess  # `posenfs search`, run to its end


@pytest.fixture(scope="session")
def smoke_search(tmp_path_factory) -> SmokeSearch:
    """``posenfs search experiments/smoke.yaml`` once per session, on its own Ray (stopped
    when the search ends). test_campaign_smoke checks the campaign; test_promote_retrain then
    promotes, retrains and runs controls on it, which only adds runs, registry versions and
    files: nothing a check of the campaign reads changes."""
    folder = tmp_path_factory.mktemp("smoke")
    spec = str(REPO / "experiments" / "smoke.yaml")
    data = f"data.root={folder / 'data'}"
    root = folder / "runs"
    with private_ray_tmpdir() as ray_tmpdir:
        done = posenfs(["search", spec, "--root", str(root), "--set", data], folder, ray_tmpdir)
    return SmokeSearch(spec, data, root, done)
