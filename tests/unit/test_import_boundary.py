"""The pure core imports no ray, optuna or mlflow (DESIGN: only orchestration/ does), and a
Train worker loads only what it needs."""

from __future__ import annotations

import subprocess
import sys


def test_core_leaves_the_orchestra_out():
    code = (
        "import sys\n"
        "import nfs_orchestrator.nn.supernet, nfs_orchestrator.nn.derived\n"
        "import nfs_orchestrator.search.loop, nfs_orchestrator.retrain\n"
        "import nfs_orchestrator.genotype, nfs_orchestrator.specs, nfs_orchestrator.keypoints\n"
        "import nfs_orchestrator.data, nfs_orchestrator.evaluation, nfs_orchestrator.reference\n"
        "import nfs_orchestrator.runtime, nfs_orchestrator.drawing, nfs_orchestrator.model_io\n"
        "import nfs_orchestrator.hardware\n"
        "import nfs_orchestrator.cli\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'optuna', 'mlflow'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_train_workers_load_neither_tune_optuna_nor_mlflow():
    """The Train controller and every worker import train_worker afresh for each trial."""
    code = (
        "import sys\n"
        "import nfs_orchestrator.orchestration.train_worker\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('optuna', 'mlflow')\n"
        "             or m.startswith('ray.tune'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
