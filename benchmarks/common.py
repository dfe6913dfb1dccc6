"""What the step benchmarks share: a seeded random supernet with random batches, and timing of
several cases alternating step by step."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from nfs_orchestrator.keypoints import load_grouping  # noqa: E402
from nfs_orchestrator.nn.backbones import build_backbone  # noqa: E402
from nfs_orchestrator.nn.supernet import PoseSupernet  # noqa: E402
from nfs_orchestrator.specs import load_fabric  # noqa: E402


def add_supernet_args(p: argparse.ArgumentParser) -> None:
    """The options ``random_supernet`` reads (all but the part count, which each benchmark
    takes its own way), defaulting to the paper's MPII configuration."""
    p.add_argument("--fabric", default="hrnet-w32_cnf5_mpii-256x256")
    p.add_argument("--backbone", default="hrnet_w32")
    p.add_argument("--dataset", default="mpii", choices=["mpii", "coco"])
    p.add_argument("--input", default="256x256", help="WxH")
    p.add_argument("--batch", type=int, default=4)


def random_supernet(
    fabric: str,
    backbone: str,
    dataset: str,
    parts: int,
    input_wh: str,
    batch: int,
    batches: int,
    partial_channels: int = 1,
    sampling: str = "mixed",
) -> tuple[PoseSupernet, list[dict[str, torch.Tensor]]]:
    """The supernet of ``fabric`` on ``backbone`` with grouping ``<dataset>-p<parts>`` (seed 0,
    random init) and ``batches`` random batches of ``batch`` images at ``input_wh`` ("WxH");
    ``partial_channels`` / ``sampling`` as ``search.*`` (the batches do not depend on them)."""
    torch.manual_seed(0)
    grouping = load_grouping(f"{dataset}-p{parts}")
    net = PoseSupernet(
        load_fabric(fabric),
        grouping,
        build_backbone(backbone, random_init=True),
        partial_channels,
        sampling,
    )
    torch.manual_seed(1)  # the same batches whatever the supernet's size
    w, h = (int(v) for v in input_wh.split("x"))
    k = grouping.num_keypoints
    data = [
        {
            "image": torch.randn(batch, 3, h, w),
            "heatmaps": torch.rand(batch, k, h // 4, w // 4),
            "target_weight": torch.ones(batch, k),
        }
        for _ in range(batches)
    ]
    return net, data


def time_alternating(
    cases: dict[str, Callable[[], None]], warmup: int, steps: int
) -> dict[str, dict[str, list[float]]]:
    """Wall and process-CPU seconds of each timed step of each case, interleaved step by step
    after ``warmup`` rounds of every case."""
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in cases}
    for _ in range(steps):
        for name, fn in cases.items():
            wall, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name]["cpu"].append(time.process_time() - cpu)
            times[name]["wall"].append(time.perf_counter() - wall)
    return times
