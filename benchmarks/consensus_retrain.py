"""Benchmark: does a consensus genotype retrain better or worse than its seeds' own genotypes?

Reads finished searches of ``benchmarks/search_signal.py`` (same ``--root``, ``--seeds`` and
``--set``), takes the seeds in the order given in groups of ``--group`` k, and for each group
retrains, under one retrain spec (``--retrain``, default the quickstart's) and each of
``--retrain-seeds``, the consensus genotype of the group (``confidence.consensus_genotype``)
and each seed's own genotype, in this process with ``LocalRuntime``, one after another. A
retrain already done under ``--root`` (same genotype, retrain seed and spec) is read back, so
several processes can share the work by taking different groups and a last call with every
seed only reads. Prints per group the consensus's val AP and its seeds' (each the mean over
retrain seeds) and d = consensus − mean of the seeds, then d's mean, sd and the groups where
d > 0; the hardware first, one JSON line last.

    python benchmarks/search_signal.py --seeds $(seq 40 51) --root R --set grouping=G
    python benchmarks/consensus_retrain.py --seeds $(seq 40 51) --root R --set grouping=G

This measures; it asserts nothing. ``benchmarks/RESULTS.md`` ("A consensus of three seeds")
records figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nfs_orchestrator.confidence import consensus_genotype  # noqa: E402
from nfs_orchestrator.genotype import Genotype, read_genotype  # noqa: E402
from nfs_orchestrator.hardware import detect  # noqa: E402
from nfs_orchestrator.nn.counting import measured  # noqa: E402
from nfs_orchestrator.retrain.loop import run_retrain  # noqa: E402
from nfs_orchestrator.runtime import LocalRuntime  # noqa: E402
from nfs_orchestrator.specs import RetrainSpec, load_retrain, replace  # noqa: E402


def retrained_ap(spec: RetrainSpec, genotype: Genotype, root: Path) -> float:
    """val AP of ``genotype`` retrained under ``spec`` (read back when already done)."""
    run_dir = root / f"retrain-{genotype.fingerprint()[:12]}-{spec.fingerprint()[:12]}"
    done = run_dir / "result.json"
    if done.is_file():
        return float(json.loads(done.read_text())["val_ap"])
    started = time.monotonic()
    metrics = run_retrain(spec, genotype, LocalRuntime(run_dir, verbose=False))
    done.write_text(json.dumps({"val_ap": metrics["val_ap"]}) + "\n")
    print(f"  retrained {genotype.fingerprint()[:12]} seed {spec.seed}: val_ap "
          f"{metrics['val_ap']:.4f} ({time.monotonic() - started:.0f} s)", flush=True)  # fmt: skip
    return float(metrics["val_ap"])


def add_retrain_args(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark that retrains genotypes of search_signal.py's runs."""
    parser.add_argument("--root", required=True, help="search_signal.py's --root")
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--retrain", default=str(REPO / "experiments" / "retrain_quickstart.yaml"))
    parser.add_argument("--retrain-seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--threads", type=int, default=1)


def retrain_setup(args: argparse.Namespace) -> tuple[Path, str, list[RetrainSpec], Any]:
    """(root, search_signal.py's run tag, one retrain spec per retrain seed, the hardware),
    the hardware printed first."""
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    hw = detect("cpu")
    print(f"hardware: {hw.name}, {hw.usable_cpus} usable CPUs, torch {hw.torch}, "
          f"{args.threads} thread(s)")  # fmt: skip
    tag = hashlib.sha256(json.dumps(args.sets).encode()).hexdigest()[:8]  # search_signal's
    base = load_retrain(args.retrain, (f"data.root={root / 'data'}",))
    return root, tag, [replace(base, seed=base.seed + s) for s in args.retrain_seeds], hw


def d_spread(ds: list[float], unit: str) -> str:
    """Paired differences as "mean (sd, n <unit>; d > 0 in k)"."""
    sd = statistics.stdev(ds) if len(ds) > 1 else float("nan")
    positive = sum(d > 0 for d in ds)
    return f"{statistics.fmean(ds):+.4f} (sd {sd:.4f}, {len(ds)} {unit}; d > 0 in {positive})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_retrain_args(parser)
    parser.add_argument("--group", type=int, default=3)
    args = parser.parse_args()
    if args.group < 2 or len(args.seeds) % args.group:
        parser.error(f"--seeds: a multiple of --group {args.group} (≥ 2) seeds")
    root, tag, specs, hw = retrain_setup(args)
    groups = []
    for start in range(0, len(args.seeds), args.group):
        seeds = args.seeds[start : start + args.group]
        own = [
            read_genotype(root / f"seed{s}-{tag}" / "artifacts" / "genotype.json") for s in seeds
        ]
        consensus = consensus_genotype(own)
        consensus = measured(consensus, consensus.input_size)
        print(f"group {seeds}: consensus {consensus.fingerprint()[:12]}", flush=True)
        ap = {g.fingerprint(): statistics.fmean(retrained_ap(s, g, root) for s in specs)
              for g in [consensus, *own]}  # fmt: skip
        singles = [ap[g.fingerprint()] for g in own]
        d = ap[consensus.fingerprint()] - statistics.fmean(singles)
        groups.append({"seeds": seeds, "consensus": ap[consensus.fingerprint()],
                       "singles": singles, "d": d})  # fmt: skip
        print(f"group {seeds}: consensus {ap[consensus.fingerprint()]:.4f}, seeds "
              f"{', '.join(f'{v:.4f}' for v in singles)}, d {d:+.4f}", flush=True)  # fmt: skip
    print(f"d = consensus − mean of its seeds: {d_spread([g['d'] for g in groups], 'groups')}")
    summary = {"seeds": args.seeds, "sets": args.sets, "group": args.group}
    summary |= {"retrain_seeds": args.retrain_seeds, "groups": groups, "hardware": hw.to_dict()}
    print(json.dumps(summary, sort_keys=True))


if __name__ == "__main__":
    main()
