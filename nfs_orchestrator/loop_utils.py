"""Loop helpers: what the search loop (``search/loop.py``) and the retrain loop
(``retrain/loop.py``) share — batch plans and batch streams (``epoch_steps``: exactly
``steps_per_epoch`` steps in every mode), seeding, optimizers and learning
rates, moving batches to the device, validation — and ``evaluate_on`` behind
``posenfs evaluate checkpoint``. It sits at the top of the package because neither loop owns
it (``search/`` and ``retrain/`` are siblings). Pure PyTorch. What it is not: a loop; the loops
read top to bottom in their own modules.

Batches: ``batch_size`` images per optimizer step over all workers; each of the W workers runs
``micro`` images per forward and accumulates ``batch_size / (W · micro)`` micro-batches, so the
effective batch does not change with the number of workers (elastic training).
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.hardware import Execution
from nfs_orchestrator.nn.losses import joints_mse
from nfs_orchestrator.runtime import Runtime
from nfs_orchestrator.specs import DataSpec, OptimSpec


def batch_plan(batch_size: int, micro_batch: int | None, world_size: int) -> tuple[int, int]:
    """(micro_batch per worker, accumulation steps) for ``batch_size`` images per step."""
    micro = micro_batch or max(1, batch_size // world_size)
    if batch_size % (world_size * micro):
        raise SpecError(
            f"batch_size {batch_size} is not a multiple of workers × micro_batch "
            f"= {world_size} × {micro}; change batch_size or set micro_batch"
        )
    return micro, batch_size // (world_size * micro)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict[str, Any]:
    """This process's torch (CPU and every GPU), numpy and python RNG states, in types that
    ``torch.load(weights_only=True)`` reads back (a mid-epoch checkpoint holds one per rank)."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), gauss],
        "python": [version, list(words), gauss_next],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Puts back what ``get_rng_state`` took."""
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.cpu().numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, words, gauss_next = state["python"]
    random.setstate((version, tuple(words), gauss_next))


def make_optimizer(spec: OptimSpec, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer of ``spec``; on a GPU its fused kernels (one launch per step, not one per
    tensor; not measured here: no GPU was lent), on CPU torch's default implementation."""
    params = list(params)
    fused = True if params and all(p.is_cuda for p in params) else None
    if spec.name == "sgd":
        return torch.optim.SGD(
            params, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay, fused=fused
        )
    cls = torch.optim.AdamW if spec.name == "adamw" else torch.optim.Adam
    return cls(params, lr=spec.lr, betas=spec.betas, weight_decay=spec.weight_decay, fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _loader(
    dataset: Dataset, batches: list[list[Any]], workers: int, device: torch.device, seed: int
) -> DataLoader:
    """One pass's loader; pinned host memory when batches go to a GPU (``to_device`` copies
    them with ``non_blocking``). Its own generator (seeded by the pass) draws the loader's base
    seed, so creating it leaves the global RNG streams alone: a pass started mid-way by a resume
    sees the same global random numbers as the uninterrupted one."""
    from nfs_orchestrator.data import worker_init

    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=workers,
        worker_init_fn=worker_init if workers else None,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )


def _sample_key(dataset: Dataset, index: int, seed: int, position: int) -> Any:
    """What the loader hands ``dataset`` for the sample at ``position`` of a pass seeded
    ``seed``: a ``SampleKey`` for our datasets (augmentation seeded by seed and position, see
    ``data.dataset``), the bare index for any other."""
    from nfs_orchestrator.data import TopDownDataset

    return (int(index), seed, position) if isinstance(dataset, TopDownDataset) else index


def epoch_batches(
    dataset: Dataset,
    indices: Sequence[int],
    micro: int,
    accumulation: int,
    runtime: Runtime,
    seed: int,
    max_steps: int | None = None,
    workers: int = 0,
    start: int = 0,
) -> Iterator[list[dict[str, Any]]]:
    """This rank's micro-batches for one epoch, grouped per optimizer step, from step ``start``
    (a resume in the middle of the pass: the steps before it are skipped in the plan, no image
    is loaded for them).

    The permutation is a function of ``seed``; rank r takes every W-th micro-batch, so ranks see
    disjoint images and together cover ``batch_size`` images per step. Incomplete steps are
    dropped (every rank takes the same number of steps: collectives stay in lock-step).
    """
    order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed)).tolist()
    per_step = micro * runtime.world_size * accumulation
    steps = len(order) // per_step
    if max_steps is not None:
        steps = min(steps, max_steps)
    micro_batches = []
    for s in range(start, steps):
        for a in range(accumulation):
            first = s * per_step + (a * runtime.world_size + runtime.rank) * micro
            positions = range(first, first + micro)
            micro_batches.append(
                [_sample_key(dataset, indices[order[p]], seed, p) for p in positions]
            )
    if not micro_batches:
        return
    it = iter(_loader(dataset, micro_batches, workers, runtime.device, seed))
    for _ in range(start, steps):
        yield [next(it) for _ in range(accumulation)]


def cycle_batches(
    dataset: Dataset,
    indices: Sequence[int],
    micro: int,
    accumulation: int,
    runtime: Runtime,
    seed: int,
    workers: int = 0,
    skip: int = 0,
) -> Iterator[list[dict[str, Any]]]:
    """Endless steps over ``indices``: one reseeded ``epoch_batches`` pass after another, the
    first ``skip`` steps left out (a resume in the middle of an epoch: as many as were drawn)."""
    per_pass = len(indices) // (micro * runtime.world_size * accumulation)
    if not per_pass:
        return
    k, skip = divmod(skip, per_pass)
    while indices:
        yield from epoch_batches(
            dataset, indices, micro, accumulation, runtime, seed * 7919 + k, None, workers, skip
        )
        k, skip = k + 1, 0


def to_device(batches: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [
        {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in b.items()}
        for b in batches
    ]


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def validate(
    model: nn.Module,
    val_set: Dataset,
    data: DataSpec,
    schema,
    device: torch.device,
    workers: int = 0,
    execution: Execution | None = None,
    grouping=None,
) -> dict[str, float]:
    """Heatmap loss and the dataset's metric (COCO AP / MPII PCKh) on the validation split,
    forward passes under the loop's ``execution``; and each part's (``val_ap.<part>`` /
    ``val_pckh.<part>``) of ``grouping``, by default the model's own (a supernet's
    ``grouping``, a derived network's ``genotype.grouping``)."""
    from nfs_orchestrator.data import evaluate_model
    from nfs_orchestrator.part_metrics import model_grouping, part_accuracy_metrics

    grouping = grouping if grouping is not None else model_grouping(model)

    losses = []

    def heatmap_loss(pred: torch.Tensor, batch: dict[str, Any]) -> None:  # the same forward
        target, weight = batch["heatmaps"].to(device), batch["target_weight"].to(device)
        losses.append(float(joints_mse(pred, target, weight)))

    with tempfile.TemporaryDirectory(prefix="posenfs-val-") as work:
        stats = evaluate_model(
            model,
            val_set,
            data,
            schema,
            device=device,
            work_dir=work,
            num_workers=workers,
            observe=heatmap_loss,
            execution=execution,
            grouping=grouping,
        )
    out = {"val_loss": mean(losses)}
    if data.dataset == "mpii":
        out["val_pckh"] = float(stats["Mean"])
    else:
        out["val_ap"] = float(stats["AP"])
        out["val_ap50"] = float(stats["AP50"])
    out.update(part_accuracy_metrics(stats))
    return out


def evaluate_on(model: nn.Module, data: DataSpec, device: str = "cpu") -> dict[str, float]:
    """The dataset's official stats (COCO ten stats / MPII PCKh) of ``model`` on ``data``'s
    validation split; the schema is the model's grouping's."""
    from nfs_orchestrator.data import build_dataset, evaluate_model

    schema = model.genotype.grouping.schema if hasattr(model, "genotype") else model.grouping.schema
    val_set = build_dataset(data, schema, "val", train=False)
    model = model.to(device).eval()
    with tempfile.TemporaryDirectory(prefix="posenfs-eval-") as work:
        return evaluate_model(model, val_set, data, schema, device=device, work_dir=work)


# --------------------------------------------------------------------------------------------
# How many optimizer steps an epoch of the search takes. ``search.steps_per_epoch`` is the
# number of weight steps an epoch runs, exactly, in every mode (and with it the number of α/β
# steps in first_order/second_order: one arch step per weight step). When the weight split holds
# fewer batches than that, the epoch goes on into another pass over it, reshuffled by a seed that
# is a function of (epoch seed, pass), so a resumed run takes the same batches; None keeps one
# pass. (Before, steps_per_epoch was only a cap: the quickstart's 40 ran 21 steps, silently.)
# --------------------------------------------------------------------------------------------

PASS_SEED_STRIDE = 7919  # pass k > 0 of an epoch seeded ``seed * 7919 + k`` (as cycle_batches)


def epoch_steps(
    dataset: Dataset,
    indices: Sequence[int],
    micro: int,
    accumulation: int,
    runtime: Runtime,
    seed: int,
    steps: int | None,
    workers: int = 0,
    start: int = 0,
) -> Iterator[list[dict[str, Any]]]:
    """This rank's micro-batches for ``steps`` optimizer steps (None: one pass over
    ``indices``), from step ``start`` (a mid-epoch resume: the same batches the uninterrupted
    epoch takes from there). The first pass is ``epoch_batches(..., seed)`` itself, so a run
    whose ``steps`` fit into one pass takes exactly the batches it took before."""
    if steps is None:
        yield from epoch_batches(
            dataset, indices, micro, accumulation, runtime, seed, None, workers, start
        )
        return
    per_pass = len(indices) // (micro * runtime.world_size * accumulation)
    if per_pass == 0:  # fewer images than one step: nothing will come
        return
    done = start
    while done < steps:
        k, within = divmod(done, per_pass)
        pass_seed = seed if k == 0 else seed * PASS_SEED_STRIDE + k
        last = min(per_pass, within + steps - done)  # this pass's steps end here
        yield from epoch_batches(
            dataset, indices, micro, accumulation, runtime, pass_seed, last, workers, within
        )
        done += last - within


def steps_in_epoch(num_indices: int, per_step: int, steps: int | None) -> int:
    """How many steps ``epoch_steps`` yields for ``num_indices`` images and ``per_step`` images
    per step (= micro × workers × accumulation)."""
    one_pass = num_indices // per_step
    if steps is None or one_pass == 0:
        return one_pass
    return steps
