"""Benchmark: do two input rules' genotypes of the same searches retrain alike?

Reads finished searches of ``benchmarks/search_signal.py`` (same ``--root``, ``--seeds`` and
``--set``), derives each search's genotype again from its stored softmax weights by each of the
two input rules ``--rules A B`` (``confidence.derive_from_weights``), and retrains both, under
one retrain spec (``--retrain``, default the quickstart's) and each of ``--retrain-seeds``, in
this process with ``LocalRuntime``. A retrain already done under ``--root`` (same genotype,
retrain seed and spec) is read back (``consensus_retrain.retrained_ap``), so several processes
can share the work by taking different seeds and a last call with every seed only reads. Prints
per search seed each rule's val AP (the mean over retrain seeds), its parameter count and
d = B − A, then d's mean, sd and the searches where d > 0; the hardware first, one JSON line
last.

    python benchmarks/search_signal.py --seeds 0 1 2 --root R --set grouping=G
    python benchmarks/rule_retrain.py --seeds 0 1 2 --root R --set grouping=G \
        --rules threshold argmax_parallel

This measures; it asserts nothing. ``benchmarks/RESULTS.md`` records figures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics

from consensus_retrain import add_retrain_args, d_spread, retrain_setup, retrained_ap

from nfs_orchestrator.confidence import derive_from_weights
from nfs_orchestrator.genotype import read_genotype
from nfs_orchestrator.nn.counting import measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_retrain_args(parser)
    parser.add_argument(
        "--rules",
        nargs=2,
        choices=["argmax", "threshold", "top2", "argmax_parallel"],
        default=["threshold", "argmax_parallel"],
    )
    args = parser.parse_args()
    root, tag, specs, hw = retrain_setup(args)
    rows = []
    for seed in args.seeds:
        searched = read_genotype(root / f"seed{seed}-{tag}" / "artifacts" / "genotype.json")
        row = {"seed": seed}
        for inputs in args.rules:
            rule = dataclasses.replace(searched.space.derivation, inputs=inputs)
            space = dataclasses.replace(searched.space, derivation=rule)
            derived = derive_from_weights(
                space, searched.grouping, searched.arch_weights, searched.backbone
            )
            genotype = measured(derived, searched.input_size)
            ap = statistics.fmean(retrained_ap(s, genotype, root) for s in specs)
            row[inputs] = {"fingerprint": genotype.fingerprint()[:12], "val_ap": ap,
                           "params": genotype.params}  # fmt: skip
        a, b = (row[inputs]["val_ap"] for inputs in args.rules)
        row["d"] = b - a
        rows.append(row)
        print(f"seed {seed}: " + ", ".join(
            f"{inputs} {row[inputs]['val_ap']:.4f} ({row[inputs]['params'] / 1e6:.3f} M)"
            for inputs in args.rules) + f", d {row['d']:+.4f}", flush=True)  # fmt: skip
    means = {inputs: statistics.fmean(r[inputs]["val_ap"] for r in rows) for inputs in args.rules}
    print(f"mean val AP: {', '.join(f'{k} {v:.4f}' for k, v in means.items())}; "
          f"d = {args.rules[1]} − {args.rules[0]}: "
          f"{d_spread([r['d'] for r in rows], 'searches')}")  # fmt: skip
    summary = {"seeds": args.seeds, "sets": args.sets, "rules": args.rules}
    summary |= {"retrain_seeds": args.retrain_seeds, "rows": rows, "hardware": hw.to_dict()}
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
