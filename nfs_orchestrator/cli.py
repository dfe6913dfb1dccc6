"""The ``posenfs`` command line: each command parses, loads a spec, makes one library call and
prints one summary. Errors a user can cause (``PosenfsError``) print one line and exit 2; a
traceback only with ``--debug``.

Heavy imports (torch, ray, mlflow) happen inside commands, so ``posenfs --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys

import click

from nfs_orchestrator.errors import PosenfsError

DEFAULT_ROOT = "./posenfs-runs"


class PosenfsGroup(click.Group):
    """Turns PosenfsError into one line on stderr and exit status 2."""

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except PosenfsError as e:
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"posenfs: error: {e}", err=True)
            sys.exit(2)


def root_option(f):
    return click.option(
        "--root",
        type=click.Path(file_okay=False),
        default=lambda: os.environ.get("POSENFS_ROOT", DEFAULT_ROOT),
        show_default="./posenfs-runs or $POSENFS_ROOT",
        help="Folder holding Ray storage, the MLflow store and the campaign ledgers.",
    )(f)


def consensus_option(f):
    return click.option(
        "--consensus",
        is_flag=True,
        help="Take the consensus genotype of the selected trial's configuration (mean α/β "
        "weights of its seeds; needs budget.seeds ≥ 2) instead of the trial's own.",
    )(f)


@click.group(cls=PosenfsGroup)
@click.option("--debug", is_flag=True, help="Show tracebacks.")
def main(debug: bool) -> None:
    """posenfs: Pose Neural Fabrics Search campaigns on Ray, tracked in MLflow."""


# ------------------------------------------------------------------------------------------
# search spaces and genotypes
# ------------------------------------------------------------------------------------------


@main.group()
def space() -> None:
    """Inspect fabric search spaces."""


@space.command("summary")
@click.argument("fabric")
@click.option("--grouping", required=True, help="Grouping file or name (e.g. mpii-p5).")
@click.option("--backbone", default="tiny", show_default=True)
@click.option("--input", "input_size", default="256x256", show_default=True, help="WxH")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def space_summary(fabric: str, grouping: str, backbone: str, input_size: str, as_json: bool):
    """Params, arch params and MACs of the supernet as it runs (torch.utils.flop_counter)."""
    from nfs_orchestrator.keypoints import load_grouping
    from nfs_orchestrator.nn.counting import supernet_summary
    from nfs_orchestrator.specs import load_fabric

    w, h = parse_size(input_size)
    summary = supernet_summary(load_fabric(fabric), load_grouping(grouping), backbone, (w, h))
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
        return
    click.echo(f"fabric {fabric}, grouping {grouping}, backbone {backbone}, input {w}x{h}")
    click.echo(f"  params       {summary['params']:>14,}")
    click.echo(f"  arch params  {summary['arch_params']:>14,}")
    click.echo(f"  MACs         {summary['macs']:>14,}  ({summary['macs'] / 1e9:.2f} G)")


@main.group()
def genotype() -> None:
    """Read or render a derived genotype."""


@genotype.command("show")
@click.argument("source")
def genotype_show(source: str) -> None:
    """Print a genotype file as a table, with the confidence of its decisions."""
    from nfs_orchestrator.confidence import format_confidence
    from nfs_orchestrator.genotype import format_genotype, read_genotype

    genotype = read_genotype(source)
    click.echo(format_genotype(genotype))
    click.echo(format_confidence(genotype))


@genotype.command("draw")
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
def genotype_draw(source: str, output: str) -> None:
    """Draw the derived fabrics (one panel per part) to an .svg or .png file."""
    from nfs_orchestrator.drawing import draw_genotype
    from nfs_orchestrator.genotype import read_genotype

    path = draw_genotype(read_genotype(source), output)
    click.echo(f"wrote {path}")


@main.group()
def reference() -> None:
    """Work with checkpoints of the reference PoseNFS code."""


@reference.command("import")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--fabric", required=True, help="Fabric space file or name.")
@click.option("--grouping", required=True, help="Grouping file or name.")
@click.option("--backbone", required=True)
@click.option("--input", "input_size", required=True, help="WxH of the network input.")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--check", is_flag=True, help="Compare with the output stored in CHECKPOINT.")
def reference_import(checkpoint, fabric, grouping, backbone, input_size, output, check):
    """Map a reference state dict onto posenfs modules and write a posenfs checkpoint."""
    from nfs_orchestrator.keypoints import load_grouping
    from nfs_orchestrator.reference import import_reference
    from nfs_orchestrator.specs import load_fabric

    result = import_reference(
        checkpoint,
        load_fabric(fabric),
        load_grouping(grouping),
        backbone,
        parse_size(input_size),
        output,
        check,
    )
    if result["dropped"]:
        families = sorted({_family(k) for k in result["dropped"]})
        click.echo(
            f"dropped {len(result['dropped'])} keys the reference never executes: "
            f"{', '.join(families)}"
        )
    click.echo(f"wrote {result['output']} and {result['genotype']}")
    if check:
        click.echo(json.dumps(result["check"], sort_keys=True))
        sys.exit(0 if result["check"]["ok"] else 1)


def _family(key: str) -> str:
    """A dropped key's family for the one-line summary: '<part>.stem.*', 'total_ops', ..."""
    for marker in (".stem.", ".cell_arch.", "total_ops", "total_params", "features.17"):
        if marker in key:
            head = key.split(marker)[0].split(".")[0] if marker.startswith(".") else ""
            return f"{head}{marker}*" if head else marker
    return key


@main.group()
def evaluate() -> None:
    """Score prediction files, or a trained model on a dataset spec."""


def _evaluate_files(kind: str, annotations: str, predictions: str, json_out: str | None) -> None:
    from nfs_orchestrator.evaluation import format_table, run_evaluate_cli

    stats = run_evaluate_cli(kind, annotations, predictions, json_out)
    click.echo(format_table(kind, stats))
    if json_out:
        click.echo(f"wrote {json_out}")


@evaluate.command("coco")
@click.option("--annotations", required=True, help="COCO person_keypoints_*.json ground truth.")
@click.option("--predictions", required=True, help="Keypoint results json (official format).")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the stats.")
def evaluate_coco_command(annotations: str, predictions: str, json_out: str | None) -> None:
    """COCO keypoint AP/AR (pycocotools COCOeval, the ten standard stats)."""
    _evaluate_files("coco", annotations, predictions, json_out)


@evaluate.command("mpii")
@click.option("--annotations", required=True, help="MPII gt_valid.mat.")
@click.option("--predictions", required=True, help="pred.mat holding preds (N, 16, 2), 0-based.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the stats.")
def evaluate_mpii_command(annotations: str, predictions: str, json_out: str | None) -> None:
    """MPII PCKh@0.5 (and Mean@0.1) by the standard protocol."""
    _evaluate_files("mpii", annotations, predictions, json_out)


@evaluate.command("checkpoint")
@click.option(
    "--model",
    "model_ref",
    required=True,
    help="A posenfs model file, or models:/NAME@ALIAS / models:/NAME/VERSION.",
)
@click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="A retrain or campaign YAML whose data section names the dataset.",
)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the stats.")
@root_option
def evaluate_checkpoint(model_ref, data_file, overrides, json_out, root) -> None:
    """Evaluate a trained model on the validation split of a dataset spec."""
    from nfs_orchestrator.evaluation import format_table, write_json_atomic
    from nfs_orchestrator.loop_utils import evaluate_on
    from nfs_orchestrator.model_io import load_model
    from nfs_orchestrator.specs import data_spec_from_file

    path = model_ref
    if model_ref.startswith("models:/"):
        from nfs_orchestrator.orchestration.model_refs import download_model_file

        path = download_model_file(model_ref, root)
    data = data_spec_from_file(data_file, tuple(overrides))
    stats = evaluate_on(load_model(path), data)
    kind = "mpii" if data.dataset == "mpii" else "coco"
    click.echo(format_table(kind, stats))
    if json_out:
        write_json_atomic(json_out, stats)
        click.echo(f"wrote {json_out}")


def parse_size(text: str) -> tuple[int, int]:
    """'256x192' → (256, 192) as (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected WxH, e.g. 256x192") from None
    return w, h


# ------------------------------------------------------------------------------------------
# campaigns: validate, search, status, resume, compare, ui
# ------------------------------------------------------------------------------------------


def set_option(f):
    return click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="KEY=VALUE",
        help="Dotted override of the spec, e.g. budget.num_trials=4 (repeatable).",
    )(f)


def preset_option(f):
    return click.option(
        "--arch-preset",
        default=None,
        metavar="NAME",
        help="Named α/β optimizer settings applied before --set: reference (the paper code's "
        "exact arch optimizer; it does not move α/β at small scale) or default.",
    )(f)


def campaign_overrides(arch_preset: str | None, overrides: tuple[str, ...]) -> tuple[str, ...]:
    """``--arch-preset``'s overrides first, then the user's ``--set``."""
    if not arch_preset:
        return tuple(overrides)
    from nfs_orchestrator.search.presets import arch_preset as preset

    return preset(arch_preset) + tuple(overrides)


def describe_campaign(campaign) -> list[str]:
    """A few lines saying what a campaign will run."""
    d, s, b, r = campaign.data, campaign.search, campaign.budget, campaign.resources
    outer = []
    for key, p in campaign.outer.items():
        domain = (
            "{" + ", ".join(json.dumps(c) for c in p.choices or ()) + "}"
            if p.type == "categorical"
            else f"[{p.low:g}, {p.high:g}]{' log' if p.log else ''}"
        )
        when = f" when {p.when}" if p.when else ""
        outer.append(f"{key} ∈ {domain}{when}")
    asha = "off" if b.seeds == 1 else "off (seeds > 1)"
    if b.early_stopping and not campaign.multi_objective:
        asha = f"grace {b.asha.grace_period}, reduction {b.asha.reduction_factor}"
    return [
        f"  data        {d.dataset} {d.input_size[0]}x{d.input_size[1]} (root {d.root})",
        f"  backbone    {campaign.backbone.name} "
        + ("(random init)" if campaign.backbone.random_init else f"({campaign.backbone.weights})"),
        f"  fabric      {campaign.fabric}   grouping {campaign.grouping}",
        f"  search      {s.mode}, {s.epochs} epochs, batch {s.batch_size}"
        + (f", {s.steps_per_epoch} steps/epoch" if s.steps_per_epoch else "")
        + (
            ", weight steps at uniform α/β (no-feedback control)"
            if s.weight_mixture == "uniform"
            else ""
        ),
        f"  outer       {'; '.join(outer) or '(none: repeated trials of the base)'}",
        "  objectives  " + ", ".join(f"{o.metric} ({o.mode})" for o in campaign.objectives),
        f"  budget      {b.num_trials} trials"
        + (f" ({b.num_trials // b.seeds} configurations × {b.seeds} seeds)" if b.seeds > 1 else "")
        + f", {b.max_concurrent} at once, ASHA {asha}, "
        f"retries: trial {b.trial_retries}, worker group {b.worker_retries}",
        f"  resources   {r.workers_per_trial} worker(s)"
        + (" in the trial actor" if r.search_in_trial_actor else "")
        + f" × {r.cpus_per_worker:g} CPU"
        + (f" + {r.gpus_per_worker:g} GPU" if r.gpus_per_worker else "")
        + f", driver {r.trial_cpus:g} CPU",
    ]


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@set_option
@preset_option
def validate(files: tuple[str, ...], overrides: tuple[str, ...], arch_preset: str | None) -> None:
    """Check campaign and retrain files: resolve every reference and print each campaign's id
    and plan (a file with top-level ``epochs`` and no ``search`` is a retrain spec)."""
    from nfs_orchestrator.campaign_spec import load_campaign
    from nfs_orchestrator.specs import load_retrain
    from nfs_orchestrator.strict import read_yaml

    for path in files:
        body = read_yaml(path)
        if "search" not in body and "outer" not in body and "epochs" in body:
            spec = load_retrain(path, overrides)
            validation = spec.data.describe_validation()  # a missing detections file: exit 2
            click.echo(f"{path}: ok, retrain {spec.name}-{spec.fingerprint()[:8]}")
            click.echo(f"  validation  {validation}")
            continue
        campaign = load_campaign(path, campaign_overrides(arch_preset, overrides))
        validation = campaign.data.describe_validation()
        click.echo(f"{path}: ok, campaign {campaign.campaign_id}")
        for line in describe_campaign(campaign):
            click.echo(line)
        click.echo(f"  validation  {validation}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@set_option
@click.option(
    "--address",
    default=None,
    help="Ray cluster to join (host:port or 'auto'); default: Ray embedded on this machine.",
)
@root_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Print the resolved campaign and its forecast (steps, GPU-hours, wall-clock) and stop.",
)
@click.option(
    "--step-seconds",
    type=float,
    default=None,
    help="Dry run: seconds per optimizer step on the target device (nothing is timed here).",
)
@click.option(
    "--device-profile",
    default=None,
    help="Dry run: the target device of the forecast (cpu, v100, a100, l4, h100, h200; "
    "default cpu, or a100 for a GPU campaign).",
)
@click.option(
    "--slots",
    type=int,
    default=None,
    help="Dry run: trials the cluster runs at once (default: budget.max_concurrent; on this "
    "machine for a CPU campaign: what fits here).",
)
@preset_option
def search(
    file: str,
    overrides: tuple[str, ...],
    address: str | None,
    root: str,
    dry_run: bool,
    step_seconds: float | None,
    device_profile: str | None,
    slots: int | None,
    arch_preset: str | None,
) -> None:
    """Run a NAS campaign (or resume it: the same spec always has the same id)."""
    from nfs_orchestrator.campaign_spec import load_campaign
    from nfs_orchestrator.orchestration.ray_session import plan_resources

    forecast_options = {"--step-seconds": step_seconds, "--device-profile": device_profile}
    forecast_options["--slots"] = slots
    for flag, value in forecast_options.items():
        if value is not None and not dry_run:
            raise PosenfsError(f"{flag}: only with --dry-run")
    if step_seconds is not None and not step_seconds > 0:
        raise PosenfsError(f"--step-seconds: {step_seconds:g} must be > 0")
    if slots is not None and slots < 1:
        raise PosenfsError(f"--slots: {slots} must be ≥ 1")
    if device_profile is not None:
        from nfs_orchestrator.forecast import profile

        profile(device_profile)  # an unknown name fails before anything is loaded or timed
    campaign = load_campaign(file, campaign_overrides(arch_preset, overrides))
    if dry_run:
        click.echo(json.dumps(campaign.to_dict(), indent=2, sort_keys=True))
        click.echo(f"campaign id: {campaign.campaign_id}")
        b, r, s = campaign.budget, campaign.resources, campaign.search
        click.echo(f"trials: {b.num_trials} × {s.epochs} epochs")
        per_trial = r.trial_cpus + r.workers_per_trial * r.cpus_per_worker
        gpus = r.workers_per_trial * r.gpus_per_worker
        if address or gpus:  # planned for a cluster, not for this machine
            where = address or "a cluster with GPUs (none are needed here to plan)"
            click.echo(
                f"resources: {per_trial:g} CPU"
                + (f" + {gpus:g} GPU" if gpus else "")
                + f" per trial; concurrency set by {where}"
            )
            concurrent = b.max_concurrent  # the budget's cap; the cluster may allow fewer
        else:
            plan = plan_resources(r, b)
            click.echo(f"resources: {plan.describe()}")
            concurrent = plan.max_concurrent
        from nfs_orchestrator.forecast import forecast_campaign, format_forecast

        fc = forecast_campaign(
            campaign, slots or min(concurrent, b.num_trials), step_seconds, device_profile
        )
        for line in format_forecast(fc):
            click.echo(line)
        return
    _run_campaign(campaign, root, address)


@main.command()
@click.argument("campaign_id")
@root_option
@click.option("--address", default=None, help="Ray cluster to join; default: embedded Ray.")
def resume(campaign_id: str, root: str, address: str | None) -> None:
    """Continue a stopped, killed or pre-empted campaign where it stopped."""
    from nfs_orchestrator.orchestration.store import load_record

    record = load_record(root, campaign_id)  # the root given, even if the folder was moved
    _run_campaign(record.spec, root, address, base_dir=record.base_dir)


def _run_campaign(campaign, root: str, address: str | None, base_dir: str | None = None) -> None:
    from nfs_orchestrator.orchestration.campaign import run_campaign

    result = run_campaign(campaign, root, address, base_dir=base_dir)
    rows = result.rows
    counts = {s: sum(r["status"] == s for r in rows) for s in ("FINISHED", "EARLY_STOPPED")}
    click.echo("")
    click.echo(
        f"campaign {result.campaign_id} {result.status}: {len(rows)} trials "
        f"({counts['FINISHED']} finished, {counts['EARLY_STOPPED']} stopped early by ASHA, "
        f"{len(result.failed)} failed) in {result.wall_time_s:.0f} s"
    )
    primary = campaign.objectives[0]
    if campaign.multi_objective:
        click.echo(f"Pareto set over {[o.metric for o in campaign.objectives]}:")
    shown = result.pareto if campaign.multi_objective else [result.best] if result.best else []
    for row in shown:
        if campaign.multi_objective:
            final = json.loads(row.get("final_json") or "{}")
            values = ", ".join(f"{k} {final.get(k, float('nan')):.4g}" for k in final)
            head = f"  trial {row['trial_id']}: {values}"
        else:
            head = f"best trial {row['trial_id']}: {primary.metric} {row['best']:.4g}"
        scales = "-".join(str(v) for v in row["scales"] or [])
        click.echo(f"{head} (grouping {row['grouping']}, depth {row['depth']}, scales {scales})")
        click.echo(f"  genotype {row.get('genotype_fp') or '-'}  MLflow run {row.get('run_id')}")
    click.echo(f"ledger   {result.ledger_path}")
    click.echo(f"compare  posenfs compare {result.campaign_id} --root {result.record.root}")
    click.echo(f"MLflow   posenfs ui --root {result.record.root}")
    if result.status == "interrupted":
        click.echo(f"resume   posenfs resume {result.campaign_id} --root {result.record.root}")
        sys.exit(130)
    if result.failed:
        sys.exit(1)


@main.command("status")
@click.argument("campaign_id", required=False)
@root_option
@click.option("--address", default=None, help="Ask this cluster's Jobs API (http://<head>:8265).")
@click.option("--token-file", default=None, help="Ray auth token file (with --address).")
def status_command(
    campaign_id: str | None, root: str, address: str | None, token_file: str | None
) -> None:
    """Campaigns under the root, or one campaign's trials (read from disk; starts nothing).

    With --address: the campaign's jobs, one per attempt (or every job), as the cluster's Jobs
    API reports them."""
    from nfs_orchestrator.orchestration import status, store

    if address:
        from nfs_orchestrator.orchestration import jobs

        if campaign_id:  # every attempt, the latest last
            infos = jobs.job_attempts(campaign_id, address, token_file)
        else:
            infos = jobs.list_jobs(address, token_file)
        for info in infos:
            click.echo(info.line())
        return
    if campaign_id:
        click.echo(status.format_trials(store.load_record(root, campaign_id)))
    else:
        click.echo(status.format_campaigns(store.list_records(root)))


def address_option(f):
    return click.option(
        "--address", required=True, help="The cluster's Jobs API, e.g. http://<head>:8265."
    )(f)


def token_file_option(f):
    return click.option(
        "--token-file",
        default=None,
        type=click.Path(dir_okay=False),
        help="Ray auth token file (else $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token).",
    )(f)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@address_option
@set_option
@click.option(
    "--root",
    default=None,
    help="Root folder as the cluster sees it (shared storage); default: the job's POSENFS_ROOT.",
)
@token_file_option
@click.option(
    "--runtime-env",
    "runtime_env_file",
    default=None,
    type=click.Path(dir_okay=False),
    help="A runtime env YAML to send as well (e.g. cluster/runtime_env.yaml: pip pins).",
)
def submit(file, address, overrides, root, token_file, runtime_env_file) -> None:
    """Run a campaign as a Ray job. Job id = campaign id, then <campaign id>-<n> for attempt n:
    a PENDING/RUNNING job is reported, not duplicated; after a STOPPED or FAILED one, the next
    attempt resumes the campaign."""
    from nfs_orchestrator.orchestration import jobs

    done = jobs.submit_campaign(
        file, overrides, address, root, token_file,
        base_env=jobs.load_runtime_env(runtime_env_file),
    )  # fmt: skip
    info, where = done.job, f"--address {address}"
    if info.created and done.previous is not None:
        click.echo(
            f"resubmitted: {info.line()}: attempt {done.attempt}, resumes the campaign "
            f"(attempt {done.attempt - 1} ended {done.previous.status})"
        )
    elif info.created:
        click.echo(f"submitted: {info.line()}")
    elif info.status == "SUCCEEDED":
        on_root = f" --root {root}" if root else ""
        click.echo(f"already done: {info.line()}; the campaign is complete, nothing submitted")
        click.echo(f"results: posenfs compare {done.campaign_id}{on_root}  (or promote)")
        click.echo("to run it again, change the campaign (a new campaign id) and submit that")
        return
    else:
        click.echo(f"already submitted: {info.line()}")
    click.echo(f"follow it: posenfs logs {done.campaign_id} {where} --follow")
    click.echo(f"stop it:   posenfs cancel {done.campaign_id} {where}")


@main.command()
@click.argument("campaign_id")
@address_option
@click.option("--follow", is_flag=True, help="Stream the log until the job ends.")
@token_file_option
def logs(campaign_id: str, address: str, follow: bool, token_file: str | None) -> None:
    """The driver log of a campaign's latest job (or of the job id given)."""
    from nfs_orchestrator.orchestration import jobs

    info = jobs.job_logs(
        campaign_id, address, token_file, follow, write=lambda text: click.echo(text, nl=False)
    )
    if follow:
        click.echo(info.line(), err=True)
        sys.exit(0 if info.status == "SUCCEEDED" else 1)


@main.command()
@click.argument("campaign_id")
@address_option
@token_file_option
def cancel(campaign_id: str, address: str, token_file: str | None) -> None:
    """Stop a campaign's latest job and wait until it has stopped: the driver gets SIGTERM and
    stops the campaign cleanly (runs end KILLED, checkpoints kept) within the job's stop window;
    `posenfs submit` of the same campaign then resumes it."""
    from nfs_orchestrator.orchestration import jobs

    done = jobs.cancel_job(campaign_id, address, token_file)
    info = done.job
    if not done.stopped_now:
        click.echo(f"nothing to stop: {info.line()}")
        return
    click.echo(f"{info.line()} after {done.waited_s:.0f} s")
    if done.summary:
        click.echo(f"driver: {done.summary}")
    else:
        click.echo(
            f"driver: no summary in the log (killed after the {info.stop_wait_s} s stop window?); "
            "runs it left RUNNING end when the campaign is resumed"
        )
    click.echo(f"resume: posenfs submit <the same campaign file and --set> --address {address}")


@main.command()
@click.argument("campaign_id")
@root_option
def compare(campaign_id: str, root: str) -> None:
    """Part groupings, depths and scales side by side (+ a plot, logged to MLflow)."""
    from nfs_orchestrator.orchestration.compare import compare_campaign

    comparison = compare_campaign(root, campaign_id)
    click.echo(comparison.text())
    click.echo(f"\nwrote {comparison.plot_path} and {comparison.json_path}")
    if comparison.parts_plot_path is not None:
        click.echo(f"wrote {comparison.parts_plot_path}")


@main.command()
@root_option
@click.option("--port", default=5000, show_default=True, type=int)
def ui(root: str, port: int) -> None:
    """Serve the MLflow UI of the root's store on 127.0.0.1 (Ctrl-C to stop)."""
    import signal
    import subprocess
    from pathlib import Path

    folder = Path(root).resolve()
    db = folder / "mlflow.db"
    if not db.is_file():
        raise PosenfsError(f"{db}: no MLflow store; run `posenfs search` first or pass --root")
    uri = f"sqlite:///{db}"
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--default-artifact-root", (folder / "mlartifacts").as_uri(),
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",  # one local user; 4 workers take a small machine's cores at start
    ]  # fmt: skip
    env = {**os.environ}
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # GenAI job runner: unused
    click.echo(f"MLflow UI: http://127.0.0.1:{port}  (store {uri}; Ctrl-C to stop)", err=True)
    server = subprocess.Popen(command, env=env)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)  # stop the server with us
    try:
        sys.exit(server.wait())
    except KeyboardInterrupt:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        sys.exit(0)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


@main.command()
@click.argument("campaign_id")
@click.option(
    "--rule",
    default=None,
    help="best:<metric>[:max|min] or pareto:<metric>@<metric><=<value>; default: the "
    "campaign's primary objective.",
)
@click.option("--trial", "trial_id", help="Promote this trial instead of applying the rule.")
@click.option("--alias", default="champion", show_default=True)
@click.option("--model-name", help="Registered model name (default posenfs-<dataset>-genotypes).")
@click.option("--force", is_flag=True, help="Promote even an undecided genotype.")
@consensus_option
@root_option
def promote(campaign_id, rule, trial_id, alias, model_name, force, consensus, root) -> None:
    """Register a campaign's best genotype in the MLflow Model Registry under an alias.

    CAMPAIGN_ID is a campaign id, or the campaign's YAML file."""
    from nfs_orchestrator.orchestration.ledger import read_ledger
    from nfs_orchestrator.orchestration.promote import campaign_rule
    from nfs_orchestrator.orchestration.promote import promote as do_promote

    record = _campaign_record(campaign_id, root)
    parsed = campaign_rule(record, rule)
    p = do_promote(
        record,
        read_ledger(record.ledger_path),
        parsed,
        trial_id=trial_id,
        alias=alias,
        model_name=model_name,
        force=force,
        consensus=consensus,
    )
    verb = "registered" if p.created else "already registered"
    was = f" (was version {p.previous})" if p.previous else ""
    what = f"consensus of trial {p.trial_id}'s seeds" if consensus else f"trial {p.trial_id}"
    click.echo(
        f"{verb} {p.model_name} version {p.version} ({what}, {p.metric}={p.value}, genotype "
        f"{p.genotype_fp[:12]}); alias @{p.alias} -> version {p.version}{was}"
    )
    click.echo(f"retrain it: posenfs retrain FILE --genotype models:/{p.model_name}@{p.alias}")


@main.command()
@click.argument("campaign_id")
@click.option(
    "--retrain",
    "retrain_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="The retrain spec every arm is trained with (same pipeline and budget).",
)
@click.option("--rule", default=None, help="Promotion rule choosing the champion (as promote).")
@click.option("--random", "random_arms", default=2, show_default=True, type=int)
@click.option("--seeds", default=2, show_default=True, type=int, help="Seeds per arm.")
@consensus_option
@set_option
@click.option("--address", help="Ray cluster address (default: start Ray here).")
@root_option
def controls(
    campaign_id, retrain_file, rule, random_arms, seeds, consensus, overrides, address, root
):
    """Retrain the champion beside its controls (uniform baseline, random genotypes of matched
    size), each with several seeds, and say whether it beats them by more than the spread.

    CAMPAIGN_ID is a campaign id, or the campaign's YAML file."""
    from nfs_orchestrator.orchestration.controls import format_controls, run_controls
    from nfs_orchestrator.orchestration.ledger import read_ledger
    from nfs_orchestrator.orchestration.promote import (
        campaign_rule,
        select_consensus,
        select_genotype,
    )
    from nfs_orchestrator.specs import load_retrain

    if random_arms < 0 or seeds < 1:
        raise PosenfsError(f"--random {random_arms} / --seeds {seeds}: need ≥ 0 and ≥ 1")
    record = _campaign_record(campaign_id, root)
    spec = load_retrain(retrain_file, tuple(overrides))
    rule = campaign_rule(record, rule)
    select = select_consensus if consensus else select_genotype
    chosen = select(record, read_ledger(record.ledger_path), rule)
    result = run_controls(
        record, spec, chosen.genotype, random_arms=random_arms, seeds=seeds, address=address
    )
    click.echo(format_controls(json.loads(result.json_path.read_text())))
    click.echo(f"wrote {result.json_path} and {result.plot_path} ({result.wall_time_s:.0f} s)")


def _campaign_record(campaign_id: str, root: str):
    """The record of a campaign given by id (or unique prefix) or by its YAML file."""
    from nfs_orchestrator.orchestration.store import load_record

    if campaign_id.endswith((".yaml", ".yml")) and os.path.isfile(campaign_id):
        from nfs_orchestrator.campaign_spec import load_campaign

        campaign_id = load_campaign(campaign_id).campaign_id  # the campaign of that file
    return load_record(root, campaign_id)


@main.command()
@click.argument("spec_file", type=click.Path(dir_okay=False))
@click.option(
    "--genotype",
    "genotype_ref",
    required=True,
    help="models:/NAME@ALIAS, runs:/RUN/genotype.json or a genotype.json path.",
)
@set_option
@click.option("--address", help="Ray cluster address (default: start Ray here).")
@root_option
def retrain(spec_file, genotype_ref, overrides, address, root) -> None:
    """Train the derived network of a genotype and register the trained model."""
    from nfs_orchestrator.orchestration.retrain import run_retrain_job
    from nfs_orchestrator.specs import load_retrain

    spec = load_retrain(spec_file, tuple(overrides))
    r = run_retrain_job(spec, genotype_ref, root, address)
    shown = ", ".join(
        f"{k}={v:.4f}"
        for k, v in r.metrics.items()
        if k in ("val_ap", "val_pckh", "val_loss", "train_loss")
    )
    click.echo(f"retrained {r.retrain_id}: {shown}")
    click.echo(f"registered {r.model_name} version {r.version} (MLflow run {r.run_id})")
    click.echo(f"see it: posenfs ui --root {root}   load it: models:/{r.model_name}/{r.version}")


if __name__ == "__main__":  # pragma: no cover
    main()
