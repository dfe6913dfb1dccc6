"""A campaign: the outer, black-box search over trials, as one frozen, validated spec.

What this is: ``CampaignSpec`` (a base trial, the ``outer`` domains Optuna explores, objectives,
budget, resources, storage) and ``load_campaign``, plus the pure rules of the outer space that
Optuna and Tune rely on (``choice_label``, ``suggestion_order``, ``decode_params``). A campaign
that loads is one that can run: every reference is resolved into the typed ``catalog`` at load,
the outer space is checked as Optuna will read it, and every value an outer domain can produce
(the bounds of each range, every categorical choice, each conditional branch) is built into a
trial whose own validation must pass. ``CampaignSpec.trial(params)`` builds one trial from typed
specs with ``dataclasses.replace``: no dict round trip.

What it is not: the specs of one trial (``specs.py``) or the Optuna suggestions (``orchestration/
space.py``); nothing here imports ray, optuna or mlflow.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.keypoints import PartGrouping, load_grouping
from nfs_orchestrator.specs import (
    BackboneSpec,
    DataSpec,
    FabricSpace,
    ResourceSpec,
    SearchSpec,
    StorageSpec,
    TrialSpec,
    load_fabric,
)
from nfs_orchestrator.strict import (
    Spec,
    apply_overrides,
    fingerprint,
    from_mapping,
    read_yaml,
    replace_path,
    suggest,
)

# What every epoch of a search trial reports (search/loop.py; a test runs the loop and checks
# it), besides the dataset's validation metrics and the per-part ones.
SEARCH_METRICS = (
    "train_loss", "val_loss", "alpha_entropy", "beta_entropy", "param_free_share",
    "cells_kept", "macs", "params", "confidence_decided", "margin_median",
    "alpha_entropy_drop", "beta_entropy_drop", "flip_share", "undecided",
    "epoch_time_s", "setup_s", "temperature", "lr",
)  # fmt: skip
VAL_METRICS = {"mpii": ("val_pckh",), "coco": ("val_ap", "val_ap50")}  # synthetic: as COCO
BILEVEL_METRICS = ("arch_loss",)  # first_order / second_order only

TRIAL_FIELDS = ("fabric", "grouping", "search", "data", "backbone", "seed")  # what outer may set
REFERENCES = ("fabric", "grouping")  # outer keys that choose a file of search_spaces/


@dataclass(frozen=True)
class OuterParam(Spec):
    """One outer search dimension for Optuna, keyed in ``CampaignSpec.outer`` by the dotted path
    of the trial field it sets (``fabric.depth``, ``search.arch_optimizer.lr``, ``grouping``).

    ``when`` makes it conditional: suggested only when every named parameter has that value;
    otherwise the campaign's base value stays.
    """

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None  # categorical; lists allowed (e.g. op sets)
    when: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise SpecError("choices: required and non-empty for a categorical parameter")
            if self.low is not None or self.high is not None:
                raise SpecError("low/high: not used by a categorical parameter")
        else:
            if self.low is None or self.high is None or self.low > self.high:
                raise SpecError(f"low/high: required with low ≤ high for a {self.type} parameter")
            if self.choices is not None:
                raise SpecError(f"choices: not used by a {self.type} parameter")
            if self.log and self.low <= 0:
                raise SpecError("log: needs low > 0")
            if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
                raise SpecError("low/high: an int parameter needs integer bounds")


@dataclass(frozen=True)
class Objective(Spec):
    """A metric the campaign optimises: val_ap, val_pckh, val_loss, macs or params."""

    metric: str = "val_ap"
    mode: Literal["max", "min"] = "max"


@dataclass(frozen=True)
class AshaSpec(Spec):
    """ASHA early stopping over epochs (single-objective campaigns only)."""

    enabled: bool = True
    grace_period: int = 1
    reduction_factor: int = 2


@dataclass(frozen=True)
class BudgetSpec(Spec):
    """How many trials, how many at once, early stopping and retries.

    ``seeds``: every configuration Optuna suggests runs as that many trials, with trial seeds
    ``seed``, ``seed + 1``, …; Optuna is told their mean. ``num_trials`` counts them all, so it
    must be a multiple of ``seeds``. ASHA is off when seeds > 1 (it would stop some seeds of a
    configuration and not others)."""

    num_trials: int = 4
    max_concurrent: int = 1
    asha: AshaSpec = field(default_factory=AshaSpec)
    trial_retries: int = 1  # Tune-level retries of a failed trial (it resumes from checkpoint)
    worker_retries: int = 1  # Train-level restarts of the worker group within a trial
    seeds: int = 1  # trials per suggested configuration, each with its own seed

    LATE_FIELDS: ClassVar[tuple[str, ...]] = ("seeds",)

    def __post_init__(self) -> None:
        if self.num_trials < 1 or self.max_concurrent < 1:
            raise SpecError("num_trials and max_concurrent must be ≥ 1")
        if self.seeds < 1:
            raise SpecError(f"seeds: {self.seeds} must be ≥ 1")
        if self.num_trials % self.seeds:
            raise SpecError(
                f"num_trials: {self.num_trials} is not a multiple of seeds ({self.seeds}); "
                f"it counts every seed of every configuration"
            )

    @property
    def early_stopping(self) -> bool:
        """Whether ASHA runs (single-objective campaigns also need it; see CampaignSpec)."""
        return self.asha.enabled and self.seeds == 1


# --------------------------------------------------------------------------------------------
# The outer space's rules (Optuna-agnostic)
# --------------------------------------------------------------------------------------------

_SCALARS = (str, int, float, bool, type(None))


def choice_label(choice: Any) -> Any:
    """The value Optuna sees for a categorical choice: scalars as they are, lists and mappings
    as canonical JSON text (``["zero","skip_connect"]``); Optuna's categorical choices must be
    None/bool/int/float/str."""
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


def decode_params(outer: Mapping[str, OuterParam], config: Mapping[str, Any]) -> dict[str, Any]:
    """A trial's Tune config (Optuna labels) → the ``params`` of ``CampaignSpec.trial``.

    Keys outside the outer space (constants) are ignored; inactive conditional parameters are
    absent from the config and stay absent here, so the campaign's base value applies.
    """
    return {key: decode_value(outer[key], config[key]) for key in outer if key in config}


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


def check_outer(outer: Mapping[str, OuterParam]) -> None:
    """Fails with a one-line SpecError on what Optuna would reject at the first trial."""
    for key, param in outer.items():
        where = f"outer.{key}"
        if key in REFERENCES and (
            param.type != "categorical" or not all(isinstance(c, str) for c in param.choices or ())
        ):
            raise SpecError(f"{where}: must be categorical over file references")
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
            if name not in outer:
                raise SpecError(f"{where}.when: {name!r} is not an outer parameter")
            cond = outer[name]
            if cond.type == "categorical" and want not in list(cond.choices or ()):
                raise SpecError(
                    f"{where}.when: {name} = {want!r} is not one of its choices "
                    f"{list(cond.choices or ())}"
                )
    suggestion_order(outer)


def domain_values(param: OuterParam) -> list[Any]:
    """The values of a domain that validation tries: both bounds of a range, every choice."""
    if param.type == "categorical":
        return [json.loads(json.dumps(c)) for c in param.choices or ()]
    cast = int if param.type == "int" else float
    return [cast(param.low), cast(param.high)]


# --------------------------------------------------------------------------------------------
# The campaign
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CampaignSpec(Spec):
    """A campaign: a base trial plus the outer domains Optuna explores, objective and budget.

    ``fabric`` and ``grouping`` are references into ``search_spaces/``; at load time every
    reference the campaign can use (base and categorical choices) is resolved into ``catalog``
    (ref → ``FabricSpace`` or ``PartGrouping``), so that workers never read spec files and the
    fingerprint covers what actually runs. A spec with an empty catalog is unresolved: only
    ``load_campaign`` and ``from_dict`` make one, on the way to a resolved one.
    """

    name: str
    data: DataSpec
    backbone: BackboneSpec
    fabric: str
    grouping: str
    search: SearchSpec = field(default_factory=SearchSpec)
    outer: dict[str, OuterParam] = field(default_factory=dict)
    objectives: tuple[Objective, ...] = (Objective(),)
    budget: BudgetSpec = field(default_factory=BudgetSpec)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    storage: StorageSpec = field(default_factory=StorageSpec)
    seed: int = 0
    catalog: dict[str, FabricSpace | PartGrouping] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.replace("-", "").replace("_", "").isalnum():
            raise SpecError(f"name: {self.name!r} may hold only letters, digits, '-' and '_'")
        if not self.objectives:
            raise SpecError("objectives: at least one")
        for key in self.outer:
            if key.split(".")[0] not in TRIAL_FIELDS:
                raise SpecError(
                    f"outer.{key}: must set a trial field (fabric.*, grouping, search.*, data.*, "
                    f"backbone.*, seed)"
                )
        check_outer(self.outer)
        if self.catalog:  # resolved: every trial the space allows must be valid
            self.check_trials()
            self.check_metrics()

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def campaign_id(self) -> str:
        """``<name>-<fingerprint[:8]>``: the same spec always gets the same id."""
        return f"{self.name}-{self.fingerprint()[:8]}"

    def fingerprint(self) -> str:
        """Over what the campaign computes; where it runs (resources, storage) is left out."""
        body = self.identity()  # later fields (Spec.LATE_FIELDS) count once set
        for key in ("resources", "storage"):
            body.pop(key)
        body["budget"].pop("max_concurrent")
        return fingerprint(body)

    def reported_metrics(self) -> list[str]:
        """Every metric a trial of this campaign reports each epoch: the search loop's, the
        dataset's validation metrics, and each part's (``val_ap.<part>`` / ``val_pckh.<part>``,
        ``params.<part>``, ``macs.<part>``) of every grouping the campaign can use."""
        val = VAL_METRICS["mpii" if self.data.dataset == "mpii" else "coco"]
        names = [*SEARCH_METRICS, *val]
        if self.search.mode in ("first_order", "second_order"):
            names += BILEVEL_METRICS
        for ref in self.references("grouping"):
            for part in self.catalog[ref].parts:
                names += [f"{val[0]}.{part.name}", f"params.{part.name}", f"macs.{part.name}"]
        return list(dict.fromkeys(names))

    def check_metrics(self) -> None:
        """Every objective names a metric the trials report (exact, case-sensitive)."""
        known = self.reported_metrics()
        for i, objective in enumerate(self.objectives):
            if objective.metric not in known:
                raise SpecError(
                    f"objectives[{i}].metric: {objective.metric!r} is not reported by a "
                    f"{self.data.dataset} search{suggest(objective.metric, known)}; "
                    f"e.g. {', '.join(known[:4])}, {known[-1]}"
                )

    def references(self, kind: str) -> list[str]:
        """Every ``fabric`` or ``grouping`` reference a trial can use, base first."""
        refs = [getattr(self, kind)]
        param = self.outer.get(kind)
        refs += [c for c in (param.choices if param else ()) or () if c not in refs]
        return refs

    def trial(self, params: Mapping[str, Any], name: str = "") -> TrialSpec:
        """The concrete TrialSpec for outer choices ``params`` (dotted keys → values): the base
        trial's typed specs, each outer choice set by ``replace`` (validated on the way)."""
        for key in params:
            if key not in self.outer:
                raise SpecError(f"trial parameter {key!r} is not in the campaign's outer space")
        chosen = {}
        for kind in REFERENCES:
            ref = params.get(kind, getattr(self, kind))
            if ref not in self.catalog:
                raise SpecError(f"{kind}: {ref!r} was not resolved when the campaign loaded")
            chosen[kind] = self.catalog[ref]
        where = f"trial{dict(params)}"
        try:
            trial = TrialSpec(
                name=name or self.name,
                seed=self.seed,
                data=self.data,
                backbone=self.backbone,
                search=self.search,
                params=dict(params),
                **chosen,
            )
        except SpecError as e:
            raise SpecError(f"{where}: {e}") from None
        for key, value in params.items():
            if key not in REFERENCES:
                trial = replace_path(trial, key, value, where)
        return trial

    def check_trials(self) -> None:
        """Builds the base trial and, for every outer parameter, a trial at each value its
        domain can produce (both bounds, every choice; a conditional one with its conditions
        met), so a campaign that loads never fails inside a trial on its own values."""
        self.trial({})
        for key in suggestion_order(self.outer):
            param = self.outer[key]
            conditions = dict(param.when or {})
            for value in domain_values(param):
                params = {**conditions, key: value}
                try:
                    self.trial(params)
                except SpecError as e:
                    raise SpecError(f"outer.{key} = {json.dumps(value)}: {e}") from None

    @classmethod
    def from_dict(cls, data: Any, path: str = "") -> CampaignSpec:
        """A campaign from plain data (``campaign.json``): the catalog's entries are decoded
        by the kind of reference that names them."""
        if not isinstance(data, Mapping):
            return from_mapping(cls, data, path)
        raw = data.get("catalog") or {}
        unresolved = from_mapping(cls, {**data, "catalog": {}}, path)
        catalog: dict[str, FabricSpace | PartGrouping] = {}
        for kind, spec_type in (("fabric", FabricSpace), ("grouping", PartGrouping)):
            for ref in unresolved.references(kind):
                if ref not in raw:
                    raise SpecError(f"{path or '<top>'}.catalog: {ref!r} is missing")
                catalog[ref] = spec_type.from_dict(raw[ref], f"{path}.catalog.{ref}")
        return dataclasses.replace(unresolved, catalog=catalog)


def load_campaign(path: str | Path, overrides: tuple[str, ...] = ()) -> CampaignSpec:
    """Reads a campaign YAML, applies ``--set`` overrides, resolves references, validates."""
    p = Path(path)
    data = apply_overrides(read_yaml(p), overrides)
    data.setdefault("name", p.stem)
    try:
        unresolved = from_mapping(CampaignSpec, {**data, "catalog": {}})
        catalog: dict[str, FabricSpace | PartGrouping] = {}
        for ref in sorted(unresolved.references("fabric")):
            catalog[ref] = load_fabric(ref)
        for ref in sorted(unresolved.references("grouping")):
            catalog[ref] = load_grouping(ref)
        return dataclasses.replace(unresolved, catalog=catalog)
    except SpecError as e:
        raise SpecError(f"{p}: {e}") from None
