"""The pure core imports no ray, optuna or mlflow (DESIGN: only orchestration/ does), and a
Train worker loads only what it needs."""

from __future__ import annotations

import subprocess
import sys


def loaded(modules: list[str], unwanted: tuple[str, ...]) -> list[str]:
    """The modules starting with one of ``unwanted`` that a fresh interpreter has loaded after
    importing ``modules``."""
    code = (
        "import sys\n"
        f"for m in {modules!r}: __import__(m)\n"
        f"print(','.join(sorted(m for m in sys.modules if m.startswith({unwanted!r}))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [m for m in out.stdout.strip().split(",") if m]


def test_core_leaves_the_orchestra_out():
    core = [
        "nfs_orchestrator.nn.supernet",
        "nfs_orchestrator.nn.derived",
        "nfs_orchestrator.search.loop",
        "nfs_orchestrator.retrain",
        "nfs_orchestrator.genotype",
        "nfs_orchestrator.specs",
        "nfs_orchestrator.keypoints",
        "nfs_orchestrator.data",
        "nfs_orchestrator.evaluation",
        "nfs_orchestrator.reference",
        "nfs_orchestrator.runtime",
        "nfs_orchestrator.drawing",
        "nfs_orchestrator.model_io",
        "nfs_orchestrator.hardware",
        "nfs_orchestrator.cli",
    ]
    assert loaded(core, ("ray", "optuna", "mlflow")) == []


def test_train_workers_load_neither_tune_optuna_nor_mlflow():
    """The Train controller and every worker import train_worker afresh for each trial."""
    worker = ["nfs_orchestrator.orchestration.train_worker"]
    assert loaded(worker, ("ray.tune", "optuna", "mlflow")) == []


def test_genotype_needs_no_network_modules():
    """A genotype is derived from α/β tensors and the fabric geometry: reading, checking and
    deriving one imports nothing under ``nfs_orchestrator.nn``."""
    for module in ("nfs_orchestrator.genotype", "nfs_orchestrator.geometry"):
        assert loaded([module], ("nfs_orchestrator.nn",)) == [], module
    assert loaded(["nfs_orchestrator.geometry"], ("torch",)) == []
