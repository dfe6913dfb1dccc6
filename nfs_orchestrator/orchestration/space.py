"""The outer search space as an Optuna define-by-run function.

What this is: the one translation from ``campaign_spec.OuterParam`` (Optuna-agnostic) to Optuna
``suggest_*`` calls. The define-by-run function only suggests (Ray's OptunaSearch contract): it
computes nothing and returns nothing. Conditional parameters (``when``) are suggested only when
every named parameter was suggested with that value, so a trial's config holds only the active
ones. List or mapping choices are suggested as their canonical JSON labels
(``campaign_spec.choice_label``); ``campaign_spec.decode_params`` turns a trial's config back.

What it is not: the rules of the space (``campaign_spec``: checked when a campaign loads), the
Tune/Optuna wiring (``campaign.py``) or the trial builder (``CampaignSpec.trial``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import optuna

from nfs_orchestrator.campaign_spec import (
    OuterParam,
    check_outer,
    choice_labels,
    decode_value,
    is_active,
    suggestion_order,
)


def suggest(trial: optuna.Trial, key: str, param: OuterParam) -> Any:
    """One Optuna suggestion for ``param`` under the name ``key`` (the raw Optuna value)."""
    if param.type == "int":
        step = int(param.step) if param.step is not None else 1
        return trial.suggest_int(key, int(param.low), int(param.high), step=step, log=param.log)
    if param.type == "float":
        return trial.suggest_float(key, param.low, param.high, step=param.step, log=param.log)
    return trial.suggest_categorical(key, choice_labels(param))


class OuterSpace:
    """The define-by-run function for ``OptunaSearch(space=...)``: suggestions only.

    A module-level class, not a closure, because Tune saves the searcher with plain ``pickle``.
    """

    def __init__(self, outer: Mapping[str, OuterParam]) -> None:
        check_outer(outer)
        self.params = dict(outer)
        self.order = suggestion_order(self.params)

    def __call__(self, trial: optuna.Trial) -> None:
        values: dict[str, Any] = {}
        for key in self.order:
            param = self.params[key]
            if is_active(param, values):
                values[key] = decode_value(param, suggest(trial, key, param))


def define_by_run(outer: Mapping[str, OuterParam]) -> OuterSpace:
    """The define-by-run function of ``outer`` (see ``OuterSpace``)."""
    return OuterSpace(outer)
