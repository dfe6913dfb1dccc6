"""Schedules as pure functions of training progress in [0, 1) (after fvcore): a resumed or
early-stopped run can never get out of step with them."""

from __future__ import annotations

import math

from nfs_orchestrator.specs import ScheduleSpec, TemperatureSpec


def lr_factor(schedule: ScheduleSpec, progress: float) -> float:
    """Multiplier of the base learning rate at ``progress`` (epoch / epochs)."""
    if schedule.kind == "constant":
        return 1.0
    if schedule.kind == "multistep":
        return schedule.gamma ** sum(progress >= m for m in schedule.milestones)
    floor = schedule.min_lr_ratio
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def temperature(spec: TemperatureSpec, progress: float) -> float:
    """Softmax temperature of α/β: linear from ``start`` to ``end``."""
    return spec.start + (spec.end - spec.start) * progress


def alpha_pull(weight: float, progress: float) -> float:
    """Weight of the α entropy pull (``search.alpha_entropy_weight``) at ``progress``: linear
    from 0, so the early leads of α, mostly noise, are not locked in; the full weight is
    reached at the end of the search."""
    return weight * progress
