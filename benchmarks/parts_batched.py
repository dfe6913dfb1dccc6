"""Benchmark: the P part fabrics computed one after another (baseline) or batched (nn.batched).

Default configuration: the paper's HRNet-W32 + CNF×5 at MPII 256×256, batch 4, fp32, for P = 1, 3,
5 and 8 (groupings mpii-p1 … mpii-p8). For each P one supernet is built and the paths are timed
in the same process, alternating step by step after ``--warmup`` steps of each:

- ``step``: a sync search step like ``bilevel.joint_step`` with one micro-batch (forward,
  backward into weights and α/β, one Adam step each), through the backbone;
- ``fabric``: the same step with a fixed backbone pyramid (computed once, no gradient): the part
  fabrics alone, since on a CPU the backbone dominates the step;
- ``+cl``: the same cases in ``torch.channels_last`` (a copy of the supernet, the images and the
  pyramid converted), to see whether that layout helps on this CPU. Measured, not adopted.

Medians of wall time are reported; the JSON also has minimums and process-CPU medians (with one
thread, CPU time is the figure least disturbed by other processes). ``--threads 1`` avoids the
straggler stalls that 2-thread OpenMP regions suffer when other processes share the cores.

Printed: detected hardware, the median wall time of each case, the batched/baseline and
channels_last/NCHW ratios, P = 8 vs P = 1 ratios, and, last, one JSON line with every figure.
Small runs:

    python benchmarks/parts_batched.py --parts 1 3 --input 64x64 --batch 2 --steps 2
    python benchmarks/parts_batched.py --fabric tiny --backbone tiny --dataset coco --input 64x64

This measures; it asserts nothing (``tests/unit/test_batched.py`` proves the paths equal).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from collections.abc import Callable

import torch
from common import add_supernet_args, random_supernet, time_alternating

from nfs_orchestrator.hardware import detect
from nfs_orchestrator.nn.batched import batched_parts
from nfs_orchestrator.nn.losses import joints_mse
from nfs_orchestrator.nn.supernet import PoseSupernet, merge_parts

CL = torch.channels_last


def per_part(net: PoseSupernet, pyramid: list[torch.Tensor]) -> torch.Tensor:
    """The reference path, as ``PoseSupernet.forward`` runs it after the backbone."""
    maps = [fabric(pyramid, net.temperature) for fabric in net.parts.values()]
    return merge_parts(maps, net.grouping, net.channel_index())  # (B, K, H/4, W/4)


def make_step(
    net: PoseSupernet,
    parts_fn: Callable[[PoseSupernet, list[torch.Tensor]], torch.Tensor],
    batch: dict[str, torch.Tensor],
    pyramid: list[torch.Tensor] | None,
) -> Callable[[], None]:
    """One joint step (weights and α/β, Adam each); through the backbone unless ``pyramid``."""
    arch = list(net.arch_parameters())
    if pyramid is None:
        weights = list(net.weight_parameters())
    else:
        ids = {id(p) for p in arch}
        weights = [p for p in net.parts.parameters() if id(p) not in ids]
    w_opt = torch.optim.Adam(weights, lr=1e-3)
    a_opt = torch.optim.Adam(arch, lr=3e-2)

    def step() -> None:
        w_opt.zero_grad(set_to_none=True)
        a_opt.zero_grad(set_to_none=True)
        pyr = net.backbone(batch["image"]) if pyramid is None else pyramid
        loss = joints_mse(parts_fn(net, pyr), batch["heatmaps"], batch["target_weight"])
        loss.backward(inputs=weights + arch)
        w_opt.step()
        a_opt.step()

    return step


def run_parts(args: argparse.Namespace, parts: int) -> dict:
    net, (batch,) = random_supernet(
        args.fabric, args.backbone, args.dataset, parts, args.input, args.batch, batches=1
    )
    net.train()
    with torch.no_grad():
        pyramid = [p.detach() for p in net.backbone(batch["image"])]
        want = per_part(net, pyramid)
        check = float((batched_parts(net, pyramid) - want).norm() / want.norm())

    layouts = {"": (net, batch, pyramid)}
    if args.channels_last:
        batch_cl = {**batch, "image": batch["image"].contiguous(memory_format=CL)}
        pyramid_cl = [p.contiguous(memory_format=CL) for p in pyramid]
        layouts["+cl"] = (copy.deepcopy(net).to(memory_format=CL), batch_cl, pyramid_cl)
    paths = {"baseline": per_part, "batched": batched_parts}
    cases = {
        f"{scope}/{path}{layout}": make_step(model, fn, data, pyr if scope == "fabric" else None)
        for scope in ("step", "fabric")
        for layout, (model, data, pyr) in layouts.items()
        for path, fn in paths.items()
    }
    times = time_alternating(cases, args.warmup, args.steps)
    median = {name: statistics.median(t["wall"]) for name, t in times.items()}
    ratios = {
        f"{scope}{layout}": median[f"{scope}/batched{layout}"] / median[f"{scope}/baseline{layout}"]
        for scope in ("step", "fabric")
        for layout in layouts
    }
    if args.channels_last:  # channels_last / NCHW, same path
        for scope in ("step", "fabric"):
            for path in paths:
                name = f"{scope}/{path}"
                ratios[f"{name} cl/nchw"] = median[f"{name}+cl"] / median[name]
    return {
        "parts": parts,
        "forward_rel_diff": check,
        "median_s": median,
        "min_s": {name: min(t["wall"]) for name, t in times.items()},
        "median_cpu_s": {name: statistics.median(t["cpu"]) for name, t in times.items()},
        "ratios": ratios,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_supernet_args(p)
    p.add_argument("--parts", type=int, nargs="+", default=[1, 3, 5, 8])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--no-channels-last",
        dest="channels_last",
        action="store_false",
        help="skip the channels_last measurement",
    )
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    hw = detect().to_dict()
    print(f"hardware: {hw}", flush=True)
    print(
        f"config: {args.fabric} / {args.backbone} / {args.input} / batch {args.batch}, fp32, "
        f"{args.warmup} warm-up + {args.steps} timed steps per case, alternating; "
        f"median wall ms per step",
        flush=True,
    )
    rows = []
    for parts in args.parts:
        row = run_parts(args, parts)
        rows.append(row)
        cells = "  ".join(f"{name} {s * 1000:.0f}" for name, s in row["median_s"].items())
        ratios = "  ".join(f"{k} {v:.3f}" for k, v in row["ratios"].items())
        print(f"P={parts}: {cells}", flush=True)
        print(f"P={parts}: ratios: {ratios}  (forward rel diff {row['forward_rel_diff']:.1e})")
    by_p = {r["parts"]: r["median_s"] for r in rows}
    scaling = {}
    if 1 in by_p and 8 in by_p:
        scaling = {name: by_p[8][name] / by_p[1][name] for name in by_p[1]}
        print("P=8 / P=1: " + "  ".join(f"{k} {v:.2f}" for k, v in scaling.items()))
    config = {
        "fabric": args.fabric,
        "backbone": args.backbone,
        "input": args.input,
        "batch": args.batch,
        "precision": "fp32",
        "warmup": args.warmup,
        "steps": args.steps,
        "channels_last": args.channels_last,
    }
    result = {"benchmark": "parts_batched", "hardware": hw, "config": config, "results": rows}
    print(json.dumps({**result, "p8_over_p1": scaling}))


if __name__ == "__main__":
    main()
