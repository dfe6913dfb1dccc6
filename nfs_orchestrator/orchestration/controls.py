"""``posenfs controls``: the champion retrained beside its controls, as one Ray Tune campaign.

What this is: NAS practice asks whether a searched architecture beats what costs nothing to get
(Li & Talwalkar 2019: random search with weight sharing is a strong baseline; Lindauer & Hutter's
checklist: same pipeline, same budget, several seeds). ``run_controls`` retrains, under one
retrain spec, the same pipeline and budget for every arm:

- ``champion``: the genotype the campaign's promotion rule selects (or a given reference);
- ``uniform``: the hand-designed part-based baseline, the fabric derived from the uniform α/β
  start (``baselines.uniform_genotype``);
- ``random-1`` … ``random-K``: random genotypes of matched size (``baselines.random_genotypes``);

each with seeds ``spec.seed``, ``spec.seed + 1``, …: the retrain specs of the arms differ only in
the genotype (``control_jobs``). The jobs run as Tune function trials, each retrain in its trial
actor (``trial.ActorRuntime``, checkpointed, resumable: the same command continues), logged as
child runs of the campaign's parent run (tags ``nfs.kind=control``, ``nfs.controls``,
``nfs.arm``, ``nfs.seed``). A set of controls is named by what it retrains (``controls_id``):
running controls again for another champion (e.g. ``--consensus``), other seeds or another spec
retrains a new set, never reporting an earlier set's results as its own.
The table (mean ± spread per arm, ``baselines.summarize``), the picture and one honest sentence
(``baselines.verdict``) go to ``<campaign folder>/controls.json`` and ``controls.png`` and to the
parent run under ``controls/``; ``posenfs compare`` shows them.

What it is not: the retraining loop (``retrain.loop``) or the genotypes' construction
(``baselines``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfs_orchestrator import baselines
from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.orchestration import ray_session, store, tracking
from nfs_orchestrator.specs import RetrainSpec, replace

CONTROLS_JSON = "controls.json"
CONTROLS_PNG = "controls.png"


@dataclass(frozen=True)
class ControlJob:
    """One retrain of the controls: an arm's genotype under the shared spec, one seed."""

    arm: str
    seed: int
    genotype: Genotype
    spec: RetrainSpec

    @property
    def name(self) -> str:
        return f"{self.arm}-s{self.seed}"


def controls_id(jobs: Sequence[ControlJob]) -> str:
    """A deterministic id of a set of control retrains: what each retrains (arm, seed, genotype
    fingerprint, retrain spec fingerprint). The same command resumes its set; another champion,
    other seeds, arms or spec start a set of their own instead of reusing the old one's results."""
    body = [(j.arm, j.seed, j.genotype.fingerprint(), j.spec.fingerprint()) for j in jobs]
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:8]


def control_jobs(
    spec: RetrainSpec, arms: Sequence[tuple[str, Genotype]], seeds: int
) -> list[ControlJob]:
    """Every (arm, seed) retrain: the spec with only its seed changed, the arm's genotype."""
    jobs = []
    for s in range(seeds):
        seeded = replace(spec, seed=spec.seed + s)
        jobs.extend(ControlJob(arm, seeded.seed, genotype, seeded) for arm, genotype in arms)
    return jobs


@dataclass(frozen=True)
class ControlsContext:
    """What every control trial needs besides its job."""

    campaign_id: str
    target: tracking.TrackingTarget
    storage: str  # where the control retrains checkpoint
    controls_id: str  # controls_id(jobs): names the set's experiment, checkpoints and runs


def control_trial(
    config: dict[str, Any], *, jobs: list[ControlJob], context: ControlsContext
) -> None:
    """A Tune function trial: the retrain of ``jobs[config["job"]]`` in this trial actor."""
    import torch

    from nfs_orchestrator.orchestration.trial import ActorRuntime
    from nfs_orchestrator.retrain.loop import run_retrain
    from nfs_orchestrator.runtime import RunCheckpoints

    job = jobs[int(config["job"])]
    run_name = f"{context.campaign_id}-control-{context.controls_id}-{job.name}"
    run_id = tracking.open_control(
        context.target,
        context.campaign_id,
        context.controls_id,
        job.arm,
        job.seed,
        job.genotype,
        run_name,
    )
    resources = job.spec.resources
    torch.set_num_threads(max(1, int(resources.cpus_per_worker)))
    runtime = ActorRuntime(
        RunCheckpoints(context.storage, run_name, resources.checkpoints_to_keep),
        torch.device("cuda" if resources.gpus_per_worker > 0 else "cpu"),
        tracking_uri=context.target.tracking_uri,
        run_id=run_id,
    )
    client = tracking.client(context.target.tracking_uri)
    try:
        run_retrain(job.spec, job.genotype, runtime)
        runtime.replay_final_report()  # a retrain that was already complete
    except Exception as e:
        tracking.end_run(client, run_id, "FAILED", error=repr(e))
        raise
    finally:
        runtime.close()
    tracking.end_run(client, run_id, "FINISHED")


@dataclass
class ControlsResult:
    campaign_id: str
    metric: str
    mode: str
    arms: list[dict[str, Any]]  # baselines.summarize
    verdict: str
    json_path: Path
    plot_path: Path
    wall_time_s: float


def run_controls(
    record: store.CampaignRecord,
    spec: RetrainSpec,
    champion: Genotype,
    *,
    random_arms: int = 2,
    seeds: int = 2,
    address: str | None = None,
    base_dir: str | Path | None = None,
) -> ControlsResult:
    """Retrains the champion and its controls (module docstring) and writes their table."""
    started = time.monotonic()
    primary = record.spec.objectives[0]
    base = Path(base_dir or record.base_dir)
    spec = replace(
        spec,
        data=replace(spec.data, root=ray_session.absolute(spec.data.root, base)),
        backbone=replace(spec.backbone, weights=ray_session.absolute(spec.backbone.weights, base)),
        init_weights=ray_session.absolute(spec.init_weights, base),
        resources=replace(spec.resources, workers_per_trial=1, worker_group="auto"),
    )
    arms = [("champion", champion), ("uniform", baselines.uniform_genotype(champion))]
    randoms = baselines.random_genotypes(champion, random_arms, seed=record.spec.seed)
    arms += [(f"random-{i + 1}", g) for i, g in enumerate(randoms)]
    jobs = control_jobs(spec, arms, seeds)
    set_id = controls_id(jobs)

    ray_session.prepare_ray_environment(address)
    import ray
    import ray.tune as tune

    budget = replace(record.spec.budget, num_trials=len(jobs), max_concurrent=len(jobs), seeds=1)
    plan, started_ray = ray_session.start_ray(spec.resources, budget, address)
    cid = record.campaign_id
    target = tracking.TrackingTarget(
        record.tracking_uri,
        tracking.get_or_create_experiment(
            tracking.client(record.tracking_uri), record.experiment_name
        ),
        record.parent_run_id or "",
    )
    storage = f"{record.ray_storage.rstrip('/')}/{cid}/controls"
    context = ControlsContext(cid, target, storage, set_id)
    trainable = tune.with_resources(
        tune.with_parameters(control_trial, jobs=jobs, context=context),
        ray_session.trial_actor_resources(spec.resources),
    )
    name = f"{cid}-controls-{set_id}"
    experiment = f"{record.ray_storage.rstrip('/')}/{name}"
    try:
        if tune.Tuner.can_restore(experiment):
            tuner = tune.Tuner.restore(
                experiment, trainable=trainable, resume_unfinished=True, resume_errored=True
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space={"job": tune.grid_search(list(range(len(jobs))))},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=plan.max_concurrent, reuse_actors=True
                ),
                run_config=tune.RunConfig(
                    name=name,
                    storage_path=record.ray_storage,
                    failure_config=tune.FailureConfig(max_failures=1),
                    verbose=1,
                ),
            )
        results = tuner.fit()
    finally:
        if started_ray:
            ray.shutdown()
    values: dict[str, list[float]] = {arm: [] for arm, _ in arms}
    rows = []
    for result in sorted(results, key=lambda r: int(r.config["job"])):  # by seed, then arm
        job = jobs[int(result.config["job"])]
        value = (result.metrics or {}).get(primary.metric)
        rows.append({"arm": job.arm, "seed": job.seed, primary.metric: value})
        if isinstance(value, (int, float)):
            values[job.arm].append(float(value))
    summary = baselines.summarize(values, primary.mode)
    sentence = baselines.verdict(summary, primary.metric, primary.mode)
    sizes = {arm: {"params": g.params, "macs": g.macs} for arm, g in arms}
    body = {
        "campaign_id": cid,
        "controls_id": set_id,
        "champion": champion_label(champion),
        "metric": primary.metric,
        "mode": primary.mode,
        "seeds": seeds,
        "arms": summary,
        "sizes": sizes,
        "runs": sorted(rows, key=lambda r: (r["arm"], r["seed"])),
        "verdict": sentence,
        "retrain": spec.to_dict(),
    }
    json_path = record.folder / CONTROLS_JSON
    json_path.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
    plot_path = plot_controls(body, record.folder / CONTROLS_PNG)
    if record.parent_run_id:
        tracking.log_files(record.tracking_uri, record.parent_run_id, [json_path, plot_path],
                           "controls")  # fmt: skip
    return ControlsResult(
        cid,
        primary.metric,
        primary.mode,
        summary,
        sentence,
        json_path,
        plot_path,
        time.monotonic() - started,
    )


def champion_label(champion: Genotype) -> str:
    """Which genotype the champion arm retrains: its fingerprint, and whether it is a trial's
    own or the consensus of several seeds (``confidence.consensus_genotype``)."""
    seeds = (champion.confidence or {}).get("consensus_of")
    what = f"consensus of {seeds} seeds" if seeds else "a trial's own"
    return f"genotype {champion.fingerprint()[:12]}, {what}"


def plot_controls(body: dict[str, Any], path: Path) -> Path:
    """Each arm's seeds as points, their mean ± spread as a bar with an error bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = body["arms"]
    width = 2.4 + 1.3 * len(arms)  # inches
    fig, ax = plt.subplots(figsize=(width, 4.2))
    for i, arm in enumerate(arms):
        color = "tab:orange" if arm["arm"] == "champion" else "tab:blue"
        if arm["mean"] is not None:
            ax.bar(i, arm["mean"], color=color, alpha=0.35, width=0.6)
            ax.errorbar(i, arm["mean"], yerr=arm["spread"], color="black", capsize=6)
        ax.scatter([i] * len(arm["values"]), arm["values"], color=color, zorder=3)
    ax.set_xticks(range(len(arms)), [a["arm"] for a in arms])
    ax.set_ylabel(f"{body['metric']} after retraining ({body['seeds']} seeds)")
    ax.set_title(f"{body['campaign_id']} · champion: {body.get('champion', '?')}", fontsize=9)
    fig.text(0.02, 0.01, _wrap(body["verdict"], int(width * 12)), fontsize=8, va="bottom")
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def format_controls(body: dict[str, Any]) -> str:
    """The controls table as ``posenfs compare`` prints it."""
    lines = [
        f"controls ({body['metric']}, {body['seeds']} seeds each, same retrain spec; champion: "
        f"{body.get('champion', 'not recorded')}):"
    ]
    for arm in body["arms"]:
        size = body.get("sizes", {}).get(arm["arm"], {})
        mean = "-" if arm["mean"] is None else f"{arm['mean']:.4f} ± {arm['spread']:.4f}"
        values = ", ".join(f"{v:.4f}" for v in arm["values"])
        params = size.get("params")
        lines.append(
            f"  {arm['arm']:<10} {mean:<18} [{values}]"
            + (f"  params {params / 1e6:.3f}M" if params else "")
        )
    lines.append(body["verdict"])
    return "\n".join(lines)
