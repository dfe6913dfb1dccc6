"""Per-epoch diagnostics of the α/β optimizer: is the search held still? (issue 14, point 3)

Two ways a differentiable search can look busy and decide nothing (benchmarks/RESULTS.md,
"Search signal"):

- **α/β held at the decay equilibrium.** With coupled L2 weight decay wd > 0 (Adam's
  ``weight_decay``) a parameter θ receives g + wd·θ, so it stops where θ* = −ḡ/wd, ḡ the mean
  gradient: the decay, not the loss, sets where θ sits, a few hundredths from zero for the
  small ḡ of a short search. ``decay_equilibrium_corr`` is the Pearson correlation, over every
  α/β entry, of θ with −ḡ/wd, ḡ the mean raw gradient (decay excluded) over the epoch's α/β
  steps. Undefined (``None``) without weight decay.
- **Adam steps far below lr.** Adam's step is lr·m̂/(√v̂ + ε): about lr when the gradient keeps
  its sign, far less when it flips from step to step (noise) or when g and wd·θ cancel.
  ``step_ratio`` is the mean |θ_after − θ_before| of an α/β step over the entries and the
  epoch's steps, divided by the lr of those steps.

``ArchMeter`` measures both by optimizer step hooks on the α/β optimizer (the raw gradient
before the step, the parameters on either side of it), so the loops and steps need no change;
``epoch_metrics`` returns the epoch's figures and flags as metrics and starts a new epoch.

Flags (metrics ``arch_flag_decay_equilibrium`` / ``arch_flag_small_steps``, 1.0 or 0.0), set
from the quickstart's base trial (coco-p1, seed 0, 12 epochs; benchmarks/arch_diagnostics.py,
benchmarks/RESULTS.md "Why the champion loses"):

- ``reference`` preset (Adam lr 0.03, coupled wd 1e-2, no warm-up): corr 0.77-0.94 in all 12
  epochs; step ratio 0.28 and 0.10 in epochs 1-2, then 0.051-0.078 (α/β entropy drop < 0.02).
- defaults (Adam lr 0.05, no decay, 2 warm-up epochs): corr undefined (no decay); step ratio
  0.12-0.35 in the 10 α/β epochs (entropy drops rising to 0.13/0.16).

So ``EQUILIBRIUM_CORR`` = 0.75 (below every reference epoch) and ``SMALL_STEP_RATIO`` = 0.1
(above every reference epoch after the second, below every default epoch; the margin to the
defaults' 0.12 is narrow). corr alone is not specific: a θ moved by its own gradient also
correlates with −ḡ; read it with the step ratio (both fire together from epoch 3 with the
reference preset).

What this is not: the confidence of the derived decisions (``confidence.py``) or the collapse
monitor (``search/loop.py``). No ray/optuna/mlflow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

EQUILIBRIUM_CORR = 0.75  # corr(θ, −ḡ/wd) at or above: θ sits at the decay equilibrium
SMALL_STEP_RATIO = 0.1  # mean |Adam step| / lr at or below: α/β barely move


def decay_equilibrium_corr(
    theta: Sequence[torch.Tensor], mean_grad: Sequence[torch.Tensor], weight_decay: float
) -> float | None:
    """Pearson correlation of θ with −ḡ/wd over every entry; ``None`` when wd ≤ 0 or either
    side is constant (no correlation is defined)."""
    if weight_decay <= 0 or not theta:
        return None
    x = torch.cat([t.detach().float().reshape(-1) for t in theta])
    y = torch.cat([-g.detach().float().reshape(-1) / weight_decay for g in mean_grad])
    x, y = x - x.mean(), y - y.mean()
    denom = float(x.norm() * y.norm())
    if denom == 0.0 or not math.isfinite(denom):
        return None
    return float((x * y).sum()) / denom


def step_ratio(mean_abs_step: float, lr: float) -> float | None:
    """mean |α/β step| / lr; ``None`` without steps or with lr 0."""
    if lr <= 0 or not math.isfinite(mean_abs_step):
        return None
    return mean_abs_step / lr


def flags(corr: float | None, ratio: float | None) -> dict[str, bool]:
    """Which diagnostics fire: the decay equilibrium (corr ≥ ``EQUILIBRIUM_CORR``) and small
    steps (ratio ≤ ``SMALL_STEP_RATIO``); an undefined figure never fires."""
    return {
        "decay_equilibrium": corr is not None and corr >= EQUILIBRIUM_CORR,
        "small_steps": ratio is not None and ratio <= SMALL_STEP_RATIO,
    }


def warning_line(metrics: dict[str, float], skip: frozenset[str] = frozenset()) -> str | None:
    """One line for the trial log when a flag fired in ``metrics`` (``ArchMeter.epoch_metrics``),
    else None; flags named in ``skip`` (``decay_equilibrium``, ``small_steps``) are left out."""
    said = []
    if metrics.get("arch_flag_decay_equilibrium") and "decay_equilibrium" not in skip:
        said.append(
            f"α/β sit at the weight-decay equilibrium −ḡ/wd (corr "
            f"{metrics['arch_decay_equilibrium_corr']:.2f} ≥ {EQUILIBRIUM_CORR}): the decay, "
            f"not the loss, sets them; lower search.arch_optimizer.weight_decay"
        )
    if metrics.get("arch_flag_small_steps") and "small_steps" not in skip:
        said.append(
            f"α/β Adam steps are {metrics['arch_step_ratio']:.3f} × lr (≤ {SMALL_STEP_RATIO}): "
            f"they barely move"
        )
    return "warning: " + "; ".join(said) if said else None


class ArchMeter:
    """Measures the α/β optimizer's epoch (module docstring) through its step hooks.

    Args:
        optimizer: the α/β optimizer; its parameters are what is measured. Its
            ``weight_decay`` counts as coupled decay for Adam and SGD (``adamw``'s decoupled
            decay also stops θ at −ḡ/wd, with the same test).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        self._before: list[torch.Tensor] = []
        self.warned: set[str] = set()  # flags already warned about in this run
        self._reset()
        optimizer.register_step_pre_hook(self._pre)
        optimizer.register_step_post_hook(self._post)

    def _reset(self) -> None:
        self.grad_sum = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.steps = 0
        self.abs_step_sum = 0.0  # Σ over steps of mean |Δθ|
        self.lr_sum = 0.0

    def _pre(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            for acc, p in zip(self.grad_sum, self.params):
                if p.grad is not None:
                    acc += p.grad.detach().float()
            self._before = [p.detach().float().clone() for p in self.params]

    def _post(self, optimizer, args, kwargs) -> None:
        with torch.no_grad():
            moved = torch.cat(
                [
                    (p.detach().float() - b).abs().reshape(-1)
                    for p, b in zip(self.params, self._before)
                ]
            )
        self.abs_step_sum += float(moved.mean())
        self.lr_sum += float(optimizer.param_groups[0]["lr"])
        self.steps += 1

    def epoch_metrics(self) -> dict[str, float]:
        """This epoch's figures and flags as metrics (empty when α/β took no step), then a
        fresh epoch."""
        if self.steps == 0:
            return {}
        wd = float(self.optimizer.param_groups[0].get("weight_decay", 0.0))
        mean_grad = [g / self.steps for g in self.grad_sum]
        corr = decay_equilibrium_corr(self.params, mean_grad, wd)
        ratio = step_ratio(self.abs_step_sum / self.steps, self.lr_sum / self.steps)
        fired = flags(corr, ratio)
        out = {
            "arch_flag_decay_equilibrium": float(fired["decay_equilibrium"]),
            "arch_flag_small_steps": float(fired["small_steps"]),
        }
        if corr is not None:
            out["arch_decay_equilibrium_corr"] = corr
        if ratio is not None:
            out["arch_step_ratio"] = ratio
        self._reset()
        return out

    def new_warning(self, metrics: dict[str, float]) -> str | None:
        """``warning_line`` for the flags of ``metrics`` not warned about before in this run
        (one line the first epoch a flag fires, not one per epoch)."""
        line = warning_line(metrics, frozenset(self.warned))
        for name in ("decay_equilibrium", "small_steps"):
            if metrics.get(f"arch_flag_{name}"):
                self.warned.add(name)
        return line
