"""Benchmark: the α/β optimizer diagnostics (search/diagnostics.py) per epoch, by preset.

Runs the quickstart campaign's base trial (``experiments/quickstart.yaml``, ``trial({})``) in
this process with ``LocalRuntime`` under an arch preset (``search/presets.py``) and any ``--set``,
then prints per epoch the decay-equilibrium correlation, the |Adam step|/lr ratio and the
flags, as the search loop reported them (``metrics.jsonl``). A finished run under ``--root`` is
read again, not rerun.

    python benchmarks/arch_diagnostics.py --preset reference --root /tmp/diag
    python benchmarks/arch_diagnostics.py --preset default --root /tmp/diag

This measures; it asserts nothing. benchmarks/RESULTS.md ("Why the champion loses") has figures.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from nfs_orchestrator.campaign_spec import load_campaign  # noqa: E402
from nfs_orchestrator.hardware import detect  # noqa: E402
from nfs_orchestrator.runtime import LocalRuntime  # noqa: E402
from nfs_orchestrator.search.loop import run_search  # noqa: E402
from nfs_orchestrator.search.presets import arch_preset  # noqa: E402

KEYS = (
    "arch_decay_equilibrium_corr",
    "arch_step_ratio",
    "arch_flag_decay_equilibrium",
    "arch_flag_small_steps",
    "alpha_entropy_drop",
    "beta_entropy_drop",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--campaign", default=str(REPO / "experiments" / "quickstart.yaml"))
    parser.add_argument("--preset", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--root", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(args.root)
    hw = detect("cpu")
    print(f"hardware: {hw.name}, {hw.usable_cpus} usable CPUs, torch {hw.torch}", flush=True)
    sets = (
        f"data.root={root / 'data'}",
        f"seed={args.seed}",
        *arch_preset(args.preset),
        *args.sets,
    )
    trial = load_campaign(args.campaign, sets).trial({})
    run_dir = root / f"{args.preset}-seed{args.seed}"
    run_search(trial, LocalRuntime(run_dir, verbose=False))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    print("epoch  " + "  ".join(KEYS))
    for row in rows:
        cells = [f"{row[k]:.4f}" if k in row else "-" for k in KEYS]
        print(f"{int(row['epoch']) + 1:>5}  " + "  ".join(cells))
    print(json.dumps({"preset": args.preset, "seed": args.seed, "sets": sets, "rows": [
        {k: row.get(k) for k in ("epoch", *KEYS)} for row in rows]}))  # fmt: skip


if __name__ == "__main__":
    main()
