"""References to genotypes and trained models in the MLflow store, resolved to local objects.

What this is: ``resolve_genotype`` accepts what ``posenfs retrain --genotype`` takes:

    models:/NAME@ALIAS  or  models:/NAME/VERSION   a promoted genotype (its version's artifacts)
    runs:/RUN_ID/genotype.json                     a trial run's latest genotype
    a path                                         a genotype.json file

and returns the genotype with its lineage (model version, source run, campaign), so retraining
can tag its run and registered model with where the architecture came from.

A registered retrained model (``posenfs-<dataset>-retrained``) is a version whose source is the
retrain run's folder ``posenfs/`` (``MODEL_FOLDER``): ``model.pt``, a posenfs model file
(``model_io``: the network's description as plain values + its state dict, nothing else) and
``genotype.json``. No MLflow flavour, no pickle: ``load_registered_model`` rebuilds the derived
network from the genotype and loads the weights with ``torch.load(weights_only=True)``;
``download_model_file`` fetches the model file itself.

What it is not: the MLflow calls themselves (``tracking.py``) or promotion (``promote.py``).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from nfs_orchestrator.errors import InputError
from nfs_orchestrator.genotype import Genotype, read_genotype
from nfs_orchestrator.orchestration import tracking

if TYPE_CHECKING:
    from torch import nn

MODEL_FOLDER = "posenfs"  # a retrain run's folder that its registered model version points at
MODEL_FILE_ARTIFACT = f"{MODEL_FOLDER}/model.pt"  # the posenfs model file (model_io)


@dataclass(frozen=True)
class Lineage:
    """Where a genotype came from: tags to carry forward (all strings)."""

    tags: dict[str, str] = field(default_factory=dict)


def resolve_genotype(ref: str, tracking_uri: str) -> tuple[Genotype, Lineage]:
    if not ref.startswith(("models:/", "runs:/")):
        return read_genotype(ref), Lineage({"nfs.genotype_source": str(Path(ref).resolve())})
    with tempfile.TemporaryDirectory(prefix="posenfs-genotype-") as tmp:
        try:
            if ref.startswith("models:/"):
                mv = tracking.get_model_version(tracking_uri, ref)
                folder = mv.folder or "promotion"  # promote's folder (a consensus: its own)
                path = tracking.download_artifact(
                    tracking_uri, mv.run_id, f"{folder}/genotype.json", tmp
                )
                tags = {k: v for k, v in mv.tags.items() if k.startswith("nfs.")}
                tags.update(
                    {
                        "nfs.promoted_model": mv.name,
                        "nfs.promoted_version": mv.version,
                        "nfs.genotype_source": ref,
                    }
                )
            else:
                run_id, _, artifact = ref.removeprefix("runs:/").partition("/")
                path = tracking.download_artifact(
                    tracking_uri, run_id, artifact or "genotype.json", tmp
                )
                tags = {
                    k: v
                    for k, v in tracking.run_tags(tracking_uri, run_id).items()
                    if k in (tracking.TAG_CAMPAIGN, tracking.TAG_TRIAL)
                }
                tags.update({"nfs.source_run_id": run_id, "nfs.genotype_source": ref})
        except tracking.ArtifactError as e:
            raise InputError(f"{ref}: cannot download the genotype ({e})") from None
        genotype = Genotype.from_json(Path(path).read_text(), source=ref)
    tags[tracking.TAG_GENOTYPE] = genotype.fingerprint()
    return genotype, Lineage(tags)


def download_model_file(ref: str, root: str | Path, tracking_uri: str | None = None) -> str:
    """A local copy of the posenfs model file (``model.pt``) a registered model version holds."""
    uri = tracking.resolve_tracking_uri(root, tracking_uri)
    mv = tracking.get_model_version(uri, ref)
    tmp = tempfile.mkdtemp(prefix="posenfs-model-")
    try:
        return tracking.download_artifact(uri, mv.run_id, MODEL_FILE_ARTIFACT, tmp)
    except tracking.ArtifactError as e:
        raise InputError(f"{ref}: holds no posenfs model file ({e})") from None


def load_registered_model(
    ref: str, root: str | Path = "posenfs-runs", tracking_uri: str | None = None
) -> nn.Module:
    """The network a registered model version holds (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``), built by posenfs from its genotype, its weights read with
    ``torch.load(weights_only=True)``: loading runs no pickle. The store is ``tracking_uri``,
    else ``$MLFLOW_TRACKING_URI``, else ``root``'s (``tracking.resolve_tracking_uri``). The
    version's ``nfs.genotype_fp`` tag must match the genotype in the file."""
    from nfs_orchestrator.model_io import build_model, read_model_file

    uri = tracking.resolve_tracking_uri(root, tracking_uri)
    mv = tracking.get_model_version(uri, ref)
    with tempfile.TemporaryDirectory(prefix="posenfs-model-") as tmp:
        try:
            path = tracking.download_artifact(uri, mv.run_id, MODEL_FILE_ARTIFACT, tmp)
        except tracking.ArtifactError as e:
            raise InputError(f"{ref}: holds no posenfs model file ({e})") from None
        body = read_model_file(path)
    model = build_model(body, ref)
    genotype = getattr(model, "genotype", None)
    expected = mv.tags.get(tracking.TAG_GENOTYPE)
    if genotype is not None and expected and genotype.fingerprint() != expected:
        raise InputError(
            f"{ref}: the model file holds genotype {genotype.fingerprint()[:12]}, the version "
            f"is tagged {expected[:12]}"
        )
    return model.eval()
