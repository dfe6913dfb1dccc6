"""The controls a searched genotype is judged against, and how the judgement is worded.

What this is: the genotypes of the control arms (``uniform_genotype``: the hand-designed
part-based baseline; ``random_genotypes``: random architectures of matched size, as random search
with weight sharing is the baseline NAS must beat, Li & Talwalkar 2019), and the statistics of
the retrained arms over seeds (``summarize``: mean ± spread per arm; ``verdict``: one sentence
that says whether the champion beats every control by more than the seed spread).

The uniform baseline: every edge one convolution (the space's first parametric op, preferring
``sep_conv_3x3``), every cell fed by all of its distinct input maps (the β threshold rule at 0.3
on a uniform β keeps all three slots, and at the top row, where ``above`` reads the parallel map
again, parallel + below, each map once): the regular fabric a person would draw without a
search, in the same space and grouping as the champion. The reference code's 'None' baseline
keeps the uniform *mixture* of all ops instead, which only a supernet can hold; a derived
network retrained under the same pipeline needs one op per edge.

What it is not: the retraining (``retrain.loop``) or the campaign that runs the arms
(``orchestration/controls.py``).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from nfs_orchestrator.genotype import Genotype, derive_genotype
from nfs_orchestrator.geometry import SLOTS, fabric_sites
from nfs_orchestrator.nn.counting import measured
from nfs_orchestrator.specs import PARAMETER_FREE_OPS, DerivationRule, FabricSpace

SIZE_TOLERANCE = 0.2  # a random genotype matches the champion's size within ±20 % params
MAX_DRAWS = 64  # random α/β draws tried per campaign before taking the closest


def _shapes(space: FabricSpace) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (α, β) shapes of one part: α (k, |O|) shared or (cells, k, |O|) per cell."""
    cells = sum(len(layer) for layer in fabric_sites(space))
    alpha = (space.num_edges, len(space.ops))
    if space.alpha_sharing == "cell":
        alpha = (cells, *alpha)
    return alpha, (cells, len(SLOTS))


def _input_size(champion: Genotype) -> tuple[int, int]:
    if champion.input_size is None:
        raise ValueError("the champion genotype carries no input size to measure controls at")
    return tuple(champion.input_size)


def uniform_genotype(champion: Genotype) -> Genotype:
    """The hand-designed part-based baseline in the champion's space (module docstring)."""
    space = champion.space
    parametric = [op for op in space.ops if op not in PARAMETER_FREE_OPS]
    op = "sep_conv_3x3" if "sep_conv_3x3" in parametric else (parametric or [space.ops[1]])[0]
    rule = DerivationRule(ops="argmax_nonzero", inputs="threshold", beta_threshold=0.3)
    space = dataclasses.replace(space, derivation=rule)
    alpha_shape, beta_shape = _shapes(space)
    alpha = torch.zeros(alpha_shape)
    alpha[..., space.ops.index(op)] = 1.0
    arch = {p.name: (alpha, torch.zeros(beta_shape)) for p in champion.grouping.parts}
    genotype = derive_genotype(space, champion.grouping, arch, backbone=champion.backbone)
    return measured(genotype, _input_size(champion))


def random_genotypes(champion: Genotype, k: int, *, seed: int = 0) -> list[Genotype]:
    """``k`` distinct genotypes from random α/β (N(0, 1), derived by the champion's rule) whose
    derived networks have the champion's parameter count within ``SIZE_TOLERANCE``; when
    ``MAX_DRAWS`` draws do not give ``k``, the closest in size are taken (their sizes are
    recorded with the controls)."""
    input_size = _input_size(champion)
    if champion.params is None:
        champion = measured(champion, input_size)
    target = float(champion.params)
    generator = torch.Generator().manual_seed(seed)
    alpha_shape, beta_shape = _shapes(champion.space)
    drawn: dict[str, tuple[float, Genotype]] = {champion.fingerprint(): (0.0, champion)}
    matched = 0
    for _ in range(MAX_DRAWS):
        arch = {
            p.name: (
                torch.randn(alpha_shape, generator=generator),
                torch.randn(beta_shape, generator=generator),
            )
            for p in champion.grouping.parts
        }
        genotype = derive_genotype(
            champion.space, champion.grouping, arch, backbone=champion.backbone
        )
        if genotype.fingerprint() in drawn:
            continue
        genotype = measured(genotype, input_size)
        gap = abs(float(genotype.params) - target) / target
        drawn[genotype.fingerprint()] = (gap, genotype)
        matched += gap <= SIZE_TOLERANCE
        if matched >= k:
            break
    drawn.pop(champion.fingerprint())
    ranked = sorted(drawn.values(), key=lambda pair: pair[0])
    return [genotype for _, genotype in ranked[:k]]


def summarize(values: Mapping[str, Sequence[float]], mode: str) -> list[dict[str, Any]]:
    """Per arm (in the given order): its values, n, mean and spread (the sample standard
    deviation over seeds; 0 for one seed), and its rank by mean under ``mode``."""
    table = []
    for arm, vals in values.items():
        vals = [float(v) for v in vals]
        mean = statistics.fmean(vals) if vals else None
        spread = statistics.stdev(vals) if len(vals) > 1 else 0.0
        table.append({"arm": arm, "values": vals, "n": len(vals), "mean": mean, "spread": spread})
    scored = [e for e in table if e["mean"] is not None]
    for rank, entry in enumerate(
        sorted(scored, key=lambda e: -e["mean"] if mode == "max" else e["mean"]), start=1
    ):
        entry["rank"] = rank
    return table


def verdict(summary: Sequence[Mapping[str, Any]], metric: str, mode: str) -> str:
    """One sentence: does ``champion`` beat every control by more than the seed spread (the
    difference of means larger than the sum of the two spreads), tie with some, or lose to
    some by more than the spread?"""
    arms = {e["arm"]: e for e in summary}
    champion = arms.get("champion")
    if champion is None or champion["mean"] is None:
        return "No champion result: nothing to compare."
    sign = 1.0 if mode == "max" else -1.0
    head = f"Champion {metric} {champion['mean']:.4f} ± {champion['spread']:.4f}"
    ties, losses = [], []
    for name, entry in arms.items():
        if name == "champion" or entry["mean"] is None:
            continue
        gap = sign * (champion["mean"] - entry["mean"])
        label = f"{name} ({entry['mean']:.4f} ± {entry['spread']:.4f})"
        if gap < -(champion["spread"] + entry["spread"]):
            losses.append(label)
        elif gap <= champion["spread"] + entry["spread"]:
            ties.append(label)
    n = champion["n"]
    if losses:
        return (
            f"{head} is worse than {', '.join(losses)} by more than the seed spread ({n} seeds): "
            f"at this budget the searched architecture loses to its controls."
        )
    if ties:
        return (
            f"{head} does not beat {', '.join(ties)} by more than the seed spread ({n} seeds): "
            f"at this budget the search is not shown to matter."
        )
    return f"{head} beats every control by more than the seed spread ({n} seeds)."
