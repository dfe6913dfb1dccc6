"""Benchmark: where a supernet search step's work goes, by component, for partial channels K and
sampled ops — the counts behind ``supernet_step.py``'s ratios.

For each (P, K, sampling) it builds the seeded random supernet (``common.random_supernet``), runs
one forward, then one sync step's forward and backward, under
``torch.utils.flop_counter.FlopCounterMode`` (the step's total) and splits the forward's MACs
by module: the shared backbone, then over the P part fabrics the adapters, the cells' input
resampling (Down / Up convs), the mixed-op edges (the only work K and sampling
shrink), the cells' 1×1 output convs and the heads. With ``--profile`` it also runs
``torch.profiler`` over ``--steps`` steps of each case under the execution the search uses
(``hardware.choose_execution``, ``--precision``) and prints the self CPU time of the top
operators: element-wise work (β-weighted sums, BN, ReLU, the partial-channel concat and
shuffle) takes time but no MACs, so it does not shrink with K.

    python benchmarks/search_cost_breakdown.py --parts 5 --partial-channels 1 4
    python benchmarks/search_cost_breakdown.py --parts 5 --partial-channels 1 4 --profile --steps 2

MAC counts do not depend on the machine or its load; the profile's times do (say so when quoting
them). The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict

import torch
from common import add_supernet_args, random_supernet
from torch.utils.flop_counter import FlopCounterMode

from nfs_orchestrator.hardware import choose_execution, detect, prepare_model, run_model
from nfs_orchestrator.nn.losses import joints_mse

# component name -> module path pattern under the supernet (first match wins, deepest listed first)
COMPONENTS = (
    ("backbone", r"^PoseSupernet\.backbone$"),
    ("adapters", r"^PoseSupernet\.parts\.[^.]+\.adapters$"),
    ("resample", r"^PoseSupernet\.parts\.[^.]+\.cells\.[^.]+\.resample\.\d+$"),
    ("edges", r"^PoseSupernet\.parts\.[^.]+\.cells\.[^.]+\.edges\.\d+$"),
    ("cell_out", r"^PoseSupernet\.parts\.[^.]+\.cells\.[^.]+\.out$"),
    ("head", r"^PoseSupernet\.parts\.[^.]+\.head$"),
)


def step(net, batch, execution) -> None:
    """One sync search step's forward and backward (no optimizer: it has no MACs)."""
    out = run_model(net, batch["image"], execution)  # (B, K, H/4, W/4) fp32
    joints_mse(out, batch["heatmaps"], batch["target_weight"]).backward()


def mac_breakdown(net, batch) -> dict[str, float]:
    """GMACs of one forward by component (the counter's module attribution is exact in the
    forward pass only), the forward's total and the whole step's (forward + backward)."""
    with FlopCounterMode(display=False) as counter:
        net(batch["image"])  # with autograd on, as in a step (the tracker needs it)
    counts = counter.get_flop_counts()
    out: dict[str, float] = defaultdict(float)
    for name, pattern in COMPONENTS:
        for module, ops in counts.items():
            if re.match(pattern, module):
                out[name] += sum(ops.values()) / 2e9
    out["forward"] = counter.get_total_flops() / 2e9
    out["other"] = out["forward"] - sum(out[n] for n, _ in COMPONENTS)
    with FlopCounterMode(display=False) as counter:
        step(net, batch, None)
    out["step"] = counter.get_total_flops() / 2e9
    return dict(out)


def profile(net, batch, execution, steps: int, top: int) -> list[dict]:
    """Self CPU ms per step of the ``top`` operators over ``steps`` steps (after one warm-up)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step(net, batch, execution)
    net.zero_grad(set_to_none=True)
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step(net, batch, execution)
            net.zero_grad(set_to_none=True)
    rows = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in rows) / 1e3 / steps
    out = [{"op": "(all)", "self_ms": total, "calls": sum(e.count for e in rows) // steps}]
    for e in rows[:top]:
        out.append(
            {"op": e.key, "self_ms": e.self_cpu_time_total / 1e3 / steps, "calls": e.count // steps}
        )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_supernet_args(p)
    p.add_argument("--parts", type=int, nargs="+", default=[5])
    p.add_argument("--partial-channels", type=int, nargs="+", default=[1, 4], metavar="K")
    p.add_argument("--sampling", nargs="+", default=["mixed"], choices=["mixed", "gumbel"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument("--profile", action="store_true", help="also profile operator CPU time")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--top", type=int, default=12)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ex = choose_execution(detect(), args.precision)
    print(f"hardware: {detect().to_dict()}")
    print(f"config: {args.fabric} / {args.backbone} / {args.input} / batch {args.batch}")
    names = [n for n, _ in COMPONENTS] + ["other", "forward", "step"]
    print("case              " + "".join(f"{n:>10}" for n in names) + "   (GMAC; step = fwd+bwd)")
    results = []
    for parts in args.parts:
        for sampling in args.sampling:
            for k in args.partial_channels:
                net, (batch,) = random_supernet(
                    args.fabric, args.backbone, args.dataset, parts, args.input, args.batch, 1,
                    partial_channels=k, sampling=sampling,
                )  # fmt: skip
                net.train()
                case = f"P={parts} K={k} {sampling}"
                macs = mac_breakdown(net, batch)
                print(f"{case:<18}" + "".join(f"{macs[n]:10.2f}" for n in names), flush=True)
                row = {"parts": parts, "partial_channels": k, "sampling": sampling, "gmac": macs}
                if args.profile:
                    net = prepare_model(net, ex)
                    row["profile"] = profile(net, batch, ex, args.steps, args.top)
                    print(f"  profile under {ex.describe()}, self CPU ms per step:")
                    for r in row["profile"]:
                        print(f"    {r['op']:<40} {r['self_ms']:9.1f} ms  {r['calls']:6d} calls")
                results.append(row)
    print(json.dumps({"benchmark": "search_cost_breakdown", "execution": ex.describe(),
                      "hardware": detect().to_dict(), "results": results}))  # fmt: skip


if __name__ == "__main__":
    main()
