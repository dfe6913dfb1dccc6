"""``posenfs retrain``: train a genotype's derived network on Ray Train and register the result.

    resolve the genotype (registry alias / run artifact / file) and its lineage →
    refuse a genotype the retrain spec cannot train (before Ray starts) →
    get or create the retrain's MLflow run (experiment ``posenfs/retrain``, found by its id) →
    TorchTrainer(retrain_worker) (``ray_session.torch_trainer``) with a deterministic run name:
    re-running the same command resumes from the last checkpoint (Ray Train V2 reloads its
    snapshot) →
    log the trained model as plain files (the run's folder ``posenfs/``: the posenfs model file,
    read back with ``weights_only=True``, and ``genotype.json``) and register that folder as a
    new version of ``posenfs-<dataset>-retrained`` with the evaluation results and the lineage
    as tags. No MLflow flavour and no pickle: ``model_refs.load_registered_model`` loads it.

Lineage: registry version → retrain run → genotype fingerprint → search trial run → campaign.
What it is not: the training loop (``retrain.loop``), the Ray session (``ray_session.py``) or
the MLflow calls (``tracking.py``).
"""

from __future__ import annotations

import json
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.orchestration import model_refs, ray_session, tracking
from nfs_orchestrator.retrain.loop import MODEL_FILE, check_retrainable
from nfs_orchestrator.specs import RetrainSpec, replace

EXPERIMENT = "posenfs/retrain"
TAG_RETRAIN = "nfs.retrain_id"


@dataclass(frozen=True)
class RetrainResult:
    retrain_id: str
    run_id: str
    model_name: str
    version: str
    metrics: dict[str, float]
    tracking_uri: str


def retrain_id(spec: RetrainSpec, genotype: Genotype) -> str:
    """Deterministic: the same spec and genotype always name the same run (and resume it)."""
    return f"{spec.name}-{spec.fingerprint()[:8]}-g{genotype.fingerprint()[:8]}"


def retrain_worker(config: dict[str, Any]) -> None:
    """Runs on every Train worker: the core retrain loop through a RayTrainRuntime."""
    from nfs_orchestrator.orchestration.train_worker import RayTrainRuntime
    from nfs_orchestrator.retrain.loop import run_retrain

    spec = RetrainSpec.from_dict(config["spec"], path="retrain")
    genotype = Genotype.from_json(config["genotype"])
    runtime = RayTrainRuntime(tracking_uri=config["tracking_uri"], run_id=config["run_id"])
    try:
        run_retrain(spec, genotype, runtime)
    finally:
        runtime.close()


def run_retrain_job(
    spec: RetrainSpec,
    genotype_ref: str,
    root: str | Path,
    address: str | None = None,
    base_dir: str | Path | None = None,
) -> RetrainResult:
    from nfs_orchestrator.model_io import load_model

    root = Path(root).resolve()
    base = Path(base_dir or Path.cwd()).resolve()
    tracking_uri = tracking.resolve_tracking_uri(root, spec.storage.mlflow_uri)
    genotype, lineage = model_refs.resolve_genotype(genotype_ref, tracking_uri)
    check_retrainable(spec, genotype)
    spec = replace(
        spec,
        data=replace(spec.data, root=ray_session.absolute(spec.data.root, base)),
        backbone=replace(spec.backbone, weights=ray_session.absolute(spec.backbone.weights, base)),
        init_weights=ray_session.absolute(spec.init_weights, base),
    )
    rid = retrain_id(spec, genotype)
    model_name = spec.model_name or f"posenfs-{spec.data.dataset}-retrained"

    tracking.scrub_environment()
    artifacts = None  # a tracking server keeps its own artifact store
    if not spec.storage.mlflow_uri:  # the root's store: artifacts under the root, never ./mlruns
        artifacts = tracking.default_artifact_location(root, "retrain")
    run_id = tracking.open_retrain(
        tracking_uri,
        EXPERIMENT,
        artifacts,
        run_name=rid,
        tags={tracking.TAG_KIND: "retrain", TAG_RETRAIN: rid},
        lineage=lineage.tags,
        texts={
            "retrain.json": json.dumps(spec.to_dict(), indent=2),
            tracking.GENOTYPE_ARTIFACT: genotype.to_json(),
        },
    )

    ray_session.prepare_ray_environment(address)
    import ray
    import ray.train
    from ray.train.torch import TorchConfig

    _, started = ray_session.start_ray(spec.resources, ray_session.ONE_JOB, address)
    trainer = ray_session.torch_trainer(  # a TorchTrainer without the Ray Data actor
        retrain_worker,
        # one plain dict across the process boundary, decoded once in retrain_worker
        train_loop_config={
            "spec": spec.to_dict(),
            "genotype": genotype.to_json(),
            "tracking_uri": tracking_uri,
            "run_id": run_id,
        },
        scaling_config=ray_session.scaling_config(spec.resources),
        torch_config=TorchConfig(backend=ray_session.torch_backend(spec.resources)),
        run_config=ray.train.RunConfig(
            name=rid,
            storage_path=spec.storage.ray_storage or str(root / "ray" / "retrain"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.resources.checkpoints_to_keep
            ),
            failure_config=ray.train.FailureConfig(max_failures=1),
        ),
    )

    def on_stop(signum: int) -> None:
        tracking.end_run(tracking.client(tracking_uri), run_id, "KILLED", label="killed")
        raise KeyboardInterrupt

    try:
        with ray_session.StopSignals(on_stop):
            result = trainer.fit()
        metrics = {
            k: float(v)
            for k, v in (result.metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        with result.checkpoint.as_directory() as d, tempfile.TemporaryDirectory() as tmp:
            model_file = Path(tmp) / Path(model_refs.MODEL_FILE_ARTIFACT).name
            model_file.write_bytes((Path(d) / MODEL_FILE).read_bytes())
            load_model(model_file)  # loads as a user will (weights_only) before it is logged
            source = tracking.log_model_folder(
                tracking_uri,
                run_id,
                model_refs.MODEL_FOLDER,
                [model_file],
                {tracking.GENOTYPE_ARTIFACT: genotype.to_json()},
            )
        version = _register(
            tracking_uri, model_name, source, run_id, rid, genotype, lineage, metrics
        )
    except KeyboardInterrupt:
        raise
    except Exception:
        tracking.end_run(
            tracking.client(tracking_uri), run_id, "FAILED", error=traceback.format_exc()
        )
        raise
    finally:
        if started:
            ray.shutdown()
    tracking.end_run(tracking.client(tracking_uri), run_id, "FINISHED")
    return RetrainResult(rid, run_id, model_name, version, metrics, tracking_uri)


def _register(uri, name, model_uri, run_id, rid, genotype, lineage, metrics) -> str:
    """A new version of ``name`` for this retrain run (reused if the run registered one)."""
    tracking.ensure_registered_model(uri, name, "Derived PoseNFS networks retrained by posenfs.")
    existing = tracking.find_model_version(uri, name, {TAG_RETRAIN: rid})
    if existing:
        return existing
    tags = dict(lineage.tags)
    tags.update(
        {
            TAG_RETRAIN: rid,
            "nfs.retrain_run_id": run_id,
            tracking.TAG_GENOTYPE: genotype.fingerprint(),
        }
    )
    for key in ("val_ap", "val_ap50", "val_pckh", "val_loss"):
        if key in metrics:
            tags[f"nfs.eval.{key}"] = f"{metrics[key]:.6f}"
    return tracking.create_model_version(uri, name, model_uri, run_id, tags)
