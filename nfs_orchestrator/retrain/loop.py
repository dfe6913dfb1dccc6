"""Training the derived network of a genotype: one straight-line epoch loop, pure PyTorch.

    check the genotype against the retrain spec (before anything is built) →
    build data and ``DerivedPoseNet`` (optionally from a posenfs checkpoint's shared weights) →
    resume from the runtime's latest checkpoint, if any →
    for each epoch: weight steps; validate every ``val_every`` epochs and at the last;
                    checkpoint (state + a posenfs model file) and report through the runtime

Same determinism as the search loop: every epoch reseeds from (seed, epoch), so a resumed run
continues exactly where the checkpoint left it. What this is not: Ray or MLflow code.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.hardware import choose_execution, detect, prepare_model
from nfs_orchestrator.runtime import Runtime
from nfs_orchestrator.search.bilevel import weight_step
from nfs_orchestrator.search.schedules import lr_factor
from nfs_orchestrator.specs import RetrainSpec, check_compatible
from nfs_orchestrator.training import (
    batch_plan,
    epoch_batches,
    make_optimizer,
    mean,
    seed_everything,
    set_lr,
    to_device,
    validate,
)

STATE_FILE = "state.pt"
MODEL_FILE = "model.pt"


def check_retrainable(spec: RetrainSpec, genotype: Genotype) -> None:
    """Refuses a genotype that the retrain spec cannot train, with the reason."""
    check_compatible(genotype.space, genotype.grouping, spec.data.dataset, spec.data.input_size)
    if genotype.backbone and genotype.backbone != spec.backbone.name:
        raise SpecError(
            f"genotype {genotype.fingerprint()[:12]} was searched with backbone "
            f"{genotype.backbone}, the retrain spec uses {spec.backbone.name}"
        )
    from nfs_orchestrator.nn.ops import OPS

    unknown = {op for p in genotype.parts for c in p.cells for op in c.ops if op not in OPS}
    if unknown:
        raise SpecError(f"genotype uses ops this posenfs does not know: {sorted(unknown)}")


def build_derived(spec: RetrainSpec, genotype: Genotype):
    """The derived network with the spec's backbone weights and optional initial weights."""
    from nfs_orchestrator.model_io import read_model_file
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.derived import DerivedPoseNet, derived_state_from_supernet

    backbone = build_backbone(
        spec.backbone.name, spec.backbone.weights, random_init=spec.backbone.random_init
    )
    model = DerivedPoseNet(genotype, backbone)
    if spec.init_weights:
        body = read_model_file(spec.init_weights)
        state = body["model"]
        if body["kind"] == "supernet":
            state = derived_state_from_supernet(state, genotype)
        own = model.state_dict()
        shared = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        if not shared:
            raise SpecError(f"{spec.init_weights}: shares no weights with this derived network")
        model.load_state_dict(shared, strict=False)
    return model


def run_retrain(spec: RetrainSpec, genotype: Genotype, runtime: Runtime) -> dict[str, float]:
    """Trains (or resumes training) the derived network; returns the last epoch's metrics."""
    from nfs_orchestrator.data import build_dataset
    from nfs_orchestrator.model_io import save_model

    check_retrainable(spec, genotype)
    schema = genotype.grouping.schema
    device = runtime.device
    micro, accumulation = batch_plan(spec.batch_size, spec.micro_batch, runtime.world_size)

    seed_everything(spec.seed)
    train_set = build_dataset(spec.data, schema, "train", train=True)
    val_set = build_dataset(spec.data, schema, "val", train=False)
    model = build_derived(spec, genotype).to(device)
    runtime.broadcast_parameters(model)
    # after the broadcast (collectives want dense NCHW tensors), before the optimizer
    execution = choose_execution(detect(device), spec.precision, spec.memory_format)
    prepare_model(model, execution)
    if runtime.rank == 0:
        print(f"posenfs: retrain {spec.name}: {execution.describe()}", flush=True)
    weights = list(model.parameters())
    optimizer = make_optimizer(spec.optimizer, weights)
    indices = list(range(len(train_set)))

    start_epoch = 0
    if (ckpt := runtime.latest_checkpoint()) is not None:
        state = torch.load(Path(ckpt) / STATE_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = state["epoch"] + 1

    metrics: dict[str, float] = {}
    for epoch in range(start_epoch, spec.epochs):
        started = time.monotonic()
        seed_everything(spec.seed * 100_003 + epoch)
        lr = spec.optimizer.lr * lr_factor(spec.lr_schedule, epoch / spec.epochs)
        set_lr(optimizer, lr)
        model.train()
        losses = [
            weight_step(model, to_device(b, device), weights, optimizer, runtime, spec.grad_clip)
            for b in epoch_batches(
                train_set,
                indices,
                micro,
                accumulation,
                runtime,
                spec.seed + epoch,
                spec.steps_per_epoch,
                spec.loader_workers,
            )
        ]
        metrics = runtime.all_reduce_mean({"train_loss": mean(losses)})
        if (epoch + 1) % spec.val_every == 0 or epoch == spec.epochs - 1:
            val = (
                validate(model, val_set, spec.data, schema, device, spec.loader_workers)
                if runtime.rank == 0
                else {}
            )
            metrics.update(runtime.broadcast_object(val))
        metrics.update(
            epoch=epoch,
            epochs=spec.epochs,
            start_epoch=start_epoch,
            lr=lr,
            epoch_time_s=time.monotonic() - started,
        )
        with tempfile.TemporaryDirectory(prefix="posenfs-retrain-") as tmp:
            ckpt_dir = None
            if runtime.rank == 0:
                ckpt_dir = Path(tmp)
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                    },
                    ckpt_dir / STATE_FILE,
                )
                save_model(
                    ckpt_dir / MODEL_FILE,
                    model,
                    kind="derived",
                    space=genotype.space,
                    grouping=genotype.grouping,
                    backbone=spec.backbone.name,
                    input_size=spec.data.input_size,
                    genotype=genotype,
                )
            runtime.report(metrics, ckpt_dir, {})
        if runtime.should_stop():
            break
    return metrics
