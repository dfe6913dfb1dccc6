"""What the step-boundary pre-emption check costs against a search step (same run, same machine).

Two ranks (gloo over loopback, one process each) time, alternating step by step: a weight step
of the tiny supernet (forward, backward, gradient all-reduce, SGD) and the same step followed by
``TrialRuntime.should_stop_step`` (one all-reduce of one number). One rank: the check alone (a
flag read; Ray's drain table is polled at most once a second). Prints medians and the ratio.

    python benchmarks/step_stop_check.py [--steps 30] [--batch 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import random_supernet, time_alternating  # noqa: I001 - benchmarks/ on sys.path

from nfs_orchestrator.nn.losses import joints_mse
from nfs_orchestrator.orchestration.train_worker import TrialRuntime


class BenchRuntime(TrialRuntime):
    pass


def worker(rank: int, args: argparse.Namespace, port: int, out: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    runtime = BenchRuntime(rank=rank, world_size=2, device=torch.device("cpu"))
    net, data = random_supernet("tiny", "tiny", "coco", 3, "64x64", args.batch, 1)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    batch = data[0]

    def step() -> None:
        opt.zero_grad()
        loss = joints_mse(net(batch["image"]), batch["heatmaps"], batch["target_weight"])
        loss.backward()
        runtime.sync_gradients(net.parameters())
        opt.step()

    def step_and_check() -> None:
        step()
        runtime.should_stop_step()

    times = time_alternating({"step": step, "step+check": step_and_check}, 3, args.steps)
    if rank == 0:
        out.update({k: statistics.median(v["wall"]) for k, v in times.items()})
    runtime.close()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()

    one = BenchRuntime(rank=0, world_size=1, device=torch.device("cpu"))
    one.should_stop_step()  # the first drain poll (no Ray here: it fails, cached for 1 s)
    started = time.perf_counter()
    for _ in range(10_000):
        one.should_stop_step()
    single = (time.perf_counter() - started) / 10_000
    one.close()

    port = 29_000 + os.getpid() % 1000
    out = mp.Manager().dict()
    mp.spawn(worker, args=(args, port, out), nprocs=2)
    step, both = out["step"], out["step+check"]
    print(f"one rank: should_stop_step {single * 1e6:.2f} us per call")
    print(
        f"two ranks (gloo): step {step * 1e3:.1f} ms, step+check {both * 1e3:.1f} ms, "
        f"check {max(0.0, both - step) * 1e3:.2f} ms = {(both - step) / step:+.1%} of a step"
    )


if __name__ == "__main__":
    main()
