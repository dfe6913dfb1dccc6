"""One optimisation step of the supernet, for each search mode (PoseNFS §3.1, DARTS).

- ``weight_step``: the weights on a batch (every mode); under ``search.weight_mixture: uniform``
  at α/β = 0 (``PoseSupernet.uniform_mixture``), so the weights never adapt to α/β.
- ``joint_step``: ``sync`` mode, the reference's single-level step: one backward into weights and
  α/β, each optimizer steps its own group.
- ``arch_step_first_order``: α/β on an arch-validation batch, the weights held fixed.
- ``arch_step_second_order``: DARTS' unrolled step. The virtual weights w' = w - η·∇w L_train
  live only in a dict fed to ``torch.func.functional_call``: the real module (backbone included)
  is never written to, and the batch-norm statistics of the virtual passes go to copies. The
  Hessian-vector product uses DARTS' central difference with r = 0.01 / ‖∇w' L_val‖.

A positive ``alpha_entropy_weight`` (``search.alpha_entropy_weight``) adds that multiple of the
supernet's mean normalised α entropy to the loss of every α/β step: a pull toward one op per
row, the more so the further a row already leans (its gradient is zero at uniform α).

Every step takes a list of micro-batches (gradient accumulation) and averages gradients over
ranks through the runtime, so α/β are identical on every rank after every step. Every forward
pass runs under the loop's ``execution`` (``hardware.run_model``: autocast and input layout).

``STEPS`` maps each search mode to its whole training step (α/β step, if any, then the weights),
so the search loop chooses the step once per epoch (``WEIGHTS_ONLY`` while α/β rest) and calls it
on every batch, like DARTS' ``architect.step``.
What this is not: the epoch loop (``search/loop.py``) or the schedules (``search/schedules.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from nfs_orchestrator.hardware import Execution, run_model
from nfs_orchestrator.nn.losses import joints_mse
from nfs_orchestrator.runtime import Runtime

Batch = dict[str, torch.Tensor]


def batch_loss(model: nn.Module, batch: Batch, execution: Execution | None = None) -> torch.Tensor:
    pred = run_model(model, batch["image"], execution)  # (B, K, H/4, W/4) fp32
    return joints_mse(pred, batch["heatmaps"], batch["target_weight"])


def _accumulate(
    model: nn.Module,
    batches: Sequence[Batch],
    inputs: list[nn.Parameter],
    execution: Execution | None,
) -> float:
    """Backward of the mean loss over micro-batches into ``inputs`` only; returns the loss."""
    total = 0.0
    for batch in batches:
        loss = batch_loss(model, batch, execution) / len(batches)
        loss.backward(inputs=inputs)
        total += float(loss.detach())
    return total


def _pull_alpha(model: nn.Module, weight: float) -> None:
    """Adds weight · ∇α of the normalised α entropy (``PoseSupernet.alpha_entropy``) to α's
    gradients; the entropy is the same on every rank, so gradient averaging keeps it."""
    if weight:
        (weight * model.alpha_entropy()).backward()


def weight_step(
    model: nn.Module,
    batches: Sequence[Batch],
    weights: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    grad_clip: float | None = None,
    execution: Execution | None = None,
) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = _accumulate(model, batches, weights, execution)
    runtime.sync_gradients(weights)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(weights, grad_clip)
    optimizer.step()
    return loss


def joint_step(
    model: nn.Module,
    batches: Sequence[Batch],
    weights: list[nn.Parameter],
    arch: list[nn.Parameter],
    w_optimizer: torch.optim.Optimizer,
    a_optimizer: torch.optim.Optimizer | None,
    runtime: Runtime,
    grad_clip: float | None = None,
    execution: Execution | None = None,
    alpha_entropy_weight: float = 0.0,
) -> float:
    w_optimizer.zero_grad(set_to_none=True)
    if a_optimizer is not None:
        a_optimizer.zero_grad(set_to_none=True)
    loss = _accumulate(model, batches, weights + arch, execution)
    _pull_alpha(model, alpha_entropy_weight)
    runtime.sync_gradients(weights + arch)
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(weights, grad_clip)
    w_optimizer.step()
    if a_optimizer is not None:
        a_optimizer.step()
    return loss


def arch_step_first_order(
    model: nn.Module,
    batches: Sequence[Batch],
    arch: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    execution: Execution | None = None,
    alpha_entropy_weight: float = 0.0,
) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = _accumulate(model, batches, arch, execution)
    _pull_alpha(model, alpha_entropy_weight)
    runtime.sync_gradients(arch)
    optimizer.step()
    return loss


def _grad(loss: torch.Tensor, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d inputs, zeros for inputs the forward did not use (with ``sampling: gumbel``
    only the drawn op of each edge runs)."""
    grads = torch.autograd.grad(loss, list(inputs), allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(inputs, grads)]


def arch_step_second_order(
    model: nn.Module,
    train_batches: Sequence[Batch],
    val_batches: Sequence[Batch],
    arch: list[nn.Parameter],
    optimizer: torch.optim.Optimizer,
    runtime: Runtime,
    eta: float,
    weight_decay: float,
    execution: Execution | None = None,
    alpha_entropy_weight: float = 0.0,
) -> float:
    """DARTS second-order α/β step; ``eta``/``weight_decay`` are the weight optimizer's."""
    arch_ids = {id(p) for p in arch}
    names = [n for n, p in model.named_parameters() if id(p) not in arch_ids and p.requires_grad]
    params = dict(model.named_parameters())
    w = {n: params[n] for n in names}
    a = {n: p for n, p in model.named_parameters() if id(p) in arch_ids}

    def loss_with(weights: dict[str, torch.Tensor], batches: Sequence[Batch]) -> torch.Tensor:
        buffers = {n: b.clone() for n, b in model.named_buffers()}  # virtual passes: copies
        call: Callable = lambda x: functional_call(model, {**weights, **a, **buffers}, (x,))  # noqa: E731
        return sum(
            joints_mse(run_model(call, b["image"], execution), b["heatmaps"], b["target_weight"])
            for b in batches
        ) / len(batches)

    # virtual step w' = w - η (∇w L_train + λ w)
    g_train = _grad(loss_with(w, train_batches), list(w.values()))
    w_virtual = {
        n: (p - eta * (g + weight_decay * p)).detach().requires_grad_(True)
        for (n, p), g in zip(w.items(), g_train)
    }
    val_loss = loss_with(w_virtual, val_batches)
    grads = _grad(val_loss, list(a.values()) + list(w_virtual.values()))
    d_arch, d_w = grads[: len(a)], grads[len(a) :]
    # finite-difference Hessian-vector product ∇²_{α,w} L_train · d_w
    r = 0.01 / torch.sqrt(sum((g * g).sum() for g in d_w)).clamp_min(1e-12)
    with torch.no_grad():
        w_plus = {n: p + r * g for (n, p), g in zip(w.items(), d_w)}
        w_minus = {n: p - r * g for (n, p), g in zip(w.items(), d_w)}
    g_plus = _grad(loss_with(w_plus, train_batches), list(a.values()))
    g_minus = _grad(loss_with(w_minus, train_batches), list(a.values()))
    optimizer.zero_grad(set_to_none=True)
    for p, da, gp, gm in zip(a.values(), d_arch, g_plus, g_minus):
        p.grad = da - eta * (gp - gm) / (2 * r)
    _pull_alpha(model, alpha_entropy_weight)
    runtime.sync_gradients(arch)
    optimizer.step()
    return float(val_loss.detach())


# --------------------------------------------------------------------------------------------
# One training step per search mode
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepState:
    """What a training step of any mode works on; ``eta`` is this epoch's weight lr."""

    model: nn.Module
    weights: list[nn.Parameter]
    arch: list[nn.Parameter]
    w_optimizer: torch.optim.Optimizer
    a_optimizer: torch.optim.Optimizer | None
    runtime: Runtime
    grad_clip: float | None
    eta: float
    weight_decay: float
    execution: Execution | None  # precision/layout of every forward (hardware.run_model)
    alpha_entropy_weight: float = 0.0  # search.alpha_entropy_weight
    uniform_weights: bool = False  # search.weight_mixture == "uniform": weight steps at α/β = 0


# (state, the step's micro-batches, the arch micro-batches to draw from) -> (train loss,
# arch loss or None); a step draws one item of arch batches only when it steps α/β.
TrainStep = Callable[
    [StepState, Sequence[Batch], Iterator[Sequence[Batch]]], tuple[float, float | None]
]


def _weights_only(s: StepState, batches, arch_batches) -> tuple[float, float | None]:
    mixture = s.model.uniform_mixture() if s.uniform_weights else nullcontext()
    with mixture:
        loss = weight_step(
            s.model, batches, s.weights, s.w_optimizer, s.runtime, s.grad_clip, s.execution
        )
    return loss, None


def _first_order(s: StepState, batches, arch_batches) -> tuple[float, float | None]:
    arch_loss = arch_step_first_order(
        s.model,
        next(arch_batches),
        s.arch,
        s.a_optimizer,
        s.runtime,
        s.execution,
        s.alpha_entropy_weight,
    )
    return _weights_only(s, batches, arch_batches)[0], arch_loss


def _second_order(s: StepState, batches, arch_batches) -> tuple[float, float | None]:
    arch_loss = arch_step_second_order(
        s.model,
        batches,
        next(arch_batches),
        s.arch,
        s.a_optimizer,
        s.runtime,
        s.eta,
        s.weight_decay,
        s.execution,
        s.alpha_entropy_weight,
    )
    return _weights_only(s, batches, arch_batches)[0], arch_loss


def _sync(s: StepState, batches, arch_batches) -> tuple[float, float | None]:
    loss = joint_step(
        s.model,
        batches,
        s.weights,
        s.arch,
        s.w_optimizer,
        s.a_optimizer,
        s.runtime,
        s.grad_clip,
        s.execution,
        s.alpha_entropy_weight,
    )
    return loss, None


WEIGHTS_ONLY: TrainStep = _weights_only  # any mode while α/β are not trained
STEPS: dict[str, TrainStep] = {
    "first_order": _first_order,
    "second_order": _second_order,
    "sync": _sync,
    "random": _weights_only,
    "none": _weights_only,
}
