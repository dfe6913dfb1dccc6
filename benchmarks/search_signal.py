"""Benchmark: does the inner search search? α/β signal of the quickstart's trial over seeds.

Builds the quickstart campaign's base trial (``experiments/quickstart.yaml``,
``load_campaign(...).trial({})``) with the data under ``--root`` and any ``--set`` overrides,
runs it in this process with ``LocalRuntime`` (one thread, one seed after another) for each
``--seeds`` value (the trial seed: initial weights, split and batch order; the data stay the
same), and prints per seed

- the entropy drop of α and β (1 − H/ln n, mean over rows; 0 = still uniform),
- the median decision margin and the share of decisions with margin ≥ the threshold
  (``confidence.DECIDED_MARGIN``), from the genotype's confidence record,
- the share of decisions that flipped over the last half of the epochs,

then the agreement of decisions between every pair of seeds (the op of each edge; the input
maps kept by each cell, by the space's derivation rule) with its chance level (1 / number of
non-zero ops for ops; for cells the mean of 1 / number of kept sets the rule can give:
``confidence.chance_levels``), and, pooled over the pairs, the share of equal decisions among
those decided in both seeds (``confidence.decided_agreement``: under the threshold rule two
searches whose β never moved agree on every cell). With several parts it also prints each part's
``confidence.coarseness`` (how far toward coarser rows its cells read; for planted data). With 4
or more seeds it also compares consensus genotypes (``confidence.consensus``: mean softmax
weights): the seeds, in the order given, form groups of ``--consensus-of`` k (default: half of
them), and each group is compared with the next (1st with 2nd, 3rd with 4th, ...), with the share
of cells that keep every map they read, single seeds against consensus (averaging pulls β toward
uniform, and uniform β keeps every map under t < 1/3). The hardware comes first, one JSON line
last.

    python benchmarks/search_signal.py --seeds 0 1 2
    python benchmarks/search_signal.py --seeds 0 1 --preset reference
    python benchmarks/search_signal.py --seeds 0 1 --set grouping=groupings/coco-p3
    python benchmarks/search_signal.py --seeds 0 1 --root R --reuse --beta-threshold 0.37
    python benchmarks/search_signal.py --seeds 0 1 --root R --reuse --inputs top2
    python benchmarks/search_signal.py --seeds $(seq 16 39) --root R --reuse --consensus-of 3

This measures; it asserts nothing. ``benchmarks/RESULTS.md`` ("Search signal") records figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nfs_orchestrator.campaign_spec import load_campaign  # noqa: E402
from nfs_orchestrator.confidence import agreement as confidence_agreement  # noqa: E402
from nfs_orchestrator.confidence import (  # noqa: E402
    cell_sources,
    chance_levels,
    coarseness,
    consensus,
    decided_agreement,
    decisions,
    derive_from_weights,
    with_confidence,
)
from nfs_orchestrator.genotype import read_genotype  # noqa: E402
from nfs_orchestrator.hardware import detect  # noqa: E402
from nfs_orchestrator.runtime import LocalRuntime  # noqa: E402
from nfs_orchestrator.search.loop import STATE_FILE, run_search  # noqa: E402
from nfs_orchestrator.search.presets import arch_preset  # noqa: E402


def run_seed(
    campaign: str, root: Path, seed: int, sets: list[str], reuse: bool, rule: dict
) -> dict:
    overrides = (f"data.root={root / 'data'}", f"seed={seed}", *sets)
    trial = load_campaign(campaign, overrides).trial({})
    space = trial.fabric  # the rule the decisions compared across seeds are read by
    if rule:  # another input rule, for the analysis only (the search does not read it)
        space = dataclasses.replace(space, derivation=dataclasses.replace(space.derivation, **rule))
    tag = hashlib.sha256(json.dumps(sets).encode()).hexdigest()[:8]
    run_dir = root / f"seed{seed}-{tag}"
    done = run_dir / "metrics.jsonl"
    if reuse and done.is_file():  # analyse a finished run again (same settings, same folder)
        rows = [json.loads(line) for line in done.read_text().splitlines()]
        metrics, wall = rows[-1], float("nan")
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resumed one
        started = time.monotonic()
        metrics = run_search(trial, LocalRuntime(run_dir, verbose=False))
        wall = time.monotonic() - started
    genotype = read_genotype(run_dir / "artifacts" / "genotype.json")
    state = torch.load(LocalRuntime(run_dir).latest_checkpoint() / STATE_FILE, weights_only=True)
    last = state["history"][-1]
    if genotype.rule != space.derivation:  # another rule (--inputs), or a run from before a change
        again = derive_from_weights(
            space, genotype.grouping, genotype.arch_weights, genotype.backbone
        )
        genotype = dataclasses.replace(again, confidence=genotype.confidence)
    genotype = with_confidence(genotype, state["history"], genotype.confidence["temperature"])
    c = genotype.confidence  # recomputed: a reused run is judged by the current rules
    return {
        "seed": seed,
        "wall_s": round(wall, 1),
        "val_ap": metrics.get("val_ap"),
        "alpha_entropy_drop": c["alpha_entropy_drop"],
        "beta_entropy_drop": c["beta_entropy_drop"],
        "margin_median": c["margin_median"],
        "decided_share": c["decided_share"],
        "flip_share": c["flip_share"],
        "undecided": c["undecided"],
        "decisions": {k: list(v) for k, v in decisions(space, last).items()},
        "last": last,  # the final softmax(α/T), softmax(β/T), for decided_agreement
        "coarseness": {k: round(v, 4) for k, v in coarseness(trial.fabric, last).items()},
        "space": space,
    }


def agreement(runs: list[dict], kind: str) -> list[float]:
    """Share of equal decisions of ``kind`` ('edge', 'cell'; '' = all) for every pair of
    seeds (``confidence.agreement`` over the runs' decision maps)."""
    return confidence_agreement([r["decisions"] for r in runs], kind)


def keeps_every_map(space, weights: list[dict]) -> float:
    """Share of the cells (over all snapshots) whose derived inputs are every map they read."""
    reads = {f"{scale},{depth}": len(set(src)) for scale, depth, src in cell_sources(space)}
    kept = [
        len(d) == reads[k.split("(")[1].rstrip(")")]
        for w in weights
        for k, d in decisions(space, w).items()
        if "/cell" in k
    ]
    return sum(kept) / len(kept) if kept else float("nan")


def spread(values: list[float]) -> str:
    if not values:
        return "n/a"
    m = statistics.fmean(values)
    lo, hi = min(values), max(values)
    return f"{m:.3f} (min {lo:.3f}, max {hi:.3f}, n={len(values)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--campaign", default=str(REPO / "experiments" / "quickstart.yaml"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--preset", default=None, help="an arch preset (search/presets.py) first")
    parser.add_argument("--root", default=None, help="work folder (default: a temporary one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="analyse finished runs under --root instead of rerunning",
    )
    parser.add_argument(
        "--beta-threshold",
        type=float,
        default=None,
        help="compare seeds by the decisions of the threshold input rule at this t instead of "
        "the space's rule (analysis only: the search does not read it, the runs are the same)",
    )
    parser.add_argument(
        "--inputs",
        choices=["argmax", "threshold", "top2", "argmax_parallel"],
        default=None,
        help="read every run by this input rule instead of the space's (analysis only, as "
        "--beta-threshold; the per-seed confidence figures follow it)",
    )
    parser.add_argument(
        "--consensus-of",
        type=int,
        default=None,
        metavar="K",
        help="compare the consensus of each group of K seeds with the next group's "
        "(default: half the seeds; with fewer than 4 seeds no consensus is read)",
    )
    args = parser.parse_args()
    if len(args.seeds) < 2:
        parser.error("--seeds: at least two seeds (agreement needs pairs)")
    group = args.consensus_of or len(args.seeds) // 2
    if args.consensus_of is not None and not 2 <= group <= len(args.seeds) // 2:
        parser.error(f"--consensus-of: {group} must be ≥ 2 and leave two groups of the seeds")
    rule = {"inputs": args.inputs} if args.inputs else {}
    if args.beta_threshold is not None:
        rule = {"inputs": "threshold", "beta_threshold": args.beta_threshold}
    torch.set_num_threads(args.threads)
    if args.preset:
        args.sets = [*arch_preset(args.preset), *args.sets]
    hw = detect("cpu")
    print(f"hardware: {hw.name}, {hw.usable_cpus} usable CPUs, torch {hw.torch}, "
          f"{args.threads} thread(s)")  # fmt: skip
    print(f"campaign: {args.campaign}  overrides: {args.sets or 'none'}", flush=True)
    with tempfile.TemporaryDirectory(prefix="posenfs-signal-") as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        runs = []
        for seed in args.seeds:
            r = run_seed(args.campaign, root, seed, args.sets, args.reuse, rule)
            runs.append(r)
            print(
                f"seed {seed}: α entropy drop {r['alpha_entropy_drop']:.4f}  β entropy drop "
                f"{r['beta_entropy_drop']:.4f}  median margin {r['margin_median']:.4f}  "
                f"decided {r['decided_share']:.2f}  flips {r['flip_share']:.2f}  "
                f"val_ap {r['val_ap']:.3f}  ({r['wall_s']:.0f} s)",
                flush=True,
            )
            if len(r["coarseness"]) > 1:  # per part: how far toward coarser rows cells read
                print(f"  coarseness per part: {r['coarseness']}", flush=True)
    space = runs[0].pop("space")
    for r in runs[1:]:
        r.pop("space")
    chance = chance_levels(space)
    chance_ops, chance_cells = chance["ops"], chance["inputs"]
    ops, cells, every = agreement(runs, "edge"), agreement(runs, "cell"), agreement(runs, "")
    finals = [r.pop("last") for r in runs]
    equal, compared = decided_agreement(space, finals)
    # consensus genotypes: groups of `group` seeds in the order given, each pair of groups
    groups = [finals[i : i + group] for i in range(0, len(finals) - group + 1, group)]
    pairs = [(consensus(a), consensus(b)) for a, b in zip(groups[0::2], groups[1::2])]
    pairs = pairs if group > 1 else []
    consensus_all = [
        confidence_agreement([decisions(space, a), decisions(space, b)])[0] for a, b in pairs
    ]
    consensus_decided = [decided_agreement(space, pair) for pair in pairs]
    keep_every = {
        "single": keeps_every_map(space, finals),
        "consensus": keeps_every_map(space, [w for pair in pairs for w in pair]),
    }
    summary = {
        "campaign": args.campaign,
        "overrides": args.sets,
        "seeds": args.seeds,
        "hardware": hw.to_dict(),
        "alpha_entropy_drop": [r["alpha_entropy_drop"] for r in runs],
        "beta_entropy_drop": [r["beta_entropy_drop"] for r in runs],
        "margin_median": [r["margin_median"] for r in runs],
        "decided_share": [r["decided_share"] for r in runs],
        "flip_share": [r["flip_share"] for r in runs],
        "val_ap": [r["val_ap"] for r in runs],
        "wall_s": [r["wall_s"] for r in runs],
        "agree_ops": ops,
        "agree_cells": cells,
        "agree_all": every,
        "chance_ops": chance_ops,
        "chance_cells": chance_cells,
        "decided_both": compared,
        "decided_equal": equal,
        "consensus_of": group if pairs else None,
        "consensus_agree_all": consensus_all,
        "consensus_decided": consensus_decided,
        "keeps_every_map": keep_every if pairs else None,
        "decisions": {r["seed"]: r["decisions"] for r in runs},
        "coarseness": {r["seed"]: r["coarseness"] for r in runs},
    }
    for key in ("alpha_entropy_drop", "beta_entropy_drop", "margin_median", "decided_share"):
        print(f"{key:>20}: {spread(summary[key])}")
    print(f"{'agree ops':>20}: {spread(ops)}  chance {chance_ops:.3f}")
    print(f"{'agree cells':>20}: {spread(cells)}  chance {chance_cells:.3f}")
    print(f"{'agree all decisions':>20}: {spread(every)}")
    share = f"{equal / compared:.3f}" if compared else "n/a"
    print(f"{'decided in both':>20}: {share} equal ({equal} of {compared}, pooled over pairs)")
    for i, (agree, (e, n)) in enumerate(zip(consensus_all, consensus_decided)):
        first = args.seeds[2 * i * group : (2 * i + 1) * group]
        second = args.seeds[(2 * i + 1) * group : (2 * i + 2) * group]
        print(
            f"{'consensus':>20}: seeds {first} against {second} (mean softmax weights): "
            f"agree all {agree:.3f}, decided in both {e} of {n} equal"
        )
    if pairs:
        e, n = (sum(x) for x in zip(*consensus_decided))
        sd = statistics.stdev(consensus_all) if len(consensus_all) > 1 else float("nan")
        print(
            f"{'consensus of ' + str(group):>20}: agree all {spread(consensus_all)} sd {sd:.3f}; "
            f"decided in both {e} of {n} equal; cells keeping every map: single seeds "
            f"{keep_every['single']:.3f}, consensus {keep_every['consensus']:.3f}"
        )
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
