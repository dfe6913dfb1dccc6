"""Every MLflow call of posenfs: experiments, runs, tags, params, metrics, artifacts, and the
Model Registry.

What this is: a thin layer over ``mlflow.MlflowClient``. The fluent API (``mlflow.start_run``),
whose active-run state and ``MLFLOW_RUN_ID`` override (mlflow#15713) do not mix with Ray
processes, is never used; nor are MLflow's model flavours: a registered model version's source
is a folder of plain artifacts (``log_model_folder``: a genotype JSON, a posenfs model file that
loads with ``torch.load(weights_only=True)``), so loading one never runs pickle.

Which store (``resolve_tracking_uri``, the one rule, for campaigns, promote, retrain and
``evaluate``): the spec's ``storage.mlflow_uri`` if set, else ``$MLFLOW_TRACKING_URI`` if set,
else ``sqlite:///<root>/mlflow.db``. A campaign keeps the store it started with: its record
(``campaign.json``) names it, and ``resume``, ``status``, ``compare`` and ``promote`` read it
from there. One experiment per campaign (``posenfs/<campaign_id>``); in it one parent run per
campaign and one child run per trial, each found again by its tags, so a resumed or retried
campaign reuses its runs instead of duplicating them (``get_or_create_run``). Rank 0 of a trial
logs each epoch's metrics (step = epoch), ``genotype.json`` (latest, plus ``genotype/epoch_NNNN``),
the fabric drawing and the alpha/beta plot, and tags the run with the genotype fingerprint.
Runs end FINISHED, FAILED (with the error as a tag) or KILLED, never left RUNNING by a clean stop.

Default store (embedded campaigns): ``sqlite:///<root>/mlflow.db``, artifacts under
``<root>/mlartifacts/<campaign_id>``. What it is not: the decision of *when* to log (that is
``train_worker.TrialRuntime``, ``trial.py``, the campaign's ``tune_callback.py``, ``promote.py``
and ``retrain.py``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run
from mlflow.exceptions import MlflowException

from nfs_orchestrator.campaign_spec import CampaignSpec
from nfs_orchestrator.errors import InputError
from nfs_orchestrator.specs import TrialSpec

TAG_KIND = "nfs.kind"  # "campaign" | "trial" | "control" | "retrain"
TAG_CAMPAIGN = "nfs.campaign_id"
TAG_TRIAL = "nfs.trial_id"
TAG_SPEC_FP = "nfs.spec_fp"  # campaign or trial spec fingerprint
TAG_GENOTYPE = "nfs.genotype_fp"  # fingerprint of the latest genotype.json
TAG_EPOCH = "nfs.epoch"  # latest reported epoch (0-based)
TAG_STATUS = "nfs.status"  # running | finished | early_stopped | failed | killed
TAG_ERROR = "nfs.error"
TAG_UNDECIDED = "nfs.undecided"  # "true" while the latest genotype is undecided (confidence.py)
TAG_PREEMPTED = "nfs.preempted"  # "true" on trial runs ended KILLED by a SIGTERM / pre-emption
TAG_LOST = "nfs.lost"  # "true" on trial runs Tune never recorded (campaign.finish_campaign)
TAG_ARM = "nfs.arm"  # control runs: champion | uniform | random-N
TAG_CONTROLS = "nfs.controls"  # control runs: the set they belong to (controls.controls_id)
TAG_SEED = "nfs.seed"
TAG_PARENT = "mlflow.parentRunId"

GENOTYPE_ARTIFACT = "genotype.json"
LEDGER_ARTIFACT = "ledger.parquet"


# --------------------------------------------------------------------------------------------
# Stores, experiments and runs
# --------------------------------------------------------------------------------------------


def resolve_tracking_uri(root: str | Path, explicit: str | None = None) -> str:
    """The store to use: ``explicit`` (a spec's ``storage.mlflow_uri``), else
    ``$MLFLOW_TRACKING_URI``, else the root's SQLite store."""
    return explicit or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(root)


def default_tracking_uri(root: str | Path) -> str:
    """``sqlite:////abs/root/mlflow.db`` (SQLite needs an absolute path; never a ``file:`` store,
    which MLflow ≥ 3.13 refuses)."""
    return "sqlite:///" + str(Path(root).resolve() / "mlflow.db")


def default_artifact_location(root: str | Path, campaign_id: str) -> str:
    return (Path(root).resolve() / "mlartifacts" / campaign_id).as_uri()


def experiment_name(campaign_id: str) -> str:
    return f"posenfs/{campaign_id}"


def scrub_environment() -> None:
    """Drops ``MLFLOW_RUN_ID`` from this process (and the Ray workers it starts): a stray id
    would redirect fluent logging into an unrelated run (mlflow#15713)."""
    if os.environ.pop("MLFLOW_RUN_ID", None):
        print("posenfs: ignoring MLFLOW_RUN_ID from the environment", file=sys.stderr)


@functools.lru_cache(maxsize=8)
def client(tracking_uri: str) -> MlflowClient:
    """One client per store and process."""
    return MlflowClient(tracking_uri=tracking_uri)


def get_or_create_experiment(
    c: MlflowClient, name: str, artifact_location: str | None = None
) -> str:
    """The id of experiment ``name``, created (with ``artifact_location``) if absent."""
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            c.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created meanwhile by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def _filter(tags: Mapping[str, str]) -> str:
    return " and ".join(f"tags.`{k}` = '{v}'" for k, v in sorted(tags.items()))


def find_runs(c: MlflowClient, experiment_id: str, tags: Mapping[str, str]) -> list[Run]:
    """Runs of the experiment carrying all ``tags``, oldest first."""
    return list(
        c.search_runs(
            [experiment_id], _filter(tags), max_results=1000, order_by=["attributes.start_time ASC"]
        )
    )


def get_or_create_run(
    c: MlflowClient,
    experiment_id: str,
    *,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
) -> str:
    """The id of the run carrying ``tags``: found by them, created once; a run that had ended
    (a resumed or retried trial) is set RUNNING again."""
    runs = find_runs(c, experiment_id, tags)
    if not runs:
        all_tags = dict(tags)
        if parent_run_id:
            all_tags[TAG_PARENT] = parent_run_id
        run = c.create_run(experiment_id, run_name=run_name, tags=all_tags)
        return run.info.run_id
    run = runs[0]
    if run.info.status != "RUNNING":
        c.update_run(run.info.run_id, status="RUNNING")
    return run.info.run_id


def end_run(
    c: MlflowClient,
    run_id: str,
    status: str,
    *,
    label: str | None = None,
    error: str = "",
    tags: Mapping[str, str] | None = None,
) -> None:
    """Ends a run as FINISHED, FAILED or KILLED; ``label`` (e.g. early_stopped) goes to the
    ``nfs.status`` tag, ``error`` (its last 5000 characters) to ``nfs.error``, ``tags`` (e.g.
    ``nfs.preempted``) are set first."""
    for key, value in (tags or {}).items():
        c.set_tag(run_id, key, value)
    c.set_tag(run_id, TAG_STATUS, label or status.lower())
    if error:
        c.set_tag(run_id, TAG_ERROR, error[-5000:])
    c.set_terminated(run_id, status)


# --------------------------------------------------------------------------------------------
# Campaign and trial runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrackingTarget:
    """Where a campaign logs: crosses to Tune drivers and Train workers as a plain dict."""

    tracking_uri: str
    experiment_id: str
    parent_run_id: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> TrackingTarget:
        return cls(**data)


def open_campaign(
    tracking_uri: str, campaign: CampaignSpec, artifact_location: str | None = None
) -> TrackingTarget:
    """Gets or creates the campaign's experiment and parent run, marks it running and logs the
    campaign's params and resolved spec (idempotent)."""
    c = client(tracking_uri)
    cid = campaign.campaign_id
    exp_id = get_or_create_experiment(c, experiment_name(cid), artifact_location)
    tags = {TAG_KIND: "campaign", TAG_CAMPAIGN: cid}
    run_id = get_or_create_run(c, exp_id, run_name=cid, tags=tags)
    c.set_tag(run_id, TAG_SPEC_FP, campaign.fingerprint())
    c.set_tag(run_id, TAG_STATUS, "running")
    params = {
        "campaign_id": cid,
        "dataset": campaign.data.dataset,
        "fabric": campaign.fabric,
        "grouping": campaign.grouping,
        "backbone": campaign.backbone.name,
        "search_mode": campaign.search.mode,
        "epochs": campaign.search.epochs,
        "num_trials": campaign.budget.num_trials,
        "objectives": ",".join(f"{o.metric}:{o.mode}" for o in campaign.objectives),
        "outer": ",".join(campaign.outer) or "-",
        "seed": campaign.seed,
    }
    c.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
    c.log_dict(run_id, campaign.to_dict(), "campaign.json")
    return TrackingTarget(tracking_uri, exp_id, run_id)


def trial_params(trial: TrialSpec) -> dict[str, str]:
    """What a trial run shows as params: the grouping, fabric geometry, op set, learning rates,
    and every outer choice as ``outer.<key>``."""
    s = trial.search
    params: dict[str, Any] = {
        "grouping": trial.grouping.name,
        "num_parts": trial.grouping.num_parts,
        "fabric": trial.fabric.name,
        "depth": trial.fabric.depth,
        "cut": trial.fabric.cut,
        "scales": ",".join(str(v) for v in trial.fabric.scales),
        "channel_factor": trial.fabric.channel_factor,
        "ops": ",".join(trial.fabric.ops),
        "search_mode": s.mode,
        "epochs": s.epochs,
        "batch_size": s.batch_size,
        "weight_optimizer": s.weight_optimizer.name,
        "weight_lr": s.weight_optimizer.lr,
        "arch_optimizer": s.arch_optimizer.name,
        "arch_lr": s.arch_optimizer.lr,
        "partial_channels": s.partial_channels,
        "sampling": s.sampling,
        "weight_mixture": s.weight_mixture,
        "backbone": trial.backbone.name,
        "dataset": trial.data.dataset,
        "input_size": "x".join(str(v) for v in trial.data.input_size),
        "seed": trial.seed,
    }
    for key, value in sorted(trial.params.items()):
        params[f"outer.{key}"] = json.dumps(value) if not isinstance(value, str) else value
    return {k: str(v) for k, v in params.items()}


def open_trial(
    target: TrackingTarget, campaign_id: str, trial_id: str, trial: TrialSpec, run_name: str
) -> str:
    """Gets or creates the trial's child run (found by campaign + trial id), marks it running and
    logs its params (the same values on every resume, so MLflow accepts them again)."""
    c = client(target.tracking_uri)
    tags = {TAG_KIND: "trial", TAG_CAMPAIGN: campaign_id, TAG_TRIAL: trial_id}
    run_id = get_or_create_run(
        c, target.experiment_id, run_name=run_name, tags=tags, parent_run_id=target.parent_run_id
    )
    c.set_tag(run_id, TAG_SPEC_FP, trial.fingerprint())
    c.set_tag(run_id, TAG_STATUS, "running")
    c.log_batch(run_id, params=[Param(k, v) for k, v in trial_params(trial).items()])
    return run_id


def open_control(
    target: TrackingTarget,
    campaign_id: str,
    controls_id: str,
    arm: str,
    seed: int,
    genotype: Any,
    run_name: str,
) -> str:
    """Gets or creates the child run of one control retrain (found by campaign, set of controls,
    arm and seed), marks it running and logs its arm, seed and genotype."""
    c = client(target.tracking_uri)
    tags = {TAG_KIND: "control", TAG_CAMPAIGN: campaign_id, TAG_CONTROLS: controls_id}
    tags |= {TAG_ARM: arm, TAG_SEED: str(seed)}
    run_id = get_or_create_run(
        c, target.experiment_id, run_name=run_name, tags=tags, parent_run_id=target.parent_run_id
    )
    c.set_tag(run_id, TAG_GENOTYPE, genotype.fingerprint())
    c.set_tag(run_id, TAG_STATUS, "running")
    params = {"arm": arm, "seed": str(seed), "params_derived": str(genotype.params)}
    c.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    log_texts(target.tracking_uri, run_id, {GENOTYPE_ARTIFACT: genotype.to_json()})
    return run_id


def find_trial_run(target: TrackingTarget, campaign_id: str, trial_id: str) -> str | None:
    """The child run of a trial, or None if its driver has not created it yet."""
    tags = {TAG_KIND: "trial", TAG_CAMPAIGN: campaign_id, TAG_TRIAL: trial_id}
    runs = find_runs(client(target.tracking_uri), target.experiment_id, tags)
    return runs[0].info.run_id if runs else None


def genotype_fingerprint(text: str) -> str:
    """The sha256 fingerprint of a ``genotype.json`` text, as the genotype module defines it."""
    from nfs_orchestrator.genotype import Genotype

    return Genotype.from_json(text).fingerprint()


def epoch_genotype(epoch: int) -> str:
    """The artifact path of the genotype a trial run derived at ``epoch``."""
    return f"genotype/epoch_{epoch:04d}.json"


def log_epoch(
    tracking_uri: str,
    run_id: str,
    metrics: Mapping[str, float],
    artifacts: Mapping[str, str | bytes] | None = None,
) -> str | None:
    """Logs one reported epoch into a trial run: numeric metrics at step = epoch, every artifact
    at the run's top level (overwritten: the latest), ``genotype.json`` also as
    ``genotype/epoch_NNNN.json``, and the ``nfs.genotype_fp``/``nfs.epoch`` tags. Returns the
    genotype fingerprint (None without a genotype)."""
    c = client(tracking_uri)
    epoch = int(metrics["epoch"])
    now = int(time.time() * 1000)
    batch = [
        Metric(k, float(v), now, epoch)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    c.log_batch(run_id, metrics=batch)
    fingerprint = None
    if artifacts:
        with tempfile.TemporaryDirectory(prefix="posenfs-art-") as tmp:
            for name, content in artifacts.items():
                path = Path(tmp) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(content.encode() if isinstance(content, str) else content)
            genotype = artifacts.get(GENOTYPE_ARTIFACT)
            if genotype is not None:
                text = genotype if isinstance(genotype, str) else genotype.decode()
                fingerprint = genotype_fingerprint(text)
                snapshot = Path(tmp) / epoch_genotype(epoch)
                snapshot.parent.mkdir(parents=True, exist_ok=True)
                snapshot.write_text(text)
            c.log_artifacts(run_id, tmp)
    c.set_tag(run_id, TAG_EPOCH, str(epoch))
    if "undecided" in metrics:  # the latest genotype's verdict (confidence.is_undecided)
        c.set_tag(run_id, TAG_UNDECIDED, "true" if metrics["undecided"] else "false")
    if fingerprint:
        c.set_tag(run_id, TAG_GENOTYPE, fingerprint)
    return fingerprint


def end_open_trial_runs(
    target: TrackingTarget, campaign_id: str, tags: Mapping[str, str] | None = None
) -> list[str]:
    """Ends every trial run of the campaign still RUNNING as KILLED, with ``tags``; returns
    their ids."""
    c = client(target.tracking_uri)
    ended = []
    for run in find_runs(c, target.experiment_id, {TAG_KIND: "trial", TAG_CAMPAIGN: campaign_id}):
        if run.info.status == "RUNNING":
            end_run(c, run.info.run_id, "KILLED", tags=tags)
            ended.append(run.info.run_id)
    return ended


def log_ledger(target: TrackingTarget, path: str | Path) -> None:
    """Uploads the campaign ledger to the parent run (overwriting the previous copy)."""
    client(target.tracking_uri).log_artifact(target.parent_run_id, str(path))


def log_files(
    tracking_uri: str, run_id: str, paths: list[str | Path], artifact_path: str | None = None
) -> None:
    """Uploads files into a run's artifacts (under ``artifact_path``)."""
    c = client(tracking_uri)
    for path in paths:
        c.log_artifact(run_id, str(path), artifact_path)


def log_texts(
    tracking_uri: str, run_id: str, texts: Mapping[str, str], artifact_path: str | None = None
) -> None:
    """Writes ``{name: text}`` as files into a run's artifacts (under ``artifact_path``)."""
    with tempfile.TemporaryDirectory(prefix="posenfs-art-") as tmp:
        for name, text in texts.items():
            (Path(tmp) / name).write_text(text)
        client(tracking_uri).log_artifacts(run_id, tmp, artifact_path)


class ArtifactError(InputError):
    """An artifact could not be read from the store (the message is MLflow's first line)."""


def download_artifact(tracking_uri: str, run_id: str, path: str, dst: str | Path) -> str:
    """A local copy of the artifact ``path`` of a run, under ``dst``. MLflow's progress bar is
    off unless the environment turns it on: posenfs reads small files, a bar per file is noise."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        return client(tracking_uri).download_artifacts(run_id, path, str(dst))
    except MlflowException as e:
        raise ArtifactError(str(e).splitlines()[0]) from None


def latest_genotypes(tracking_uri: str, rows: list[Mapping[str, Any]]) -> list[Any]:
    """The latest ``genotype.json`` of each ledger row's trial run, as ``Genotype``s, in order;
    ``ArtifactError`` when one cannot be read or is not the genotype the ledger recorded
    (``genotype_fp``: the run moved on since the ledger was written)."""
    from nfs_orchestrator.genotype import Genotype

    out = []
    with tempfile.TemporaryDirectory(prefix="posenfs-genotypes-") as tmp:
        for i, row in enumerate(rows):
            path = download_artifact(tracking_uri, row["run_id"], GENOTYPE_ARTIFACT, f"{tmp}/{i}")
            source = f"runs:/{row['run_id']}/{GENOTYPE_ARTIFACT}"
            genotype = Genotype.from_json(Path(path).read_text(), source=source)
            if row.get("genotype_fp") and genotype.fingerprint() != row["genotype_fp"]:
                raise ArtifactError(
                    f"{source} has fingerprint {genotype.fingerprint()[:12]}, the ledger says "
                    f"{row['genotype_fp'][:12]} (trial {row.get('trial_id')}): the run moved on "
                    f"since the ledger was written"
                )
            out.append(genotype)
    return out


def run_tags(tracking_uri: str, run_id: str) -> dict[str, str]:
    """The tags of a run."""
    try:
        return dict(client(tracking_uri).get_run(run_id).data.tags)
    except MlflowException as e:
        raise ArtifactError(str(e).splitlines()[0]) from None


# --------------------------------------------------------------------------------------------
# Retrain runs
# --------------------------------------------------------------------------------------------


def open_retrain(
    tracking_uri: str,
    experiment: str,
    artifact_location: str | None,
    *,
    run_name: str,
    tags: Mapping[str, str],
    lineage: Mapping[str, str],
    texts: Mapping[str, str],
) -> str:
    """Gets or creates a retrain run (found by ``tags``), tags it with its lineage, marks it
    running and writes ``texts`` (spec, genotype) as artifacts. Returns the run id."""
    c = client(tracking_uri)
    exp_id = get_or_create_experiment(c, experiment, artifact_location)
    run_id = get_or_create_run(c, exp_id, run_name=run_name, tags=tags)
    for key, value in lineage.items():
        c.set_tag(run_id, key, value)
    c.set_tag(run_id, TAG_STATUS, "running")
    log_texts(tracking_uri, run_id, texts)
    return run_id


def log_model_folder(
    tracking_uri: str,
    run_id: str,
    artifact_path: str,
    files: list[str | Path],
    texts: Mapping[str, str],
) -> str:
    """Uploads ``files`` and ``{name: text}`` into the run's folder ``artifact_path`` and
    returns its URI (``runs:/<run_id>/<artifact_path>``), the source of a model version."""
    log_files(tracking_uri, run_id, files, artifact_path)
    log_texts(tracking_uri, run_id, texts, artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


# --------------------------------------------------------------------------------------------
# Model Registry
# --------------------------------------------------------------------------------------------


def ensure_registered_model(tracking_uri: str, name: str, description: str) -> None:
    """Creates the registered model ``name`` unless it exists."""
    c = client(tracking_uri)
    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name, description=description)
        except MlflowException:  # created meanwhile by another process
            c.get_registered_model(name)


def find_model_version(tracking_uri: str, name: str, tags: Mapping[str, str]) -> str | None:
    """The version of ``name`` carrying all ``tags``, or None."""
    condition = " and ".join([f"name='{name}'"] + [f"tags.`{k}`='{v}'" for k, v in tags.items()])
    found = client(tracking_uri).search_model_versions(condition)
    return str(found[0].version) if found else None


def create_model_version(
    tracking_uri: str, name: str, source: str, run_id: str, tags: Mapping[str, str]
) -> str:
    """A new version of ``name`` from ``source`` (an artifact URI of ``run_id``)."""
    mv = client(tracking_uri).create_model_version(
        name, source=source, run_id=run_id, tags=dict(tags)
    )
    return str(mv.version)


@dataclass(frozen=True)
class ModelVersion:
    """What posenfs reads of a registered model version."""

    name: str
    version: str
    run_id: str
    tags: dict[str, str]
    folder: str = ""  # its artifact folder in that run (source runs:/<run>/<folder>), if so


def get_model_version(tracking_uri: str, uri: str) -> ModelVersion:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``; a one-line InputError if absent."""
    c = client(tracking_uri)
    body = uri.removeprefix("models:/")
    try:
        if "@" in body:
            name, alias = body.split("@", 1)
            mv = c.get_model_version_by_alias(name, alias)
        else:
            name, version = body.rsplit("/", 1)
            mv = c.get_model_version(name, version)
    except (MlflowException, ValueError) as e:
        raise InputError(
            f"{uri}: no such registered model version ({str(e).splitlines()[0]})"
        ) from None
    prefix = f"runs:/{mv.run_id}/"
    source = mv.source or ""
    folder = source.removeprefix(prefix) if source.startswith(prefix) else ""
    return ModelVersion(mv.name, str(mv.version), mv.run_id, dict(mv.tags), folder)


def alias_holder(tracking_uri: str, name: str, alias: str) -> str | None:
    """The version ``alias`` points at, or None."""
    try:
        return str(client(tracking_uri).get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def move_alias(
    tracking_uri: str, name: str, alias: str, version: str, previous: str | None, tag: str
) -> None:
    """Points ``alias`` at ``version``: the version is tagged (``tag``) with who held the alias
    before, and the move is appended to the registered model's alias history (the last 50;
    MLflow keeps none) in its tag ``nfs.alias_history.<alias>``."""
    c = client(tracking_uri)
    c.set_model_version_tag(name, version, tag, previous or "none")
    c.set_registered_model_alias(name, alias, version)
    key = f"nfs.alias_history.{alias}"
    history = json.loads(c.get_registered_model(name).tags.get(key, "[]"))
    history.append({"version": version, "previous": previous, "time": int(time.time())})
    c.set_registered_model_tag(name, key, json.dumps(history[-50:]))


def alias_history(tracking_uri: str, name: str, alias: str) -> list[dict[str, Any]]:
    """The recorded moves of ``alias`` (see ``move_alias``), oldest first."""
    model = client(tracking_uri).get_registered_model(name)
    return json.loads(model.tags.get(f"nfs.alias_history.{alias}", "[]"))
