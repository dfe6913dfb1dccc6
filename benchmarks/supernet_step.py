"""Benchmark: one supernet search step (forward, backward, optimizer) on this machine.

Default configuration: the paper's HRNet-W32 + CNF×5 at MPII 256×256, batch 4, fp32, on CPU.
Each measured case runs in its own child process (so that its peak memory is its own), does
``--warmup`` steps, then ``--steps`` timed steps; the parent prints a table and, last, one JSON
line with every figure and the detected hardware.

    python benchmarks/supernet_step.py                      # sync + first_order, P = 5
    python benchmarks/supernet_step.py --parts 1 3 5 8      # P = 1/3/5/8, same backbone
    python benchmarks/supernet_step.py --fabric tiny --backbone tiny --input 64x64 --batch 8

This measures; it asserts nothing. ``benchmarks/RESULTS.md`` records figures with their hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def hardware() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        flags = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")),
            "",
        )
    except OSError:
        flags = ""
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "amx_bf16": "amx_bf16" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def one_case(args: argparse.Namespace) -> dict:
    """Runs in a child process: builds the supernet, times ``args.steps`` steps of one mode."""
    import torch

    from nfs_orchestrator.keypoints import load_grouping
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.counting import count_macs
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from nfs_orchestrator.runtime import LocalRuntime
    from nfs_orchestrator.search import bilevel
    from nfs_orchestrator.specs import load_fabric

    torch.manual_seed(0)
    w, h = (int(v) for v in args.input.split("x"))
    grouping = load_grouping(f"{args.dataset}-p{args.case_parts}")
    net = PoseSupernet(
        load_fabric(args.fabric), grouping, build_backbone(args.backbone, random_init=True)
    )
    weights, arch = list(net.weight_parameters()), list(net.arch_parameters())
    w_opt = torch.optim.Adam(weights, lr=1e-3)
    a_opt = torch.optim.Adam(arch, lr=3e-2)
    runtime = LocalRuntime("/tmp/posenfs-bench", verbose=False)
    k = grouping.num_keypoints

    def batch() -> dict:
        return {
            "image": torch.randn(args.batch, 3, h, w),
            "heatmaps": torch.rand(args.batch, k, h // 4, w // 4),
            "target_weight": torch.ones(args.batch, k),
        }

    b1, b2 = [batch()], [batch()]

    def step() -> None:
        if args.case_mode == "sync":
            bilevel.joint_step(net, b1, weights, arch, w_opt, a_opt, runtime)
        else:
            bilevel.arch_step_first_order(net, b2, arch, a_opt, runtime)
            bilevel.weight_step(net, b1, weights, w_opt, runtime)

    net.train()
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    forwards = 1 if args.case_mode == "sync" else 2
    macs = count_macs(net, (w, h), batch=args.batch) * forwards  # forward MACs per step
    return {
        "mode": args.case_mode,
        "parts": args.case_parts,
        "median_s": median,
        "images_per_s": args.batch * (1 if args.case_mode == "sync" else 2) / median,
        "forward_macs_per_step": macs,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fabric", default="hrnet-w32_cnf5_mpii-256x256")
    p.add_argument("--backbone", default="hrnet_w32")
    p.add_argument("--dataset", default="mpii", choices=["mpii", "coco"])
    p.add_argument("--input", default="256x256", help="WxH")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--parts", type=int, nargs="+", default=[5])
    p.add_argument("--modes", nargs="+", default=["sync", "first_order"])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--case-mode", help=argparse.SUPPRESS)
    p.add_argument("--case-parts", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.case_mode:
        print(json.dumps(one_case(args)))
        return
    hw = hardware()
    print(f"hardware: {hw}", flush=True)
    print(f"config: {args.fabric} / {args.backbone} / {args.input} / batch {args.batch}, fp32")
    rows = []
    for parts in args.parts:
        for mode in args.modes:
            cmd = [
                sys.executable,
                __file__,
                *sys.argv[1:],
                "--case-mode",
                mode,
                "--case-parts",
                str(parts),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"P={parts} {mode:<12} {row['median_s'] * 1000:8.1f} ms/step  "
                f"{row['images_per_s']:6.2f} img/s  "
                f"{row['forward_macs_per_step'] / row['median_s'] / 1e9:6.1f} GMAC/s (fwd)  "
                f"peak {row['peak_rss_mb']:.0f} MB",
                flush=True,
            )
    print(
        json.dumps(
            {
                "benchmark": "supernet_step",
                "hardware": hw,
                "config": {
                    "fabric": args.fabric,
                    "backbone": args.backbone,
                    "input": args.input,
                    "batch": args.batch,
                    "precision": "fp32",
                },
                "results": rows,
            }
        )
    )


if __name__ == "__main__":
    main()
