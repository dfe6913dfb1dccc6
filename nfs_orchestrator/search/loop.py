"""The inner, differentiable search of one trial: one straight-line epoch loop, pure PyTorch.

    build data and supernet → resume from the runtime's latest checkpoint, if any →
    for each epoch:
        one training step per batch (``bilevel.STEPS[mode]``: α/β step by mode, weights)
        validate (COCO AP / MPII PCKh and the heatmap loss) on rank 0, broadcast
        derive the genotype on rank 0, broadcast
        write the checkpoint (rank 0) and report metrics + artifacts through the runtime

Determinism: every epoch starts by seeding torch/numpy/random from (trial seed, epoch), and the
epoch's sample order is a function of the same, so checkpoint → restore → continue on CPU is
bit-identical to an uninterrupted run. Schedules are pure functions of progress.

Pre-emption at step granularity: after every step the loop asks ``runtime.should_stop_step()``
(every rank agrees: a SIGTERM or a pre-emption notice reached some rank); after an epoch's last
step it asks once its validation is done (before the report), so a notice that came during
the validation pauses there too (a process that is exiting cannot deliver a report; the retry
resumes after the epoch's last step and redoes its end). When it says so, the
loop writes a mid-epoch checkpoint (``state.pt`` with an ``interrupted`` entry: the steps done
in the epoch, its losses so far, which say how many α/β batches were drawn, and every rank's
torch/numpy/python RNG states) and hands it to ``runtime.interrupt``, then returns. A resume
from it seeds the epoch as usual, restores the RNG states and continues at that step: the
sample order is a function of (seed, epoch, step) (``loop_utils.epoch_steps(start=...)``) and
each sample's augmentation of its position in it, so it takes exactly the batches and random
numbers the uninterrupted run takes.

Batches: ``search.batch_size`` images per optimizer step in total; each of the W workers runs
``micro_batch`` images per forward, accumulating ``batch / (W · micro_batch)`` micro-batches, so
the effective batch (and with it the α/β dynamics) does not change with the number of workers.

What this is not: Ray, MLflow or Optuna code. The loop sees the world only through ``Runtime``.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from nfs_orchestrator.confidence import confidence_metrics, with_confidence
from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.forecast import EpochProgress, iter_progress
from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.hardware import choose_execution, detect, prepare_model
from nfs_orchestrator.loop_utils import (
    batch_plan,
    cycle_batches,
    epoch_steps,
    get_rng_state,
    make_optimizer,
    mean,
    seed_everything,
    set_lr,
    set_rng_state,
    steps_in_epoch,
    to_device,
    validate,
)
from nfs_orchestrator.nn.supernet import PoseSupernet
from nfs_orchestrator.part_metrics import genotype_part_metrics
from nfs_orchestrator.runtime import Runtime
from nfs_orchestrator.search import bilevel
from nfs_orchestrator.search.diagnostics import ArchMeter
from nfs_orchestrator.search.one_shot import select_inputs
from nfs_orchestrator.search.schedules import alpha_pull, lr_factor, temperature
from nfs_orchestrator.specs import PARAMETER_FREE_OPS, SearchSpec, TrialSpec

STATE_FILE = "state.pt"


def run_search(trial: TrialSpec, runtime: Runtime) -> dict[str, float]:
    """Runs (or resumes) the search of ``trial``; returns the last epoch's metrics."""
    from nfs_orchestrator.data import build_dataset, split_image_disjoint
    from nfs_orchestrator.nn.backbones import build_backbone

    entered = time.monotonic()
    search = trial.search
    schema = trial.grouping.schema
    device = runtime.device
    micro, accumulation = batch_plan(search.batch_size, search.micro_batch, runtime.world_size)

    seed_everything(trial.seed)
    train_set = build_dataset(trial.data, schema, "train", train=True)
    val_set = build_dataset(trial.data, schema, "val", train=False)
    backbone = build_backbone(
        trial.backbone.name, trial.backbone.weights, random_init=trial.backbone.random_init
    )
    model = PoseSupernet(
        trial.fabric, trial.grouping, backbone, search.partial_channels, search.sampling
    ).to(device)
    model.layout_beta = search.beta_gradient == "layout"
    model.sample_inputs = search.input_sampling == "gumbel"
    init_arch(model, search)
    runtime.broadcast_parameters(model)
    # after the broadcast (collectives want dense NCHW tensors), before the optimizers
    execution = choose_execution(detect(device), search.precision, search.memory_format)
    prepare_model(model, execution)
    if runtime.rank == 0:
        print(f"posenfs: trial {trial.name}: {execution.describe()}", flush=True)
    weights = [p for p in model.weight_parameters() if p.requires_grad]
    arch = [p for p in model.arch_parameters() if p.requires_grad]
    w_opt = make_optimizer(search.weight_optimizer, weights)
    a_opt = make_optimizer(search.arch_optimizer, arch) if arch else None
    arch_meter = ArchMeter(a_opt) if a_opt is not None else None  # search/diagnostics.py

    bilevel_mode = search.mode in ("first_order", "second_order")
    if bilevel_mode:
        weight_idx, arch_idx = split_image_disjoint(train_set, search.split, trial.seed)
    else:
        weight_idx, arch_idx = list(range(len(train_set))), []
    per_step = micro * runtime.world_size * accumulation  # = search.batch_size
    splits = {"weight split": weight_idx, "α/β split": arch_idx} if bilevel_mode else {}
    for name, idx in (splits or {"training set": weight_idx}).items():
        if len(idx) < per_step:  # not one full batch: the loop would have nothing to draw
            raise SpecError(
                f"trial {trial.name}: the {name} holds {len(idx)} of {len(train_set)} training "
                f"instances, fewer than one batch of {per_step} (search.batch_size) in mode "
                f"{search.mode}: use more training images or a smaller batch"
            )

    start_epoch, start_step, history = 0, 0, []
    frozen_at: int | None = None  # the epoch a collapse monitor froze α/β at (search.collapse)
    resumed: dict = {}  # a mid-epoch checkpoint's "interrupted" part (see interrupted_state)
    if (ckpt := runtime.latest_checkpoint()) is not None:
        state = torch.load(Path(ckpt) / STATE_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        w_opt.load_state_dict(state["weight_optimizer"])
        if a_opt is not None:
            a_opt.load_state_dict(state["arch_optimizer"])
        start_epoch, history = state["epoch"] + 1, state["history"]
        frozen_at = state.get("arch_frozen_at")
        if resumed := state.get("interrupted") or {}:  # continue that epoch at that step
            start_epoch, start_step = state["epoch"], resumed["step"]

    setup_s = time.monotonic() - entered  # data, supernet, checkpoint restore
    metrics: dict[str, float] = {}
    # rank 0's progress lines: epoch e/E · s/step · ETA (and mid-epoch ones for long epochs)
    lines = None
    if runtime.rank == 0:
        lines = EpochProgress(f"trial {trial.name}", search.epochs, start_epoch)
    steps = steps_in_epoch(len(weight_idx), search.batch_size, search.steps_per_epoch)
    for epoch in range(start_epoch, search.epochs):
        started = time.monotonic()
        first_step = start_step if epoch == start_epoch else 0
        if lines is not None:
            lines.begin(epoch, first_step)
        progress = epoch / search.epochs
        seed_everything(trial.seed * 100_003 + epoch)
        if first_step:
            set_rng_state(resumed["rng"][runtime.rank])  # where this rank's streams stood
        set_lr(w_opt, search.weight_optimizer.lr * lr_factor(search.lr_schedule, progress))
        model.temperature = temperature(search.temperature, progress)
        arch_active = a_opt is not None and epoch >= search.arch_start and frozen_at is None
        eta = w_opt.param_groups[0]["lr"]

        model.train()
        workers = search.loader_workers
        w_batches = epoch_steps(  # exactly steps_per_epoch steps, in every mode
            train_set,
            weight_idx,
            micro,
            accumulation,
            runtime,
            trial.seed + epoch,
            search.steps_per_epoch,
            workers,
            first_step,
        )
        w_batches = iter_progress(w_batches, lines, steps, _say, first_step)
        train_losses = list(resumed["train_losses"]) if first_step else []
        arch_losses = list(resumed["arch_losses"]) if first_step else []
        a_batches = cycle_batches(  # one α/β batch per α/β step: as many drawn as arch losses
            train_set,
            arch_idx,
            micro,
            accumulation,
            runtime,
            trial.seed + epoch + 1,
            workers,
            len(arch_losses),
        )
        arch_batches = (to_device(b, device) for b in a_batches)  # drawn only by α/β steps
        step = bilevel.STEPS[search.mode] if arch_active else bilevel.WEIGHTS_ONLY
        step_state = bilevel.StepState(
            model,
            weights,
            arch,
            w_opt,
            a_opt,
            runtime,
            search.grad_clip,
            eta,
            search.weight_optimizer.weight_decay,
            execution,
            alpha_pull(search.alpha_entropy_weight, progress),
            uniform_weights=search.weight_mixture == "uniform",
        )

        for step_index, step_batches in enumerate(w_batches, start=first_step):
            train_loss, arch_loss = step(step_state, to_device(step_batches, device), arch_batches)
            train_losses.append(train_loss)
            if arch_loss is not None:
                arch_losses.append(arch_loss)
            # the epoch's last step boundary is asked about after the epoch's validation (below)
            if step_index + 1 < steps and runtime.should_stop_step():  # pre-empted: pause here
                write_interrupted(
                    runtime, trial, model, w_opt, a_opt, history, frozen_at,
                    epoch, step_index + 1, train_losses, arch_losses,
                )  # fmt: skip
                return metrics

        last = epoch == search.epochs - 1
        losses = {"train_loss": mean(train_losses)}
        if arch_losses:  # every rank takes the same steps, so every rank has the same keys
            losses["arch_loss"] = mean(arch_losses)
        metrics = runtime.all_reduce_mean(losses)
        if last and search.selection == "one_shot":  # inputs by evaluation, not β (one_shot.py)
            # its validation of the kept network is the epoch's
            metrics.update(select_by_evaluation(model, val_set, trial, device, execution, runtime))
        elif (epoch + 1) % search.val_every == 0 or last:
            val = (
                validate(
                    model, val_set, trial.data, schema, device, search.loader_workers, execution
                )
                if runtime.rank == 0
                else {}
            )
            metrics.update(runtime.broadcast_object(val))
        # The epoch's last step boundary: a stop that came during its last step or its
        # validation pauses here, before the report (a process that is exiting could not deliver
        # it); the retry resumes after all steps and redoes this epoch's end, bit-equal.
        if runtime.should_stop_step():
            write_interrupted(
                runtime, trial, model, w_opt, a_opt, history, frozen_at,
                epoch, steps, train_losses, arch_losses,
            )  # fmt: skip
            return metrics
        genotype: Genotype = runtime.broadcast_object(
            model.genotype(trial.data.input_size, trial.backbone.name)
            if runtime.rank == 0
            else None
        )
        history.append(arch_snapshot(model))
        genotype = with_confidence(genotype, history, model.temperature)  # every rank alike
        metrics.update(arch_metrics(model, genotype))
        collapsed = collapse_check(search, arch_active, metrics["param_free_share"])
        if collapsed:
            metrics["collapse_share"] = metrics["param_free_share"]  # the ledger says why
            frozen_at = epoch if search.collapse.action == "freeze_arch" else frozen_at
        if frozen_at is not None:
            metrics["arch_frozen_at"] = float(frozen_at)
        metrics.update(confidence_metrics(genotype))
        if arch_meter is not None:  # decay equilibrium / small α/β steps (diagnostics.py)
            diagnosed = arch_meter.epoch_metrics()
            metrics.update(diagnosed)
            if runtime.rank == 0 and (line := arch_meter.new_warning(diagnosed)):
                print(f"posenfs: trial {trial.name} epoch {epoch + 1}: {line}", flush=True)
        metrics.update(
            genotype_part_metrics(genotype, trial.data.input_size, model.backbone.channels)
        )
        metrics.update(
            epoch=epoch,
            epochs=search.epochs,
            start_epoch=start_epoch,
            start_step=start_step,
            epoch_time_s=time.monotonic() - started,
            setup_s=setup_s,
            temperature=model.temperature,
            lr=eta,
        )
        with tempfile.TemporaryDirectory(prefix="posenfs-ckpt-") as tmp:
            ckpt_dir = None
            artifacts: dict[str, str | bytes] = {}
            if runtime.rank == 0:
                ckpt_dir = Path(tmp)
                torch.save(
                    checkpoint_state(model, w_opt, a_opt, epoch, history, trial, frozen_at),
                    ckpt_dir / STATE_FILE,
                )
                (ckpt_dir / "genotype.json").write_text(genotype.to_json())
                artifacts = render_artifacts(genotype, history)
            runtime.report(metrics, ckpt_dir, artifacts)
        if lines is not None:
            _say(lines.end(len(train_losses)))
        if runtime.should_stop() or (collapsed and search.collapse.action == "stop"):
            break
    return metrics


def select_by_evaluation(model, val_set, trial: TrialSpec, device, execution, runtime) -> dict:
    """``search.selection: one_shot``: rank 0 picks each part's single-input path by random
    search with weight sharing (``one_shot.select_inputs``); every rank writes it into β;
    the selected network is validated again. Returns the selection's and that validation's
    metrics."""
    search, schema = trial.search, trial.grouping.schema
    picked = None
    if runtime.rank == 0:
        _say(f"trial {trial.name}: one-shot selection of {search.one_shot_candidates} candidates")
        metric = "val_pckh" if trial.data.dataset == "mpii" else "val_ap"

        def score(m) -> dict[str, float]:  # each part's metric on its own keypoints
            val = validate(m, val_set, trial.data, schema, device, search.loader_workers, execution)
            return {name: val[f"{metric}.{name}"] for name in m.parts}

        chosen, scores = select_inputs(
            model, score, search.one_shot_candidates, trial.seed,
            say=lambda line: _say(f"trial {trial.name}: {line}"),
        )  # fmt: skip
        picked = ({name: beta.tolist() for name, beta in chosen.items()}, scores)
    chosen, scores = runtime.broadcast_object(picked)
    with torch.no_grad():
        for name, fabric in model.parts.items():
            fabric.beta.copy_(torch.tensor(chosen[name]).to(fabric.beta))
    val = (
        validate(model, val_set, trial.data, schema, device, search.loader_workers, execution)
        if runtime.rank == 0
        else {}
    )
    return {**scores, **runtime.broadcast_object(val)}


def write_interrupted(
    runtime: Runtime,
    trial: TrialSpec,
    model: PoseSupernet,
    w_opt: torch.optim.Optimizer,
    a_opt: torch.optim.Optimizer | None,
    history: list[dict],
    frozen_at: int | None,
    epoch: int,
    step: int,
    train_losses: list[float],
    arch_losses: list[float],
) -> None:
    """Writes the mid-epoch checkpoint after ``step`` steps of ``epoch`` (on rank 0) and hands it
    to ``runtime.interrupt``. Every rank calls it."""
    interrupted = {
        "step": step,  # steps of this epoch done
        "rng": runtime.all_gather_object(get_rng_state()),  # [rank] -> states
        "train_losses": train_losses,
        "arch_losses": arch_losses,
    }
    with tempfile.TemporaryDirectory(prefix="posenfs-ckpt-") as tmp:
        ckpt_dir = None
        if runtime.rank == 0:
            ckpt_dir = Path(tmp)
            state = checkpoint_state(model, w_opt, a_opt, epoch, history, trial, frozen_at)
            state["interrupted"] = interrupted
            torch.save(state, ckpt_dir / STATE_FILE)
        runtime.interrupt(ckpt_dir, epoch, step)


def checkpoint_state(
    model: PoseSupernet,
    w_opt: torch.optim.Optimizer,
    a_opt: torch.optim.Optimizer | None,
    epoch: int,
    history: list[dict],
    trial: TrialSpec,
    frozen_at: int | None,
) -> dict:
    """What ``state.pt`` holds after epoch ``epoch`` (a mid-epoch checkpoint adds
    ``interrupted``: the step in ``epoch``, the RNG states per rank and the losses so far)."""
    return {
        "model": model.state_dict(),
        "weight_optimizer": w_opt.state_dict(),
        "arch_optimizer": a_opt.state_dict() if a_opt is not None else None,
        "epoch": epoch,
        "history": history,
        "trial": trial.to_dict(),
        "arch_frozen_at": frozen_at,
    }


def _say(line: str) -> None:
    print(f"posenfs: {line}", flush=True)


def collapse_check(search: SearchSpec, arch_active: bool, param_free_share: float) -> bool:
    """Whether this epoch's genotype trips the collapse monitor (``search.collapse``): α/β
    were searched this epoch and the parameter-free share passed the threshold."""
    limit = search.collapse.max_param_free_share
    return arch_active and limit is not None and param_free_share > limit


# --------------------------------------------------------------------------------------------


def init_arch(model: PoseSupernet, search: SearchSpec) -> None:
    """α/β start at zero (uniform); ``random`` draws them once from N(0, 1); frozen ones get
    ``requires_grad = False`` and so sit in no optimizer (the reference kept training them)."""
    if search.mode == "random":
        g = torch.Generator().manual_seed(search.random_arch_seed)
        with torch.no_grad():
            for p in model.arch_parameters():
                p.copy_(torch.randn(p.shape, generator=g))
    for fabric in model.parts.values():
        fabric.alpha.requires_grad_(search.searches_arch and search.search_alpha)
        fabric.beta.requires_grad_(search.searches_arch and search.search_beta)


def arch_snapshot(model: PoseSupernet) -> dict[str, dict[str, list[list[float]]]]:
    """softmax(α/T), softmax(β/T) per part at the temperature T in use, for the trajectory plot,
    the checkpoint and the decisions of each epoch (confidence.flip_share)."""
    snap = {}
    t = model.temperature
    with torch.no_grad():
        for name, fabric in model.parts.items():
            a = torch.softmax(fabric.alpha.float().cpu() / t, -1)
            b = torch.softmax(fabric.beta.float().cpu() / t, -1)
            snap[name] = {
                "alpha": a.reshape(-1, a.shape[-1]).tolist(),
                "beta": b.tolist(),
            }
    return snap


def arch_metrics(model: PoseSupernet, genotype: Genotype) -> dict[str, float]:
    """α/β entropies (nats, mean over edges/cells) at the temperature in use, share of
    parameter-free ops in the genotype, and the derived network's size."""
    alpha_h, beta_h = [], []
    t = model.temperature
    with torch.no_grad():
        for fabric in model.parts.values():
            a = torch.softmax(fabric.alpha.float() / t, -1)
            b = torch.softmax(fabric.beta.float() / t, -1)
            alpha_h.append(float(-(a * a.clamp_min(1e-12).log()).sum(-1).mean()))
            beta_h.append(float(-(b * b.clamp_min(1e-12).log()).sum(-1).mean()))
    ops = [op for part in genotype.parts for cell in part.cells for op in cell.ops]
    free = sum(op in PARAMETER_FREE_OPS for op in ops) / max(1, len(ops))
    cells = sum(len(part.cells) for part in genotype.parts)
    return {
        "alpha_entropy": mean(alpha_h),
        "beta_entropy": mean(beta_h),
        "param_free_share": free,
        "cells_kept": float(cells),
        "macs": float(genotype.macs or 0),
        "params": float(genotype.params or 0),
    }


def render_artifacts(genotype: Genotype, history: list[dict]) -> dict[str, str | bytes]:
    """genotype.json, the fabric drawing and the α/β trajectory plot, as file contents."""
    from nfs_orchestrator.drawing import draw_arch_trajectory, draw_genotype

    out: dict[str, str | bytes] = {"genotype.json": genotype.to_json()}
    with tempfile.TemporaryDirectory() as tmp:
        out["fabric.png"] = Path(draw_genotype(genotype, Path(tmp) / "fabric.png")).read_bytes()
        out["arch_trajectory.png"] = Path(
            draw_arch_trajectory(history, genotype, Path(tmp) / "arch.png")
        ).read_bytes()
    return out
