"""Benchmark: one supernet search step, the fast path against the per-part eager fp32 baseline.

Default configuration: the paper's HRNet-W32 + CNF×5 at MPII 256×256, batch 4, on CPU. For each
P (grouping ``<dataset>-p<P>``) and search mode (``sync``: one forward/backward and both
optimizers; ``first_order``: an α/β step and a weight step) one child process builds the
supernet twice with the same weights:

- baseline: per-part eager fp32 in NCHW, the reference path (no execution);
- fast: the execution ``hardware.choose_execution`` picks for this machine (``--precision`` and
  ``--memory-format`` override it), exactly what the search loop uses.

Search-cost variants run beside them, each in eager fp32 NCHW like the baseline, so their ratio
to it is the algorithm's alone: ``--partial-channels 4`` (PC-DARTS, ``search.partial_channels``;
several values allowed) and ``--sampling gumbel`` (GDAS, ``search.sampling``);
``--variant-execution fast`` runs them under the fast execution instead (paths ``fast+pc4``,
``fast+gumbel``: what a search with those settings runs on this machine), ``both`` runs both.
``--batched`` adds the fast execution with the P parts computed together (``nn.batched``).
``--device cuda`` runs every path on the GPU (synchronised timing, peak CUDA memory instead of
RSS, and the bf16 matmul rate measured as well).

It warms every path up, then times them alternating step by step and prints medians and their
ratios to the baseline.
In the same process it measures the machine's dense matmul rate (2048² ``torch.mm``) for each
precision in use, counts the MACs of one step of each path with ``torch.utils.flop_counter``
(forward and backward, what actually runs) and prints the achieved MAC rate as a fraction of the
matmul rate. Peak memory comes from one more child process per path (its own peak RSS). The last
line printed is one JSON object with every figure and the detected hardware.

    python benchmarks/supernet_step.py                       # P = 5, sync + first_order
    python benchmarks/supernet_step.py --parts 1 3 5 8 --modes sync
    python benchmarks/supernet_step.py --fabric tiny --backbone tiny --dataset coco --input 64x64
    python benchmarks/supernet_step.py --fabric tiny --backbone tiny --dataset coco --input 64x64 \
        --parts 3 --partial-channels 4 --sampling gumbel --steps 3
    python benchmarks/supernet_step.py --parts 1 5 8 --modes sync --partial-channels 4 \
        --sampling gumbel --variant-execution fast --warmup 2 --steps 3 --no-memory

This measures; it asserts nothing. ``benchmarks/RESULTS.md`` records figures with their hardware.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from common import add_supernet_args, random_supernet, time_alternating
from torch.utils.flop_counter import FlopCounterMode

from nfs_orchestrator.hardware import choose_execution, detect, prepare_model

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_rate(precision: str, device: str = "cpu", n: int = 2048, repeats: int = 5) -> float:
    """Dense ``torch.mm`` FLOP/s on this machine at ``precision`` (median after a warm-up)."""
    a = torch.randn(n, n, device=device).to(DTYPES[precision])
    b = torch.randn(n, n, device=device).to(DTYPES[precision])
    torch.mm(a, b)
    sync(device)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        sync(device)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def variants(args: argparse.Namespace) -> dict[str, dict]:
    """Search-cost variants timed beside the baseline: path name → supernet options. A name
    ``fast+…`` runs under the fast execution, the others in eager fp32 like the baseline
    (``--variant-execution``)."""
    algorithm = {f"pc{k}": {"partial_channels": k} for k in args.partial_channels if k != 1}
    if args.sampling == "gumbel":
        algorithm["gumbel"] = {"sampling": "gumbel"}
    out = {}
    if args.variant_execution in ("baseline", "both"):
        out |= algorithm
    if args.variant_execution in ("fast", "both"):
        out |= {f"fast+{name}": options for name, options in algorithm.items()}
    return out


def paths(args: argparse.Namespace) -> list[str]:
    return ["baseline", "fast", *(["batched"] if args.batched else []), *variants(args)]


def supernet(args: argparse.Namespace, **options):
    """The case's supernet and two fixed steps of one micro-batch (weight split, arch split)."""
    net, (b1, b2) = random_supernet(
        args.fabric,
        args.backbone,
        args.dataset,
        args.case_parts,
        args.input,
        args.batch,
        2,
        **options,
    )
    dev = args.device
    b1, b2 = ({k: v.to(dev) for k, v in b.items()} for b in (b1, b2))
    return net.to(dev), [b1], [b2]


def build_path(args: argparse.Namespace, path: str):
    """(supernet, execution or None, batches) of one path of the case."""
    ex = execution(args)
    if path in ("baseline", "fast", "batched"):
        net, b1, b2 = supernet(args)
        if path == "baseline":
            return net, None, b1, b2
        net = prepare_model(net, ex)
        net.batched = path == "batched"
        return net, ex, b1, b2
    net, b1, b2 = supernet(args, **variants(args)[path])
    if path.startswith("fast+"):
        return prepare_model(net, ex), ex, b1, b2
    return net, None, b1, b2


def stepper(net, b1, b2, mode: str, ex=None, device: str = "cpu"):
    """One search step of ``mode`` on ``net`` (own Adam optimizers) under execution ``ex``
    (None: the fp32 NCHW baseline), as a closure."""
    from nfs_orchestrator.runtime import LocalRuntime
    from nfs_orchestrator.search import bilevel

    weights, arch = list(net.weight_parameters()), list(net.arch_parameters())
    w_opt = torch.optim.Adam(weights, lr=1e-3)
    a_opt = torch.optim.Adam(arch, lr=3e-2)
    runtime = LocalRuntime("/tmp/posenfs-bench", verbose=False)
    net.train()

    def step() -> None:
        if mode == "sync":
            bilevel.joint_step(net, b1, weights, arch, w_opt, a_opt, runtime, execution=ex)
        else:
            bilevel.arch_step_first_order(net, b2, arch, a_opt, runtime, execution=ex)
            bilevel.weight_step(net, b1, weights, w_opt, runtime, execution=ex)
        sync(device)

    return step


def execution(args: argparse.Namespace):
    return choose_execution(detect(args.device), args.precision, args.memory_format)


def timing_case(args: argparse.Namespace) -> dict:
    """Child process: every path of one (P, mode), alternating; MACs; matmul rates."""
    ex = execution(args)
    steps = {}
    for path in paths(args):
        net, path_ex, b1, b2 = build_path(args, path)
        steps[path] = stepper(net, b1, b2, args.case_mode, path_ex, args.device)
    macs = {}
    for name, step in steps.items():  # the counted step is also the first warm-up step
        with FlopCounterMode(display=False) as counter:
            step()
        macs[name] = counter.get_total_flops() / 2
    timed = time_alternating(steps, args.warmup - 1, args.steps)
    times = {n: t["wall"] for n, t in timed.items()}
    wanted = {"fp32", ex.precision} | ({"bf16"} if args.device == "cuda" else set())
    rates = {p: matmul_rate(p, args.device) for p in sorted(wanted)}
    images = args.batch * (1 if args.case_mode == "sync" else 2)
    out = {"mode": args.case_mode, "parts": args.case_parts, "execution": ex.describe()}
    for name in steps:
        median = statistics.median(times[name])
        precision = ex.precision if name in ("fast", "batched") or "+" in name else "fp32"
        out[name] = {
            "median_s": median,
            "min_s": min(times[name]),
            # process CPU seconds: steadier than wall time on a machine shared with other jobs
            "cpu_median_s": statistics.median(timed[name]["cpu"]),
            "images_per_s": images / median,
            "macs_per_step": macs[name],
            "mac_per_s": macs[name] / median,
            "matmul_fraction": 2 * macs[name] / median / rates[precision],
        }
        if "bf16" in rates:
            out[name]["bf16_matmul_fraction"] = 2 * macs[name] / median / rates["bf16"]
    out["speedup"] = out["baseline"]["median_s"] / out["fast"]["median_s"]
    out["ratios"] = {  # baseline time / path time: > 1 is faster than the baseline
        name: out["baseline"]["median_s"] / out[name]["median_s"] for name in steps
    }
    out["cpu_ratios"] = {
        name: out["baseline"]["cpu_median_s"] / out[name]["cpu_median_s"] for name in steps
    }
    out["matmul_flop_per_s"] = rates
    return out


def memory_case(args: argparse.Namespace) -> dict:
    """Child process: peak RSS (CPU) or peak CUDA memory of one path over two steps."""
    net, ex, b1, b2 = build_path(args, args.case_path)
    step = stepper(net, b1, b2, args.case_mode, ex, args.device)
    step()
    step()
    if args.device == "cuda":
        return {"peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, *sys.argv[1:], *extra]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"benchmark case {extra} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_supernet_args(p)
    p.add_argument("--parts", type=int, nargs="+", default=[5])
    p.add_argument("--modes", nargs="+", default=["sync", "first_order"])
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    p.add_argument(
        "--memory-format", default="auto", choices=["auto", "contiguous", "channels_last"]
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--partial-channels",
        type=int,
        nargs="*",
        default=[],
        metavar="K",
        help="PC-DARTS variants (search.partial_channels), timed beside the baseline",
    )
    p.add_argument(
        "--sampling", choices=["gumbel"], help="GDAS variant (search.sampling), timed beside it"
    )
    p.add_argument(
        "--variant-execution",
        choices=["baseline", "fast", "both"],
        default="baseline",
        help="run the variants in eager fp32 (baseline), under the fast execution, or both",
    )
    p.add_argument("--batched", action="store_true", help="also time the batched-parts path")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    p.add_argument("--case-mode", help=argparse.SUPPRESS)
    p.add_argument("--case-parts", type=int, help=argparse.SUPPRESS)
    p.add_argument("--case-path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.case_mode:
        print(json.dumps(memory_case(args) if args.case_path else timing_case(args)))
        return
    hw = detect(args.device)
    print(f"hardware: {hw.to_dict()}", flush=True)
    print(f"execution (fast path): {execution(args).describe()}", flush=True)
    print(f"config: {args.fabric} / {args.backbone} / {args.input} / batch {args.batch}")
    rows = []
    for parts in args.parts:
        for mode in args.modes:
            case = ["--case-mode", mode, "--case-parts", str(parts)]
            row = child(args, *case)
            if not args.no_memory:
                for path in paths(args):
                    row[path].update(child(args, *case, "--case-path", path))
            rows.append(row)
            for path in paths(args):
                r = row[path]
                peak = r.get("peak_rss_mb", r.get("peak_cuda_mb"))
                mem = f"  peak {peak:.0f} MB" if peak is not None else ""
                print(
                    f"P={parts} {mode:<12} {path:<11} {r['median_s'] * 1000:8.1f} ms/step  "
                    f"(CPU {r['cpu_median_s'] * 1000:8.1f} ms)  "
                    f"{r['images_per_s']:6.2f} img/s  {r['mac_per_s'] / 1e9:6.1f} GMAC/s  "
                    f"{100 * r['matmul_fraction']:5.1f}% of matmul{mem}",
                    flush=True,
                )
            for path in paths(args)[1:]:
                ratio, cpu = row["ratios"][path], row["cpu_ratios"][path]
                print(
                    f"P={parts} {mode:<12} {path}/baseline speedup {ratio:.2f}x "
                    f"(CPU time {cpu:.2f}x)",
                    flush=True,
                )
    for mode in args.modes:
        by_parts = {r["parts"]: r for r in rows if r["mode"] == mode}
        if 1 in by_parts and len(by_parts) > 1:
            for path in paths(args):
                for parts, r in sorted(by_parts.items()):
                    ratio = r[path]["median_s"] / by_parts[1][path]["median_s"]
                    cpu = r[path]["cpu_median_s"] / by_parts[1][path]["cpu_median_s"]
                    print(
                        f"{mode}: P={parts} / P=1 step time ({path}) {ratio:.2f}x "
                        f"(CPU time {cpu:.2f}x)"
                    )
    keys = ("fabric", "backbone", "input", "batch", "threads", "device")
    config = {k: getattr(args, k) for k in keys}
    config["paths"] = paths(args)
    print(
        json.dumps(
            {
                "benchmark": "supernet_step",
                "hardware": hw.to_dict(),
                "execution": execution(args).describe(),
                "config": config,
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
