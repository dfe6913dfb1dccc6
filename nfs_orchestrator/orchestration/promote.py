"""Promotion: pick a campaign's winning trial by a rule and register its genotype in MLflow.

Selection (``parse_rule``/``select_trial``) is pure and works on ledger rows:

- ``best:<metric>`` — the trial with the best value of ``<metric>`` (a ledger column: ``best``,
  ``val_ap``, ``val_pckh``, ``val_loss``, ``macs``, ``params``). Direction: ``min`` for
  ``val_loss``, ``macs`` and ``params``, else ``max``; ``best:<metric>:min|max`` overrides it.
- ``pareto:<metric>@<constraint>`` — the best ``<metric>`` among trials meeting the constraint,
  e.g. ``pareto:val_ap@macs<=5e9``.

Only trials that finished or were early-stopped and derived a genotype are candidates; a trial
without the metric is left out (and named if nothing is left). Ties go to fewer MACs, then the
smaller trial id, so the same ledger always promotes the same trial.

What is registered is what the rule scored: a rule on a metric whose best over epochs the
ledger keeps (the primary objective, ``best``, ``val_ap``, ``val_pckh``, ``val_loss``) scores
each trial by that best, and the genotype registered is the one derived at that very epoch
(``genotype/epoch_NNNN.json`` of the trial run; ``ledger.best_genotype``); a rule on any other
metric (``macs``, ``params``, a final objective value) scores the latest epoch and registers the
latest genotype. The version's tags ``nfs.metric``, ``nfs.value`` and ``nfs.epoch`` say which.
The CLI's default rule is the campaign's primary objective.

Registration (``promote``): the genotype is read back from the trial's MLflow run and its
fingerprint checked against the ledger; a model version is created whose artifacts hold the
genotype, the resolved search space and grouping, tagged with campaign, trial run and
fingerprint; the alias is set, and who held it before is recorded as a version tag and in the
registered model's alias history (MLflow keeps none). Promoting the same genotype again from the
same run reuses its version.

With ``consensus`` (``posenfs promote --consensus``), what is registered is the consensus
genotype of the selected trial's configuration (mean α/β weights of its seeds,
``confidence.consensus_genotype``; needs ``budget.seeds`` ≥ 2): a single seed's cell decisions
are not reproducible at the quickstart's scale, and the decisions a consensus of three seeds
decides are (benchmarks/RESULTS.md, "A consensus of three seeds"). It is logged to the campaign's
parent run under ``promotion/consensus-<fingerprint>``; the tag ``nfs.consensus_of`` lists the
trials averaged, ``nfs.trial`` and ``nfs.value`` stay the selected trial's.
"""

from __future__ import annotations

import json
import math
import operator
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfs_orchestrator.confidence import consensus_genotype, is_undecided
from nfs_orchestrator.errors import PosenfsError
from nfs_orchestrator.genotype import Genotype
from nfs_orchestrator.nn.counting import measured
from nfs_orchestrator.orchestration import tracking
from nfs_orchestrator.orchestration.ledger import best_genotype, seed_groups
from nfs_orchestrator.strict import suggest

MIN_METRICS = ("val_loss", "macs", "params")
DONE = ("FINISHED", "EARLY_STOPPED")
_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}

TAG_SOURCE_RUN = "nfs.source_run_id"
TAG_PREVIOUS = "nfs.previous_alias_holder"
TAG_RULE = "nfs.promotion_rule"
TAG_CONSENSUS = "nfs.consensus_of"  # the trials whose mean α/β weights the genotype derives
ARTIFACT_DIR = "promotion"


class PromoteError(PosenfsError):
    """Nothing to promote, or the stored genotype does not match the ledger."""


@dataclass(frozen=True)
class Rule:
    kind: str  # "best" | "pareto"
    metric: str
    mode: str  # "max" | "min"
    constraint: tuple[str, str, float] | None = None  # (metric, op, value)
    text: str = ""


def parse_rule(text: str) -> Rule:
    m = re.fullmatch(r"(best|pareto):([A-Za-z0-9_]+)(?::(max|min))?(?:@(.+))?", text.strip())
    if not m:
        raise PromoteError(
            f"--rule {text!r}: expected best:<metric>[:max|min] or "
            f"pareto:<metric>@<metric><=|<|>=|><value>, e.g. pareto:val_ap@macs<=5e9"
        )
    kind, metric, mode, cons = m.groups()
    mode = mode or ("min" if metric in MIN_METRICS else "max")
    constraint = None
    if kind == "pareto":
        c = re.fullmatch(r"([A-Za-z0-9_]+)\s*(<=|<|>=|>)\s*([-+0-9.eE]+)", cons or "")
        if not c:
            raise PromoteError(
                f"--rule {text!r}: a pareto rule needs a constraint, e.g. @macs<=5e9"
            )
        constraint = (c[1], c[2], float(c[3]))
    elif cons:
        raise PromoteError(f"--rule {text!r}: only pareto rules take a constraint")
    return Rule(kind, metric, mode, constraint, text)


def campaign_rule(record: Any, text: str | None) -> Rule:
    """The promotion rule ``text`` for a campaign (default: its primary objective), its metrics
    checked against what the campaign's trials report (one line, with a suggestion)."""
    primary = record.spec.objectives[0]
    rule = parse_rule(text or f"best:{primary.metric}:{primary.mode}")
    known = ["best", *record.spec.reported_metrics()]
    for metric in [rule.metric] + ([rule.constraint[0]] if rule.constraint else []):
        if metric not in known:
            raise PromoteError(
                f"--rule {rule.text!r}: {metric!r} is not reported by this campaign's trials"
                f"{suggest(metric, known)}"
            )
    return rule


def _value(row: dict[str, Any], metric: str) -> float | None:
    v = row.get(metric)
    if v is None and metric not in row:
        final = json.loads(row.get("final_json") or "{}")
        v = final.get(metric)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def select_trial(
    rows: list[dict[str, Any]], rule: Rule, trial_id: str | None = None
) -> dict[str, Any]:
    """The ledger row to promote (see the module docstring for the rule)."""
    if trial_id is not None:
        match = [r for r in rows if r["trial_id"] == trial_id]
        if not match:
            raise PromoteError(f"trial {trial_id} is not in the campaign ledger")
        if not match[0].get("genotype_fp"):
            raise PromoteError(f"trial {trial_id} has not derived a genotype yet")
        return match[0]
    done = [r for r in rows if r.get("status") in DONE and r.get("genotype_fp")]
    if not done:
        raise PromoteError("no finished trial with a genotype in the campaign ledger")
    scored = [r for r in done if _value(r, rule.metric) is not None]
    if not scored:
        raise PromoteError(f"no finished trial reported {rule.metric!r}")
    if rule.constraint is not None:
        name, op, bound = rule.constraint
        scored = [r for r in scored if (v := _value(r, name)) is not None and _OPS[op](v, bound)]
        if not scored:
            raise PromoteError(f"no finished trial meets {name} {op} {bound:g}")
    sign = -1.0 if rule.mode == "max" else 1.0
    return min(
        scored,
        key=lambda r: (sign * _value(r, rule.metric), _value(r, "macs") or 0.0, r["trial_id"]),
    )


@dataclass(frozen=True)
class Promotion:
    model_name: str
    version: str
    alias: str
    trial_id: str
    run_id: str
    genotype_fp: str
    metric: str
    value: float | None
    previous: str | None  # version that held the alias before, if another one did
    created: bool  # False when this promotion already existed


@dataclass(frozen=True)
class Selection:
    """The trial a rule selects and the genotype it scored, read back from the trial's run;
    or (``select_consensus``) the consensus genotype of that trial's configuration."""

    row: dict[str, Any]
    run_id: str  # the trial's run; for a consensus the campaign's parent run
    epoch: int | None  # the epoch whose genotype the rule scored; None: the latest
    genotype: Genotype
    text: str  # the genotype's JSON as stored
    members: tuple[str, ...] = ()  # a consensus: the trial ids (one per seed) it averages

    def label(self) -> str:
        if self.members:
            return f"consensus of trials {', '.join(self.members)}"
        return f"trial {self.row['trial_id']}"


def select_genotype(
    record: Any, rows: list[dict[str, Any]], rule: Rule, trial_id: str | None = None
) -> Selection:
    """The selected trial's scored genotype (module docstring), its fingerprint checked
    against the ledger's."""
    row = select_trial(rows, rule, trial_id)
    run_id = row.get("run_id")
    if not run_id:
        raise PromoteError(f"trial {row['trial_id']} has no MLflow run in the ledger")
    uri = record.tracking_uri
    epoch, recorded = best_genotype(row, rule.metric)
    if not recorded:
        raise PromoteError(
            f"trial {row['trial_id']}: no genotype was recorded for its {rule.metric} "
            f"(epoch {epoch})"
        )
    artifact = tracking.GENOTYPE_ARTIFACT if epoch is None else tracking.epoch_genotype(epoch)
    with tempfile.TemporaryDirectory(prefix="posenfs-promote-") as tmp:
        try:
            path = tracking.download_artifact(uri, run_id, artifact, tmp)
        except tracking.ArtifactError as e:
            raise PromoteError(f"run {run_id}: cannot read {artifact} ({e})") from None
        text = Path(path).read_text()
    genotype = Genotype.from_json(text, source=f"runs:/{run_id}/{artifact}")
    fp = genotype.fingerprint()
    if fp != recorded:
        raise PromoteError(
            f"run {run_id}: {artifact} has fingerprint {fp[:12]}, the ledger says "
            f"{recorded[:12]}: the run moved on since the ledger was written"
        )
    return Selection(row, run_id, epoch, genotype, text)


def select_consensus(
    record: Any, rows: list[dict[str, Any]], rule: Rule, trial_id: str | None = None
) -> Selection:
    """The consensus genotype (``confidence.consensus_genotype``: mean α/β weights) of the
    configuration of the trial the rule selects: the latest genotypes of all its finished seeds
    (``ledger.seed_groups``), each checked against the ledger. Registered from the campaign's
    parent run, since no one trial derived it."""
    row = select_trial(rows, rule, trial_id)
    members = seed_groups(rows).get(row.get("params_json") or "{}")
    if not members:
        raise PromoteError(
            f"--consensus: trial {row['trial_id']}'s configuration has no other finished seed; "
            f"a consensus needs at least 2 (run the campaign with budget.seeds ≥ 2)"
        )
    if not record.parent_run_id:
        raise PromoteError(f"campaign {record.campaign_id} has no MLflow parent run")
    try:
        genotype = consensus_genotype(tracking.latest_genotypes(record.tracking_uri, members))
    except tracking.ArtifactError as e:
        raise PromoteError(f"--consensus: {e}") from None
    if genotype.input_size is not None:  # its own network's size, as a trial's genotype has
        genotype = measured(genotype, genotype.input_size)
    ids = tuple(r["trial_id"] for r in members)
    return Selection(row, record.parent_run_id, None, genotype, genotype.to_json(), ids)


def promote(
    record: Any,  # store.CampaignRecord
    rows: list[dict[str, Any]],
    rule: Rule,
    *,
    trial_id: str | None = None,
    alias: str = "champion",
    model_name: str | None = None,
    force: bool = False,
    consensus: bool = False,
) -> Promotion:
    """Registers the selected trial's genotype (with ``consensus``, its configuration's
    consensus genotype: ``select_consensus``) as a model version and points ``alias`` at it.
    An undecided genotype (``confidence.is_undecided``: its decisions are indistinguishable
    from noise) is refused unless ``force``; the version records the verdict either way."""
    select = select_consensus if consensus else select_genotype
    chosen = select(record, rows, rule, trial_id)
    row, run_id, epoch, genotype = chosen.row, chosen.run_id, chosen.epoch, chosen.genotype
    undecided, why = is_undecided(genotype)
    if undecided and not force:
        raise PromoteError(
            f"{chosen.label()}: genotype {genotype.fingerprint()[:12]} is {why}; "
            f"promote it anyway with --force"
        )
    uri = record.tracking_uri
    fp = genotype.fingerprint()
    name = model_name or f"posenfs-{record.spec.data.dataset}-genotypes"
    tracking.ensure_registered_model(
        uri, name, "Genotypes promoted from posenfs campaigns (genotype.json)."
    )
    version = tracking.find_model_version(
        uri, name, {tracking.TAG_GENOTYPE: fp, TAG_SOURCE_RUN: run_id}
    )
    created = version is None
    # a consensus is logged to the parent run, one folder per genotype (several may be promoted)
    folder = f"{ARTIFACT_DIR}/consensus-{fp[:12]}" if chosen.members else ARTIFACT_DIR
    if version is None:
        tracking.log_texts(
            uri,
            run_id,
            {
                "genotype.json": chosen.text,
                "space.json": json.dumps(genotype.space.to_dict(), indent=1),
                "grouping.json": json.dumps(genotype.grouping.to_dict(), indent=1),
            },
            folder,
        )
        tags = {
            tracking.TAG_CAMPAIGN: record.campaign_id,
            tracking.TAG_TRIAL: row["trial_id"],
            TAG_SOURCE_RUN: run_id,
            tracking.TAG_GENOTYPE: fp,
            TAG_RULE: rule.text,
            "nfs.metric": rule.metric,
            "nfs.value": str(_value(row, rule.metric)),
            "nfs.epoch": "latest" if epoch is None else str(epoch),
            tracking.TAG_UNDECIDED: "true" if undecided else "false",
            "nfs.grouping": genotype.grouping.name,
            "nfs.space": genotype.space.name,
        }
        if chosen.members:  # the rule's value stays the selected trial's, as nfs.trial says
            tags[TAG_CONSENSUS] = ",".join(chosen.members)
        version = tracking.create_model_version(uri, name, f"runs:/{run_id}/{folder}", run_id, tags)
    previous = tracking.alias_holder(uri, name, alias)
    if previous != version:
        tracking.move_alias(uri, name, alias, version, previous, TAG_PREVIOUS)
    return Promotion(
        name,
        version,
        alias,
        row["trial_id"],
        run_id,
        fp,
        rule.metric,
        _value(row, rule.metric),
        previous if previous != version else None,
        created,
    )
