"""A retrained model in the MLflow registry (real SQLite store, no Ray): registered as plain
files (posenfs model file + genotype.json, no MLflow flavour), it loads by alias with every
pickle entry point disabled and gives the same outputs as the network that was saved. (The
fresh-process load of a model that ``posenfs retrain`` registered: test_promote_retrain.py.)"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from nfs_orchestrator.errors import InputError
from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.model_io import save_model
from nfs_orchestrator.nn.backbones import build_backbone
from nfs_orchestrator.nn.derived import DerivedPoseNet
from nfs_orchestrator.orchestration import model_refs, tracking

REPO = Path(__file__).resolve().parents[2]
GOLDEN = REPO / "tests" / "golden" / "genotype_tiny_coco-p3.json"


def register(uri: str, model_file: Path, genotype: Genotype, name: str, tag_fp: str) -> str:
    """What retrain does after training: the model folder into a run, a version from it."""
    c = tracking.client(uri)
    exp = tracking.get_or_create_experiment(c, "posenfs/retrain")
    run_id = c.create_run(exp, run_name="r").info.run_id
    source = tracking.log_model_folder(
        uri, run_id, model_refs.MODEL_FOLDER, [model_file], {"genotype.json": genotype.to_json()}
    )
    tracking.ensure_registered_model(uri, name, "test")
    version = tracking.create_model_version(
        uri, name, source, run_id, {tracking.TAG_GENOTYPE: tag_fp}
    )
    c.set_registered_model_alias(name, "champion", version)
    return source


def refuse_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every way into pickle's unpickler raises (torch's weights-only loader is its own)."""

    def refuse(*args, **kwargs):
        raise AssertionError("pickle was called")

    class Refused:
        def __init__(self, *args, **kwargs) -> None:
            refuse()

    for name in ("load", "loads", "_load", "_loads"):
        monkeypatch.setattr(pickle, name, refuse)
    for name in ("Unpickler", "_Unpickler"):
        monkeypatch.setattr(pickle, name, Refused)


def test_registered_model_loads_by_alias_without_pickle(tmp_path, monkeypatch):
    torch.manual_seed(0)
    genotype = Genotype.from_json(GOLDEN.read_text())
    model = DerivedPoseNet(genotype, build_backbone("tiny", random_init=True)).eval()
    model_file = save_model(
        tmp_path / "model.pt",
        model,
        kind="derived",
        space=genotype.space,
        grouping=genotype.grouping,
        backbone="tiny",
        input_size=(64, 64),
        genotype=genotype,
    )
    uri = tracking.default_tracking_uri(tmp_path / "runs")
    assert register(uri, model_file, genotype, "m", genotype.fingerprint()).endswith("/posenfs")
    register(uri, model_file, genotype, "wrong", "0" * 64)  # a version tagged otherwise

    refuse_pickle(monkeypatch)
    loaded = model_refs.load_registered_model("models:/m@champion", tracking_uri=uri)
    x = torch.linspace(-1, 1, 3 * 64 * 64).reshape(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x)) and loaded(x).shape == (1, 17, 16, 16)
    assert not loaded.training and loaded.genotype.fingerprint() == genotype.fingerprint()
    with pytest.raises(InputError, match=r"models:/wrong@champion: the model file holds"):
        model_refs.load_registered_model("models:/wrong@champion", tracking_uri=uri)
