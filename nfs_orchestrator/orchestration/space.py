"""The outer search space: a campaign's ``outer`` parameters as an Optuna define-by-run function.

What this is: the one translation from ``specs.OuterParam`` (Optuna-agnostic) to Optuna
``suggest_*`` calls, and back from what Optuna/Tune hand a trial to the values that
``CampaignSpec.trial`` expects. The define-by-run function only suggests (Ray's OptunaSearch
contract): it computes nothing and returns nothing. Conditional parameters (``when``) are
suggested only when every named parameter was suggested with that value, so a trial's config
holds only the active ones.

Optuna's categorical choices must be None/bool/int/float/str; list or mapping choices (an op set,
a scale list) are suggested as their canonical JSON text and decoded back by ``decode_params``.

What it is not: the Tune/Optuna wiring (``campaign.py``) or the trial builder (``specs.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import optuna

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.specs import OuterParam

_SCALARS = (str, int, float, bool, type(None))


def choice_label(choice: Any) -> Any:
    """The value Optuna sees for a categorical choice: scalars as they are, lists and mappings
    as canonical JSON text (``["zero","skip_connect"]``)."""
    if isinstance(choice, _SCALARS):
        return choice
    return json.dumps(choice, sort_keys=True, separators=(",", ":"))


def choice_labels(param: OuterParam) -> list[Any]:
    """All labels of a categorical parameter, in the spec's order; duplicates are an error."""
    labels = [choice_label(c) for c in param.choices or ()]
    if len(set(map(json.dumps, labels))) != len(labels):
        raise SpecError(f"choices: repeated choice in {labels}")
    return labels


def decode_value(param: OuterParam, value: Any) -> Any:
    """A suggested value → the campaign value (a label back to its list/mapping choice)."""
    if param.type == "int":
        return int(value)
    if param.type == "float":
        return float(value)
    for choice in param.choices or ():
        if choice_label(choice) == value:
            return json.loads(json.dumps(choice))  # a fresh copy of lists/mappings
    raise SpecError(f"{value!r} is not one of the choices {list(param.choices or ())}")


def suggestion_order(outer: Mapping[str, OuterParam]) -> list[str]:
    """Keys ordered so that every parameter comes after those its ``when`` names (spec order
    otherwise). A cycle is an error."""
    order: list[str] = []
    pending = list(outer)
    while pending:
        ready = [k for k in pending if all(c in order for c in outer[k].when or {})]
        if not ready:
            raise SpecError(f"outer: the 'when' conditions of {pending} form a cycle")
        order.extend(ready)
        pending = [k for k in pending if k not in ready]
    return order


def is_active(param: OuterParam, values: Mapping[str, Any]) -> bool:
    """Whether a conditional parameter applies, given the values suggested before it."""
    return all(name in values and values[name] == want for name, want in (param.when or {}).items())


def check_space(outer: Mapping[str, OuterParam]) -> None:
    """Fails with a one-line SpecError on what Optuna would reject at the first trial."""
    for key, param in outer.items():
        where = f"outer.{key}"
        if param.type == "categorical":
            try:
                choice_labels(param)
            except SpecError as e:
                raise SpecError(f"{where}: {e}") from None
        if param.log and param.step is not None:
            raise SpecError(f"{where}: log and step cannot be combined (Optuna)")
        if param.type == "int" and param.step is not None and param.step != int(param.step):
            raise SpecError(f"{where}: an int parameter needs an integer step")
        for name, want in (param.when or {}).items():
            cond = outer[name]
            if cond.type == "categorical" and want not in list(cond.choices or ()):
                raise SpecError(
                    f"{where}.when: {name} = {want!r} is not one of its choices "
                    f"{list(cond.choices or ())}"
                )
    suggestion_order(outer)


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
        check_space(outer)
        self.params = dict(outer)
        self.order = suggestion_order(self.params)

    def __call__(self, trial: optuna.Trial) -> None:
        values: dict[str, Any] = {}
        for key in self.order:
            param = self.params[key]
            if is_active(param, values):
                values[key] = decode_value(param, suggest(trial, key, param))


def define_by_run(outer: Mapping[str, OuterParam]) -> Callable[[optuna.Trial], None]:
    """The define-by-run function of ``outer`` (see ``OuterSpace``)."""
    return OuterSpace(outer)


def decode_params(outer: Mapping[str, OuterParam], config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's Tune config (Optuna labels) → the ``params`` of ``CampaignSpec.trial``.

    Keys outside the outer space (constants) are ignored; inactive conditional parameters are
    absent from the config and stay absent here, so the campaign's base value applies.
    """
    return {key: decode_value(outer[key], config[key]) for key in outer if key in config}
