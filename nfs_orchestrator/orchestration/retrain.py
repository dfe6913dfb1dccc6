"""``posenfs retrain``: train a genotype's derived network on Ray Train and register the result.

    resolve the genotype (registry alias / run artifact / file) and its lineage →
    refuse a genotype the retrain spec cannot train (before Ray starts) →
    get or create the retrain's MLflow run (experiment ``posenfs/retrain``, found by its id) →
    TorchTrainer(retrain_worker) with a deterministic run name: re-running the same command
    resumes from the last checkpoint (Ray Train V2 reloads its snapshot) →
    log the trained model (``mlflow.pytorch.log_model``) and register it as a new version of
    ``posenfs-<dataset>-retrained`` with the evaluation results and the lineage as tags.

Lineage: registry version → retrain run → genotype fingerprint → search trial run → campaign.
What it is not: the training loop (``retrain.loop``).
"""

from __future__ import annotations

import signal
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.orchestration import registry, tracking
from nfs_orchestrator.retrain.loop import MODEL_FILE, check_retrainable
from nfs_orchestrator.specs import RetrainSpec, replace

EXPERIMENT = "posenfs/retrain"
TAG_RETRAIN = "nfs.retrain_id"
MODEL_ARTIFACT = "posenfs/model.pt"  # the posenfs model file, beside the MLflow model


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


def _absolute(path: str | None, base: Path) -> str | None:
    if path is None or "://" in path:
        return path
    p = Path(path)
    return str(p if p.is_absolute() else (base / p).resolve())


def retrain_worker(config: dict[str, Any]) -> None:
    """Runs on every Train worker: the core retrain loop through a RayTrainRuntime."""
    from nfs_orchestrator.orchestration.ray_runtime import RayTrainRuntime
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
    import mlflow
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from nfs_orchestrator.model_io import load_model
    from nfs_orchestrator.orchestration.campaign import prepare_ray_environment
    from nfs_orchestrator.orchestration.trial import scaling_config, torch_backend

    root = Path(root).resolve()
    base = Path(base_dir or Path.cwd()).resolve()
    tracking_uri = registry.tracking_uri_for(root, spec.storage.mlflow_uri)
    genotype, lineage = registry.resolve_genotype(genotype_ref, tracking_uri)
    check_retrainable(spec, genotype)
    spec = replace(
        spec,
        data=replace(spec.data, root=_absolute(spec.data.root, base)),
        backbone=replace(spec.backbone, weights=_absolute(spec.backbone.weights, base)),
        init_weights=_absolute(spec.init_weights, base),
    )
    rid = retrain_id(spec, genotype)
    model_name = spec.model_name or f"posenfs-{spec.data.dataset}-retrained"

    tracking.scrub_environment()
    c = tracking.client(tracking_uri)
    artifacts = None  # a tracking server keeps its own artifact store
    if not spec.storage.mlflow_uri:  # the root's store: artifacts under the root, never ./mlruns
        artifacts = tracking.default_artifact_location(root, "retrain")
    exp_id = tracking.get_or_create_experiment(c, EXPERIMENT, artifacts)
    run_id = tracking.get_or_create_run(
        c, exp_id, run_name=rid, tags={tracking.TAG_KIND: "retrain", TAG_RETRAIN: rid}
    )
    for key, value in lineage.tags.items():
        c.set_tag(run_id, key, value)
    c.set_tag(run_id, tracking.TAG_STATUS, "running")
    c.log_dict(run_id, spec.to_dict(), "retrain.json")
    c.log_text(run_id, genotype.to_json(), tracking.GENOTYPE_ARTIFACT)

    prepare_ray_environment(address)
    import ray

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address)
        else:
            workers = spec.resources.workers_per_trial
            need = workers * spec.resources.cpus_per_worker + spec.resources.trial_cpus
            ray.init(num_cpus=max(2, int(need + 0.999)), include_dashboard=False)
    trainer = TorchTrainer(
        retrain_worker,
        train_loop_config={
            "spec": spec.to_dict(),
            "genotype": genotype.to_json(),
            "tracking_uri": tracking_uri,
            "run_id": run_id,
        },
        scaling_config=scaling_config(spec.resources),
        torch_config=TorchConfig(backend=torch_backend(spec.resources)),
        run_config=ray.train.RunConfig(
            name=rid,
            storage_path=spec.storage.ray_storage or str(root / "ray" / "retrain"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=spec.resources.checkpoints_to_keep
            ),
            failure_config=ray.train.FailureConfig(max_failures=1),
        ),
    )
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_stop(signum: int, frame: Any) -> None:
        tracking.end_run(c, run_id, "KILLED", label="killed")
        raise KeyboardInterrupt

    for s in previous:
        signal.signal(s, on_stop)
    try:
        result = trainer.fit()
        metrics = {
            k: float(v)
            for k, v in (result.metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        with result.checkpoint.as_directory() as d, tempfile.TemporaryDirectory() as tmp:
            model_file = Path(tmp) / "model.pt"
            model_file.write_bytes((Path(d) / MODEL_FILE).read_bytes())
            model = load_model(model_file)
            c.log_artifact(run_id, str(model_file), "posenfs")
        mlflow.set_tracking_uri(tracking_uri)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pytorch.log_model(
                model,
                name="model",
                serialization_format="pickle",  # pt2 would need tracing
            )
        version = _register(c, model_name, info.model_uri, run_id, rid, genotype, lineage, metrics)
    except KeyboardInterrupt:
        raise
    except Exception:
        tracking.end_run(c, run_id, "FAILED", error=traceback.format_exc())
        raise
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if started:
            ray.shutdown()
    tracking.end_run(c, run_id, "FINISHED")
    return RetrainResult(rid, run_id, model_name, version, metrics, tracking_uri)


def _register(c, name, model_uri, run_id, rid, genotype, lineage, metrics) -> str:
    """A new version of ``name`` for this retrain run (reused if the run registered one)."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(
            name, description="Derived PoseNFS networks retrained by posenfs."
        )
    existing = c.search_model_versions(f"name='{name}' and tags.`{TAG_RETRAIN}`='{rid}'")
    if existing:
        return str(existing[0].version)
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
    mv = c.create_model_version(name, source=model_uri, run_id=run_id, tags=tags)
    return str(mv.version)
