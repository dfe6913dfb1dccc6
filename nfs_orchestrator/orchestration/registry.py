"""Reading what the MLflow store holds back: genotypes and models by URI.

``resolve_genotype`` accepts what ``posenfs retrain --genotype`` takes:

    models:/NAME@ALIAS  or  models:/NAME/VERSION   a promoted genotype (its version's artifacts)
    runs:/RUN_ID/genotype.json                     a trial run's latest genotype
    a path                                         a genotype.json file

and returns the genotype with its lineage (model version, source run, campaign), so retraining
can tag its run and registered model with where the architecture came from.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from nfs_orchestrator.errors import InputError
from nfs_orchestrator.genotype import Genotype, read_genotype
from nfs_orchestrator.orchestration import tracking


def tracking_uri_for(root: str | Path, explicit: str | None = None) -> str:
    """``explicit``, else ``$MLFLOW_TRACKING_URI``, else the root's SQLite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or tracking.default_tracking_uri(root)


@dataclass(frozen=True)
class Lineage:
    """Where a genotype came from: tags to carry forward (all strings)."""

    tags: dict[str, str] = field(default_factory=dict)


def _model_version(c, uri: str):
    from mlflow.exceptions import MlflowException

    body = uri.removeprefix("models:/")
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            return c.get_model_version_by_alias(name, alias)
        name, version = body.rsplit("/", 1)
        return c.get_model_version(name, version)
    except (MlflowException, ValueError) as e:
        raise InputError(
            f"{uri}: no such registered model version ({str(e).splitlines()[0]})"
        ) from None


def resolve_genotype(ref: str, tracking_uri: str) -> tuple[Genotype, Lineage]:
    if not ref.startswith(("models:/", "runs:/")):
        return read_genotype(ref), Lineage({"nfs.genotype_source": str(Path(ref).resolve())})
    from mlflow.exceptions import MlflowException

    c = tracking.client(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="posenfs-genotype-") as tmp:
        try:
            if ref.startswith("models:/"):
                mv = _model_version(c, ref)
                path = c.download_artifacts(mv.run_id, "promotion/genotype.json", tmp)
                tags = {k: v for k, v in mv.tags.items() if k.startswith("nfs.")}
                tags.update(
                    {
                        "nfs.promoted_model": mv.name,
                        "nfs.promoted_version": str(mv.version),
                        "nfs.genotype_source": ref,
                    }
                )
            else:
                run_id, _, artifact = ref.removeprefix("runs:/").partition("/")
                path = c.download_artifacts(run_id, artifact or "genotype.json", tmp)
                run = c.get_run(run_id)
                tags = {
                    k: v
                    for k, v in run.data.tags.items()
                    if k in (tracking.TAG_CAMPAIGN, tracking.TAG_TRIAL)
                }
                tags.update({"nfs.source_run_id": run_id, "nfs.genotype_source": ref})
        except MlflowException as e:
            raise InputError(
                f"{ref}: cannot download the genotype ({str(e).splitlines()[0]})"
            ) from None
        genotype = Genotype.from_json(Path(path).read_text(), source=ref)
    tags[tracking.TAG_GENOTYPE] = genotype.fingerprint()
    return genotype, Lineage(tags)


def download_model_file(ref: str, root: str | Path, tracking_uri: str | None = None) -> str:
    """A local copy of the posenfs model file (``model.pt``) a registered model version holds."""
    from mlflow.exceptions import MlflowException

    c = tracking.client(tracking_uri_for(root, tracking_uri))
    mv = _model_version(c, ref)
    tmp = tempfile.mkdtemp(prefix="posenfs-model-")
    try:
        path = c.download_artifacts(mv.run_id, "posenfs/model.pt", tmp)
    except MlflowException as e:
        raise InputError(f"{ref}: holds no posenfs model file ({str(e).splitlines()[0]})") from None
    return path
