"""How far each decision of a genotype is from a coin toss (DESIGN decision 11).

What this is: pure functions from softmax(α/T), softmax(β/T) (as a genotype's ``arch_weights``
or a search loop's per-epoch snapshots) to

- per edge: the margin of the chosen op over the runner-up among the non-zero ops (the
  derivation never picks ``zero``, so ``zero`` is no contender);
- per cell: the margin of the kept input over the best dropped one, counted per *source* (the
  map a slot reads): at the top row ``above`` reads the same map as ``parallel`` (at the bottom
  row ``below`` does). Both slots get the same gradient from the same zero start, so their
  weights stay equal, and the supernet mixes that map with twice one slot's weight
  (POSENFS-SPEC §1.3): a 2:1 prior, not something learned. The derivation keeps the map with
  the largest SUM of its slots' weights (what the supernet mixes; genotype.py), but a margin
  counts a map by the MEAN of its slots' weights, so uniform β has margin 0 and a map kept only
  by the 2:1 prior (β 0.3, 0.3, 0.4: parallel map kept at 0.6) has a negative margin (−0.1):
  the search leaned the other way. A map that leads by mean but barely by sum is near its flip
  all the same, so the margin is the smaller of the two leads. That is the ``argmax`` input rule
  and ``argmax_parallel`` (whose decision is argmax's: the parallel map is kept whatever β
  says); under ``top2`` the margin is the weaker kept map's lead over the dropped one; under
  ``threshold`` how far the cell's maps' summed weights are from the threshold
  (``input_decision``). A cell whose slots all read one map makes no decision, nor under
  ``top2`` one that reads two maps (it keeps both);
- a summary: entropy drop of α and β (1 − H/ln n, mean over rows; 0 = uniform, 1 = one-hot),
  median margin, share of decisions whose margin is at least ``DECIDED_MARGIN``, and the share of
  decisions that changed over the last half of the epochs (``flip_share``).

A decision counts when its margin ≥ ``DECIDED_MARGIN`` = 0.05. Why 0.05: with the reference
arch optimizer (Adam lr 0.03, coupled weight decay 1e-2) on the quickstart, α/β stay at their
uniform start and what decides is noise; over 3 seeds the largest final margins were 0.014 (α)
and 0.010 (β) (benchmarks/RESULTS.md, "Search signal"). 0.05 is 3.5× that noise ceiling; the
settings without weight decay gave median margins of 0.09-0.35 on the same trials. Under the
``threshold`` input rule (t = 0.3) uniform β already has cell margins 1/3 − 0.3 = 0.033 and the
reference searches' largest was 0.042 (RESULTS, "Confidence under the threshold rule"): 0.05 is
still above that ceiling, by less.

A genotype is *undecided* when fewer than half of its decisions count (``is_undecided``); a
campaign must not promote such a genotype silently.

What this is not: the derivation (genotype.py; which inputs a rule keeps is read from its
``kept_slots``, so decisions compared across epochs and seeds are the genotype's) or any module
code; nothing here imports nn/.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.genotype import Genotype, derive_genotype, kept_slots
from nfs_orchestrator.geometry import SLOTS, fabric_sites
from nfs_orchestrator.keypoints import PartGrouping
from nfs_orchestrator.specs import DerivationRule, FabricSpace

DECIDED_MARGIN = 0.05  # see the module docstring for the measured noise it sits above
UNDECIDED_BELOW = 0.5  # a genotype with a smaller share of decided decisions is undecided

Rows = Sequence[Sequence[float]]


def cell_sources(space: FabricSpace) -> list[tuple[int, int, tuple[int, int, int]]]:
    """(scale, depth, sources of the three slots) of every cell, in β's row order."""
    return [(s.scale, s.depth, s.sources) for layer in fabric_sites(space) for s in layer]


def entropy_drop(rows: Rows) -> float:
    """1 − H/ln(n), mean over rows of probabilities (0 = uniform, 1 = one-hot)."""
    drops = []
    for row in rows:
        if len(row) < 2:
            continue
        h = -sum(p * math.log(p) for p in row if p > 0)
        drops.append(1.0 - h / math.log(len(row)))
    return float(sum(drops) / len(drops)) if drops else 0.0


def op_decision(row: Sequence[float], ops: Sequence[str]) -> tuple[str, float]:
    """(chosen op, margin over the runner-up), both among the non-zero ops; ties keep the
    first listed op (as genotype derivation does)."""
    cands = [(float(row[i]), -i, op) for i, op in enumerate(ops) if op != "zero"]
    cands.sort(reverse=True)
    best = cands[0]
    second = cands[1][0] if len(cands) > 1 else 0.0
    return best[2], best[0] - second


def source_weights(row: Sequence[float], sources: tuple[int, int, int]) -> dict[int, float]:
    """softmax(β) per source row, the mean over the slots that read it: {source row: weight}
    (in slot order: the first key is the parallel slot's source)."""
    sums: dict[int, list[float]] = {}
    for slot, src in enumerate(sources):
        sums.setdefault(src, []).append(float(row[slot]))
    return {src: sum(ws) / len(ws) for src, ws in sums.items()}


def input_decision(
    row: Sequence[float],
    sources: tuple[int, int, int],
    kept: Sequence[str],
    rule: DerivationRule,
) -> tuple[tuple[int, ...], float] | None:
    """(kept source rows, margin) of one cell whose kept slots are ``kept`` (a genotype's, or
    what ``rule`` keeps: ``genotype.kept_slots``); None when the rule has nothing to choose
    (every slot reads one map; under ``top2``, at most two maps).

    The margin is how far the weights are from changing what is kept. ``argmax`` and
    ``argmax_parallel``: the strongest map's lead over the runner-up, the smaller of its lead by
    mean slot weight and by summed weight (module doc). ``top2``: the weaker kept map over the
    dropped one. ``threshold`` t: the rule compares each map's summed weight with t, so the
    margin is the smallest distance |sum − t| among the maps other than the strongest (which is
    always kept), and, when even the strongest is below t, also its lead over the runner-up.
    Uniform β is undecided under every rule (a three-map cell at t = 0.3: 1/3 − 0.3 = 0.033)."""
    weights = source_weights(row, sources)
    if len(weights) < (3 if rule.inputs == "top2" else 2):
        return None
    chosen = tuple(sorted({sources[SLOTS.index(slot)] for slot in kept}))
    if rule.inputs == "threshold":
        total = {src: w * sources.count(src) for src, w in weights.items()}
        ranked = sorted(total.values(), reverse=True)
        gaps = [abs(w - rule.beta_threshold) for w in ranked[1:]]
        if ranked[0] < rule.beta_threshold:
            gaps.append(ranked[0] - ranked[1])
        return chosen, min(gaps)
    if rule.inputs == "top2":
        dropped = [w for s, w in weights.items() if s not in chosen]
        return chosen, min(weights[s] for s in chosen) - max(dropped)
    # argmax, argmax_parallel: the decision is the strongest map (parallel's is kept anyway)
    best = next((s for s in chosen if s != sources[0]), sources[0])
    total = {src: w * sources.count(src) for src, w in weights.items()}

    def lead(w: dict[int, float]) -> float:
        return w[best] - max(v for s, v in w.items() if s != best)

    return chosen, min(lead(weights), lead(total))


def decisions(
    space: FabricSpace, weights: dict[str, Any], min_margin: float = -math.inf
) -> dict[str, tuple]:
    """Every decision of one snapshot {part: {"alpha": rows, "beta": rows}} whose margin is at
    least ``min_margin`` (default: all; a margin can be negative): a dict from ``part/edge<i>``
    to the chosen op and from ``part/cell(<scale>,<depth>)`` to the source rows the space's
    derivation rule keeps (one map under ``argmax``, a set under ``threshold``). Used to
    compare decisions across epochs (flip_share) and across seeds."""
    out: dict[str, tuple] = {}
    sites = cell_sources(space)
    for part, w in weights.items():
        for i, row in enumerate(w["alpha"]):
            op, margin = op_decision(row, space.ops)
            if margin >= min_margin:
                out[f"{part}/edge{i}"] = (op,)
        for (scale, depth, sources), row in zip(sites, w["beta"]):
            slots = kept_slots(row, sources, space.derivation)
            d = input_decision(row, sources, slots, space.derivation)
            if d is not None and d[1] >= min_margin:
                out[f"{part}/cell({scale},{depth})"] = d[0]
    return out


def agreement(maps: Sequence[dict[str, tuple]], kind: str = "") -> list[float]:
    """For every pair of decision maps (``decisions`` of one run each: seeds of one
    configuration), the share of equal decisions of ``kind`` ('edge', 'cell'; '' = all) among
    those both maps hold; a pair with none is left out."""
    out = []
    for i, a in enumerate(maps):
        for b in maps[i + 1 :]:
            keys = [k for k in a if f"/{kind}" in k and k in b]
            if keys:
                out.append(sum(a[k] == b[k] for k in keys) / len(keys))
    return out


def decided_agreement(space: FabricSpace, snapshots: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(equal, compared): over every pair of runs' snapshots, the decisions that are decided
    (margin ≥ ``DECIDED_MARGIN``) in both runs, and how many of them are equal. Under the
    ``threshold`` rule a search whose β never moved agrees with another such search on every
    cell (both keep every map), so all-decision agreement alone does not show a search; this
    counts only what both searches decided."""
    maps = [decisions(space, w, DECIDED_MARGIN) for w in snapshots]
    pairs = [(a, b) for i, a in enumerate(maps) for b in maps[i + 1 :]]
    both = [(a[k], b[k]) for a, b in pairs for k in a if k in b]
    return sum(x == y for x, y in both), len(both)


def consensus(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The mean of several runs' snapshots {part: {"alpha": rows, "beta": rows}} (softmax
    weights, same space and grouping), entry by entry: what the seeds of one configuration
    agree on, read by ``decisions`` like one run's weights."""
    return {
        part: {
            key: [  # row by row, then column by column across the runs
                [statistics.fmean(map(float, column)) for column in zip(*rows)]
                for rows in zip(*(s[part][key] for s in snapshots))
            ]
            for key in ("alpha", "beta")
        }
        for part in snapshots[0]
    }


def derive_from_weights(
    space: FabricSpace, grouping: PartGrouping, weights: dict[str, Any], backbone: str = ""
) -> Genotype:
    """The genotype that stored softmax weights {part: {"alpha": rows, "beta": rows}} (a
    genotype's ``arch_weights``, a ``consensus``) derive by ``space``'s rule, without size or
    confidence: log p, which softmax turns back into p."""
    arch = {}
    for part, w in weights.items():
        alpha = torch.tensor(w["alpha"]).clamp_min(1e-12).log()
        if space.alpha_sharing == "cell":  # stored as rows: (cells · k, |O|) -> (cells, k, |O|)
            alpha = alpha.reshape(-1, space.num_edges, len(space.ops))
        arch[part] = (alpha, torch.tensor(w["beta"]).clamp_min(1e-12).log())
    return derive_genotype(space, grouping, arch, backbone=backbone)


def consensus_genotype(genotypes: Sequence[Genotype]) -> Genotype:
    """The genotype that the ``consensus`` of several searches of one configuration (their
    ``arch_weights``: mean softmax weights) derives by the space's rule, with a confidence
    record read from those mean weights (``consensus_of``: how many; no epoch history) and the
    searches' common ``input_size``, its network not measured (``nn.counting.measured``).
    Averaging leaves decided what the searches lean to alike and pulls toward undecided what
    they split on (benchmarks/RESULTS.md, "A consensus of three seeds"). The genotypes must
    share space, grouping, backbone and rule, and carry their weights (``SpecError`` if not)."""
    first = genotypes[0]
    for i, g in enumerate(genotypes[1:], start=1):
        for name in ("space", "grouping", "backbone", "rule"):
            if getattr(g, name) != getattr(first, name):
                raise SpecError(
                    f"consensus: genotype {i} ({g.fingerprint()[:12]}) has another {name} "
                    f"than genotype 0 ({first.fingerprint()[:12]}); only searches of one "
                    f"configuration can be averaged"
                )
    for i, g in enumerate(genotypes):
        if set(g.arch_weights) != {p.name for p in first.grouping.parts}:
            raise SpecError(f"consensus: genotype {i} ({g.fingerprint()[:12]}) has no α/β weights")
    mean = consensus([g.arch_weights for g in genotypes])
    derived = derive_from_weights(first.space, first.grouping, mean, backbone=first.backbone)
    record = {**confidence_of(derived), "consensus_of": len(genotypes)}
    sizes = {g.input_size for g in genotypes}  # where to measure it (not measured here: no nn/)
    input_size = sizes.pop() if len(sizes) == 1 else None
    return replace(derived, confidence=record, input_size=input_size)


def input_outcomes(maps: int, rule: DerivationRule) -> int:
    """How many kept sets the input rule can give a cell that reads ``maps`` distinct maps:
    each single map under ``argmax`` (and ``argmax_parallel``: that map with the parallel
    one); each pair under ``top2`` (one set for two maps); under ``threshold`` t also every
    set of k ≥ 2 maps with k·t ≤ 1 (k maps can all reach t only then; the others can sit near
    0)."""
    if rule.inputs == "top2":
        return math.comb(maps, 2) if maps > 2 else 1
    if rule.inputs != "threshold":
        return maps
    t = rule.beta_threshold
    return maps + sum(math.comb(maps, k) for k in range(2, maps + 1) if k * t <= 1)


def chance_levels(space: FabricSpace) -> dict[str, float]:
    """The agreement two coin-tossing searches would reach, each outcome equally likely:
    ``ops`` 1 / (non-zero ops) for an op; ``inputs`` for a cell, the mean over cells of 1 / (kept
    sets its input rule can give: ``input_outcomes``), cells with a single outcome (nothing
    decided) left out; ``all`` over every decision of a part, its edges and those cells."""
    nonzero = sum(op != "zero" for op in space.ops)
    sources = [len(set(s)) for _, _, s in cell_sources(space)]
    outcomes = [n for n in (input_outcomes(m, space.derivation) for m in sources) if n > 1]
    edges = space.num_edges * (len(sources) if space.alpha_sharing == "cell" else 1)
    return {
        "ops": 1 / nonzero,
        "inputs": statistics.fmean(1 / n for n in outcomes) if outcomes else math.nan,
        "all": (edges / nonzero + sum(1 / n for n in outcomes)) / (edges + len(outcomes)),
    }


def seed_agreement(genotypes: Sequence[Genotype]) -> dict[str, Any]:
    """How far genotypes of one configuration searched with different seeds agree: the mean
    over seed pairs of the share of equal decisions — all of them, the ops, the inputs — (from
    each genotype's stored softmax weights), beside their chance levels; and, pooled over the
    pairs, how many decisions are decided in both genotypes of a pair and how many of those are
    equal (``decided_agreement``)."""
    space = genotypes[0].space
    maps = [decisions(space, g.arch_weights) for g in genotypes]
    every, ops, inputs = (agreement(maps, kind) for kind in ("", "edge", "cell"))
    chance = chance_levels(space)
    equal, compared = decided_agreement(space, [g.arch_weights for g in genotypes])
    return {
        "seeds": len(genotypes),
        "all": statistics.fmean(every) if every else math.nan,
        "ops": statistics.fmean(ops) if ops else math.nan,
        "inputs": statistics.fmean(inputs) if inputs else math.nan,
        "all_chance": chance["all"],
        "ops_chance": chance["ops"],
        "inputs_chance": chance["inputs"],
        "decided_both": compared,
        "decided_equal": equal,
    }


def coarseness(space: FabricSpace, weights: dict[str, Any]) -> dict[str, float]:
    """Per part, how far toward coarser rows its cells read: the mean over cells of
    Σ_slot softmax(β)_slot · (source row − own row). Uniform β gives the same value for every
    part; a part that prefers context (coarser inputs) has a larger one."""
    sites = cell_sources(space)
    out = {}
    for part, w in weights.items():
        per_cell = [
            sum(float(row[k]) * (sources[k] - scale) for k in range(len(SLOTS)))
            for (scale, _, sources), row in zip(sites, w["beta"])
        ]
        out[part] = sum(per_cell) / len(per_cell)
    return out


def flip_share(space: FabricSpace, history: Sequence[dict[str, Any]]) -> float:
    """Share of decisions that changed at least once between consecutive epochs of the last
    half of ``history`` (epochs ⌊n/2⌋ … n−1; 0 with fewer than two epochs in that window)."""
    window = [decisions(space, h) for h in history[len(history) // 2 :]]
    if len(window) < 2:
        return 0.0
    keys = list(window[-1])
    flipped = sum(any(a.get(k) != b.get(k) for a, b in zip(window, window[1:])) for k in keys)
    return flipped / max(1, len(keys))


def confidence_of(
    genotype: Genotype,
    history: Sequence[dict[str, Any]] = (),
    temperature: float = 1.0,
    threshold: float = DECIDED_MARGIN,
) -> dict[str, Any]:
    """The confidence record of ``genotype`` from its ``arch_weights`` (softmax at
    ``temperature``, the one the derivation used) and the search's per-epoch snapshots
    ``history`` (same layout; for ``flip_share``). Plain JSON-able dict."""
    space = genotype.space
    sites = cell_sources(space)
    margins: list[float] = []
    alpha_rows: list[list[float]] = []
    beta_rows: list[list[float]] = []
    parts: dict[str, Any] = {}
    for part in genotype.parts:
        w = genotype.arch_weights.get(part.name)
        if w is None:
            continue
        kept = {(c.scale, c.depth): c.inputs for c in part.cells}
        edges = []
        for i, row in enumerate(w["alpha"]):
            op, m = op_decision(row, space.ops)
            edges.append({"edge": i, "op": op, "margin": round(m, 6)})
            margins.append(round(m, 6))  # as stored: the share agrees with the record
            alpha_rows.append(list(row))
        cells = []
        for (scale, depth, sources), row in zip(sites, w["beta"]):
            beta_rows.append(list(row))
            slots = kept.get((scale, depth)) or kept_slots(row, sources, space.derivation)
            d = input_decision(row, sources, slots, space.derivation)
            if d is None:
                continue
            margins.append(round(d[1], 6))
            cells.append(
                {
                    "scale": scale,
                    "depth": depth,
                    "in_genotype": (scale, depth) in kept,
                    "sources": list(d[0]),
                    "margin": round(d[1], 6),
                }
            )
        parts[part.name] = {"edges": edges, "cells": cells}
    decided = sum(m >= threshold for m in margins) / len(margins) if margins else 0.0
    return {
        "temperature": float(temperature),
        "threshold": float(threshold),
        "decisions": len(margins),
        "decided_share": round(decided, 6),
        "margin_median": round(statistics.median(margins), 6) if margins else 0.0,
        "alpha_entropy_drop": round(entropy_drop(alpha_rows), 6),
        "beta_entropy_drop": round(entropy_drop(beta_rows), 6),
        "flip_share": round(flip_share(space, history), 6),
        "epochs_seen": len(history),
        "undecided": decided < UNDECIDED_BELOW,
        "parts": parts,
    }


def with_confidence(
    genotype: Genotype, history: Sequence[dict[str, Any]] = (), temperature: float = 1.0
) -> Genotype:
    """``genotype`` with its ``confidence`` record filled in (see ``confidence_of``)."""
    return replace(genotype, confidence=confidence_of(genotype, history, temperature))


def confidence_metrics(genotype: Genotype) -> dict[str, float]:
    """The per-epoch report's confidence figures (MLflow metrics): ``confidence_decided``,
    ``margin_median``, ``alpha_entropy_drop``, ``beta_entropy_drop``, ``flip_share`` and
    ``undecided`` (0/1)."""
    c = genotype.confidence or confidence_of(genotype)
    return {
        "confidence_decided": float(c["decided_share"]),
        "margin_median": float(c["margin_median"]),
        "alpha_entropy_drop": float(c["alpha_entropy_drop"]),
        "beta_entropy_drop": float(c["beta_entropy_drop"]),
        "flip_share": float(c["flip_share"]),
        "undecided": float(bool(c["undecided"])),
    }


def is_undecided(genotype: Genotype) -> tuple[bool, str]:
    """(True, why) when ``genotype``'s decisions are indistinguishable from noise: fewer than
    ``UNDECIDED_BELOW`` of them have a margin ≥ the threshold. A genotype without a stored
    confidence (schema_version 1) is judged from its ``arch_weights`` (softmax at T = 1, as
    version 1 stored them); with neither, it is undecided ("no confidence")."""
    c = genotype.confidence
    if c is None:
        if not genotype.arch_weights:
            return True, "the genotype carries no α/β weights, so its confidence is unknown"
        c = confidence_of(genotype)
    share, n = float(c["decided_share"]), int(c["decisions"])
    # flips need epochs: a consensus or a recomputed version-1 record has none
    flips = f", flips over the last half {c['flip_share']:.0%}" if c["epochs_seen"] > 1 else ""
    why = (
        f"{share:.0%} of {n} decisions have a margin ≥ {c['threshold']:g} "
        f"(median margin {c['margin_median']:.3f}, α entropy drop "
        f"{c['alpha_entropy_drop']:.3f}, β entropy drop {c['beta_entropy_drop']:.3f}{flips})"
    )
    if share < UNDECIDED_BELOW:
        return True, f"undecided: {why}; at least {UNDECIDED_BELOW:.0%} needed"
    return False, f"decided: {why}"


def undecided_cells(genotype: Genotype) -> set[tuple[str, int, int]]:
    """(part, scale, depth) of the genotype's kept cells whose input or op decision is below
    the threshold (the drawing marks them)."""
    c = genotype.confidence or confidence_of(genotype)
    out = set()
    for part, rec in c["parts"].items():
        weak_ops = any(e["margin"] < c["threshold"] for e in rec["edges"])
        for cell in rec["cells"]:
            if cell["in_genotype"] and (weak_ops or cell["margin"] < c["threshold"]):
                out.add((part, cell["scale"], cell["depth"]))
        if weak_ops:  # α shared per part: every kept cell's ops are as weak
            g = next(p for p in genotype.parts if p.name == part)
            out.update((part, cell.scale, cell.depth) for cell in g.cells)
    return out


def format_confidence(genotype: Genotype) -> str:
    """A readable table of the genotype's confidence, for ``posenfs genotype show``."""
    c = genotype.confidence
    stored = c is not None
    if c is None:
        if not genotype.arch_weights:
            return "confidence: unknown (the genotype carries no α/β weights)"
        c = confidence_of(genotype)
    undecided, why = is_undecided(genotype)
    lines = [
        f"confidence{'' if stored else ' (recomputed from arch_weights at T = 1)'}: "
        f"{'UNDECIDED' if undecided else 'decided'}",
        f"  {why}",
        f"  softmax temperature {c['temperature']:g}; "
        + (f"{c['epochs_seen']} epoch(s) of history" if c["epochs_seen"] else "no epoch history")
        + (f"; the mean weights of {c['consensus_of']} searches" if "consensus_of" in c else ""),
    ]
    for part, rec in c["parts"].items():
        lines.append(f"  part {part}")
        for e in rec["edges"]:
            mark = "" if e["margin"] >= c["threshold"] else "   <- undecided"
            lines.append(f"    edge {e['edge']}: {e['op']:<14} margin {e['margin']:.3f}{mark}")
        for cell in rec["cells"]:
            if not cell["in_genotype"]:
                continue
            mark = "" if cell["margin"] >= c["threshold"] else "   <- undecided"
            lines.append(
                f"    cell ({cell['scale']}, {cell['depth']}): reads row(s) "
                f"{cell['sources']} margin {cell['margin']:.3f}{mark}"
            )
    return "\n".join(lines)
