"""Benchmark: do two input rules' genotypes of the same searches retrain alike?

Reads finished searches of ``benchmarks/search_signal.py`` (same ``--root``, ``--seeds`` and
``--set``), derives each search's genotype again from its stored softmax weights by each of
the two input rules ``--rules A B`` (``search_signal.rederived``), and retrains both, under one
retrain spec (``--retrain``, default the quickstart's) and each of ``--retrain-seeds``, in this
process with ``LocalRuntime``. A retrain already done under ``--root`` (same genotype, retrain
seed and spec) is read back (``consensus_retrain.retrained_ap``), so several processes can
share the work by taking different seeds and a last call with every seed only reads. Prints per
search seed each rule's val AP (the mean over retrain seeds), its parameter count and
d = B − A, then d's mean, sd and the searches where d > 0; the hardware first, one JSON line
last.

    python benchmarks/search_signal.py --seeds 0 1 2 --root R --set grouping=G
    python benchmarks/rule_retrain.py --seeds 0 1 2 --root R --set grouping=G --rules threshold top2

This measures; it asserts nothing. ``benchmarks/RESULTS.md`` records figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
from pathlib import Path

import torch
from consensus_retrain import REPO, retrained_ap
from search_signal import rederived

from nfs_orchestrator.genotype import read_genotype
from nfs_orchestrator.hardware import detect
from nfs_orchestrator.nn.counting import measured
from nfs_orchestrator.specs import load_retrain, replace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True, help="search_signal.py's --root")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--rules",
        nargs=2,
        choices=["argmax", "threshold", "top2", "argmax_parallel"],
        default=["threshold", "top2"],
    )
    parser.add_argument("--retrain", default=str(REPO / "experiments" / "retrain_quickstart.yaml"))
    parser.add_argument("--retrain-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    hw = detect("cpu")
    print(f"hardware: {hw.name}, {hw.usable_cpus} usable CPUs, torch {hw.torch}, "
          f"{args.threads} thread(s)")  # fmt: skip
    tag = hashlib.sha256(json.dumps(args.sets).encode()).hexdigest()[:8]  # search_signal's
    base = load_retrain(args.retrain, (f"data.root={root / 'data'}",))
    specs = [replace(base, seed=base.seed + s) for s in args.retrain_seeds]
    rows = []
    for seed in args.seeds:
        searched = read_genotype(root / f"seed{seed}-{tag}" / "artifacts" / "genotype.json")
        row = {"seed": seed}
        for inputs in args.rules:
            rule = dataclasses.replace(searched.space.derivation, inputs=inputs)
            space = dataclasses.replace(searched.space, derivation=rule)
            genotype = measured(rederived(searched, space), searched.input_size)
            ap = statistics.fmean(retrained_ap(s, genotype, root) for s in specs)
            row[inputs] = {"fingerprint": genotype.fingerprint()[:12], "val_ap": ap,
                           "params": genotype.params}  # fmt: skip
        a, b = (row[inputs]["val_ap"] for inputs in args.rules)
        row["d"] = b - a
        rows.append(row)
        print(f"seed {seed}: " + ", ".join(
            f"{inputs} {row[inputs]['val_ap']:.4f} ({row[inputs]['params'] / 1e6:.3f} M)"
            for inputs in args.rules) + f", d {row['d']:+.4f}", flush=True)  # fmt: skip
    ds = [r["d"] for r in rows]
    sd = statistics.stdev(ds) if len(ds) > 1 else float("nan")
    means = {inputs: statistics.fmean(r[inputs]["val_ap"] for r in rows) for inputs in args.rules}
    print(f"mean val AP: {', '.join(f'{k} {v:.4f}' for k, v in means.items())}; "
          f"d = {args.rules[1]} − {args.rules[0]}: {statistics.fmean(ds):+.4f} (sd {sd:.4f}, "
          f"{len(ds)} searches; d > 0 in {sum(d > 0 for d in ds)})")  # fmt: skip
    summary = {"seeds": args.seeds, "sets": args.sets, "rules": args.rules}
    summary |= {"retrain_seeds": args.retrain_seeds, "rows": rows, "hardware": hw.to_dict()}
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
