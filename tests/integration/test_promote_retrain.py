"""After a smoke campaign: promote the best genotype, retrain it on Ray Train, load the result.

Real Ray, real MLflow (SQLite), real Optuna, through the CLI as a user runs it:
- promote picks the trial with the best metric; the registry has one version with the alias;
  promoting again adds nothing;
- retrain registers a trained model whose tags lead back to the campaign;
- ``models:/<name>@<alias>`` loads in a fresh process through posenfs with pickle disabled
  (the version holds plain files, no MLflow flavour) and gives the trained network's heatmaps;
- a retrain killed mid-run and run again continues from its last checkpoint.

Run inside a loopback-only network namespace (see test_campaign_smoke.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.model_io import load_model
from nfs_orchestrator.orchestration import tracking
from nfs_orchestrator.orchestration.ledger import best_genotype, read_ledger
from tests.integration.helpers import POSENFS, REPO, posenfs

pytestmark = pytest.mark.ray


def test_promote_then_retrain(tmp_path, ray_tmpdir, smoke_search):
    root, data = smoke_search.root, smoke_search.data  # the session's smoke campaign (conftest)
    cid = load_campaign(smoke_search.spec, (data,)).campaign_id
    done = smoke_search.done
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    rows = read_ledger(root / "campaigns" / cid / "ledger.parquet")
    best = max(rows, key=lambda r: (r["val_ap"], -(r["macs"] or 0)))
    out = posenfs(
        ["promote", cid, "--root", str(root), "--rule", "best:val_ap", "--force"],
        tmp_path,
        ray_tmpdir,
    )
    assert out.returncode == 0, out.stderr
    c = tracking.client(tracking.default_tracking_uri(root))
    name = "posenfs-synthetic-genotypes"
    versions = c.search_model_versions(f"name='{name}'")
    assert len(versions) == 1
    champion = c.get_model_version_by_alias(name, "champion")
    assert champion.tags["nfs.campaign_id"] == cid
    # the genotype of the epoch that scored the trial's best val_ap (what the rule used)
    assert champion.tags["nfs.genotype_fp"] == best_genotype(best, "val_ap")[1]
    assert champion.tags["nfs.epoch"] == str(best_genotype(best, "val_ap")[0])
    assert champion.tags["nfs.source_run_id"] == best["run_id"]
    again = posenfs(["promote", cid, "--root", str(root), "--force"], tmp_path, ray_tmpdir)
    assert again.returncode == 0 and "already registered" in again.stdout
    assert len(c.search_model_versions(f"name='{name}'")) == 1

    retrain = str(REPO / "experiments" / "retrain_smoke.yaml")
    args = [
        "retrain",
        retrain,
        "--genotype",
        f"models:/{name}@champion",
        "--root",
        str(root),
        "--set",
        data,
        "--set",
        "epochs=4",
    ]
    first = subprocess.Popen(
        POSENFS + args,
        cwd=tmp_path,
        env=_env(ray_tmpdir),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    storage = root / "ray" / "retrain"
    deadline = time.monotonic() + 300
    # kill only once the controller has registered a checkpoint (its snapshot names one)
    while time.monotonic() < deadline and not any(
        "epoch_0001" in p.read_text() for p in storage.glob("*/checkpoint_manager_snapshot.json")
    ):
        time.sleep(0.5)
        assert first.poll() is None, first.stdout.read()[-3000:]
    os.killpg(first.pid, signal.SIGKILL)  # the retrain dies after its second checkpoint
    first.wait()
    resumed = posenfs(args, tmp_path, ray_tmpdir)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]

    trained = "posenfs-synthetic-retrained"
    [version] = c.search_model_versions(f"name='{trained}'")
    assert (
        version.tags["nfs.campaign_id"] == cid
    )  # registry → retrain → genotype → trial → campaign
    assert version.tags["nfs.genotype_fp"] == best_genotype(best, "val_ap")[1]
    assert version.tags["nfs.promoted_model"] == name
    assert "nfs.eval.val_ap" in version.tags
    run = c.get_run(version.run_id)
    starts = [m.value for m in c.get_metric_history(run.info.run_id, "start_epoch")]
    assert max(starts) >= 1  # the second process resumed, not restarted from epoch 0
    epochs = sorted({int(m.step) for m in c.get_metric_history(run.info.run_id, "train_loss")})
    assert epochs == [0, 1, 2, 3]

    c.set_registered_model_alias(trained, "candidate", version.version)
    assert version.source == f"runs:/{version.run_id}/posenfs"  # plain files, no MLflow flavour
    assert "MLmodel" not in {a.path.split("/")[-1] for a in c.list_artifacts(run.info.run_id)}
    code = (
        "import pickle, sys, torch\n"
        "torch.set_grad_enabled(False)\n"
        "from nfs_orchestrator.orchestration.model_refs import load_registered_model\n"
        "def refuse(*a, **k): raise AssertionError('pickle was called')\n"
        "class Refused:\n    def __init__(self, *a, **k): refuse()\n"
        "pickle.load = pickle.loads = pickle._load = pickle._loads = refuse\n"
        "pickle.Unpickler = pickle._Unpickler = Refused\n"
        f"m = load_registered_model('models:/{trained}@candidate', {str(root)!r})\n"
        "torch.save(m(torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)), sys.argv[1])\n"
    )
    out = tmp_path / "fresh.pt"
    fresh = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(ray_tmpdir),
    )
    assert fresh.returncode == 0, fresh.stderr[-2000:]
    # the trained network itself: the retrain's last Ray Train checkpoint
    last = [p for p in storage.rglob("model.pt") if "epoch_0003" in str(p)]
    assert last, sorted(str(p) for p in storage.rglob("model.pt"))
    with torch.no_grad():
        x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
        expected = load_model(last[0]).eval()(x)
    got = torch.load(out, weights_only=True)
    assert got.shape == (1, 17, 16, 16) and torch.allclose(got, expected, atol=1e-6)
    evaluated = posenfs(
        [
            "evaluate",
            "checkpoint",
            "--model",
            f"models:/{trained}@candidate",
            "--data",
            retrain,
            "--set",
            data,
            "--root",
            str(root),
            "--json",
            str(tmp_path / "eval.json"),
        ],
        tmp_path,
        ray_tmpdir,
    )
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "AP" in json.loads((tmp_path / "eval.json").read_text())
    assert not (tmp_path / "mlruns").exists()  # every artifact lives under the root

    # the champion beside its controls: same retrain spec, one seed apart, under the campaign
    controls = posenfs(
        ["controls", cid, "--retrain", retrain, "--random", "1", "--seeds", "2"]
        + ["--root", str(root), "--set", data],
        tmp_path,
        ray_tmpdir,
    )
    assert controls.returncode == 0, controls.stdout[-3000:] + controls.stderr[-3000:]
    assert "seed spread" in controls.stdout
    folder = root / "campaigns" / cid
    body = json.loads((folder / "controls.json").read_text())
    assert [a["arm"] for a in body["arms"]] == ["champion", "uniform", "random-1"]
    assert all(a["n"] == 2 for a in body["arms"]), body["arms"]
    assert (folder / "controls.png").stat().st_size > 1000
    exp = c.get_experiment_by_name(tracking.experiment_name(cid))
    (parent,) = tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "campaign"})
    runs = tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "control"})
    assert sorted(
        (r.data.tags[tracking.TAG_ARM], r.data.tags[tracking.TAG_SEED]) for r in runs
    ) == [(arm, seed) for arm in ("champion", "random-1", "uniform") for seed in ("0", "1")]
    assert all(r.info.status == "FINISHED" for r in runs)
    assert all(r.data.tags[tracking.TAG_PARENT] == parent.info.run_id for r in runs)
    assert {r.data.tags[tracking.TAG_CONTROLS] for r in runs} == {body["controls_id"]}


def _env(ray_tmpdir: Path) -> dict[str, str]:
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmpdir), "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_RUN_ID", None)
    return env
