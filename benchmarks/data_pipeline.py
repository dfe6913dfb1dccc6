"""Benchmark: training samples/s of the COCO top-down pipeline on coco_mini.

What this is: a reproducible speed measurement, not a test. It builds the coco_mini train split
(read in place from ``../shared/data/coco_mini``; its index goes to a temporary cache folder),
input 192×256 with the default augmentation, and times full passes of a DataLoader (batch 32,
shuffle) with 0, 1 and 2 workers (persistent, after one warm-up pass); it reports the median
of the passes, the speed-up of each worker count over 0 workers, the hardware and the load
average (on a shared machine other processes distort every figure). With 0 workers the main
process also collates, with torch's intra-op threads; ``0@1thread`` repeats that case with
``torch.set_num_threads(1)`` (what DataLoader workers use) to show what those threads cost.
The last line printed is one JSON object with every figure.

Run:  .venv/bin/python benchmarks/data_pipeline.py [--passes 5] [--coco-mini PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from nfs_orchestrator.data import build_dataset
from nfs_orchestrator.hardware import detect
from nfs_orchestrator.keypoints import load_schema
from nfs_orchestrator.specs import DataSpec

DEFAULT_COCO_MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_mini"


def time_passes(dataset, workers: int, passes: int, batch_size: int) -> list[float]:
    """Samples/s of ``passes`` full shuffled passes after one warm-up pass."""
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    rates = []
    for i in range(passes + 1):
        start = time.perf_counter()
        n = sum(len(batch["image"]) for batch in loader)
        elapsed = time.perf_counter() - start
        if i > 0:  # pass 0 warms up: worker start, page cache, allocator
            rates.append(n / elapsed)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco-mini", type=Path, default=DEFAULT_COCO_MINI)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args()

    hw = detect().to_dict()
    print(
        f"hardware: {hw['name']}, {hw['usable_cpus']} usable cores ({hw['logical_cpus']} total), "
        f"torch {hw['torch']}, CPU capability {hw['cpu_capability']}"
    )
    spec = DataSpec(
        dataset="coco",
        root=str(args.coco_mini),
        train_annotations="annotations/person_keypoints_train2017.json",
        train_images="train2017",
        input_size=(192, 256),
    )
    # (name, DataLoader workers, torch threads of the main process or None = unchanged)
    runs = [(str(w), w, None) for w in args.workers]
    if 0 in args.workers:
        runs.insert(1, ("0@1thread", 0, 1))
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    figures: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as cache:
        dataset = build_dataset(spec, load_schema("coco17"), "train", train=True, cache_dir=cache)
        print(
            f"dataset: coco_mini train, {len(dataset)} instances, input 192x256, augmentation "
            f"on, batch {args.batch_size}, median of {args.passes} passes after 1 warm-up"
        )
        for name, workers, threads in runs:
            saved = torch.get_num_threads()
            torch.set_num_threads(threads or saved)
            try:
                rates = time_passes(dataset, workers, args.passes, args.batch_size)
            finally:
                torch.set_num_threads(saved)
            figures[name] = {
                "median": statistics.median(rates),
                "min": min(rates),
                "max": max(rates),
            }
            print(
                f"workers={name}: {figures[name]['median']:.1f} samples/s "
                f"(min {min(rates):.1f}, max {max(rates):.1f})"
            )
    base = figures.get("0", {}).get("median")
    result = {
        "benchmark": "data_pipeline",
        "dataset": "coco_mini/train2017",
        "instances": len(dataset),
        "input_size": [192, 256],
        "batch_size": args.batch_size,
        "passes": args.passes,
        "samples_per_s": {k: round(f["median"], 2) for k, f in figures.items()},
        "samples_per_s_min": {k: round(f["min"], 2) for k, f in figures.items()},
        "samples_per_s_max": {k: round(f["max"], 2) for k, f in figures.items()},
        "speedup_vs_0_workers": (
            {k: round(f["median"] / base, 3) for k, f in figures.items()} if base else None
        ),
        "load_average_1min": {
            "before": round(load_before, 2),
            "after": round(os.getloadavg()[0], 2),
        },
        "hardware": hw,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
