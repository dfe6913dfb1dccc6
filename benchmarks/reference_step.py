"""Benchmark: one ``sync`` search step of the reference PoseNFS code beside posenfs's per-part path.

The reference code (yangsenius/PoseNFS) is never vendored: point ``POSENFS_REFERENCE_PATH`` at a
checkout of it (the folder holding ``src/``) and ``POSENFS_REFERENCE_CONFIG`` at one of its YAML
configs (the one matching ``--fabric``/``--backbone``/``--dataset``/``--parts``). Without the
path, this prints one line saying it skipped and exits 0.

Both sides: random init (seed 0), the same random batch, one forward + backward into weights and
α/β (the reference's single-level step: its ``loss`` method), Adam on all parameters, eager fp32
NCHW on CPU. They are warmed up, then timed alternating step by step; the last line is one JSON
object with the medians and the ratio (reference time / posenfs time, > 1: posenfs faster).

    POSENFS_REFERENCE_PATH=~/src/PoseNFS POSENFS_REFERENCE_CONFIG=~/src/PoseNFS/configs/x.yaml \\
        python benchmarks/reference_step.py --fabric hrnet-w32_cnf5_mpii-256x256 \\
        --backbone hrnet_w32 --dataset mpii --parts 5 --input 256x256

This measures; it asserts nothing. The reference's own config loader is not used: its YAML is read
with PyYAML into attribute dicts, which is what its ``bulid_up_network`` reads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

import torch
import yaml
from common import add_supernet_args, random_supernet, time_alternating

from nfs_orchestrator.nn.losses import joints_mse

SKIP = "reference_step: skipped: POSENFS_REFERENCE_PATH is not set (a checkout of the reference"


class AttrDict(dict):
    """A YAML mapping read as attributes (``config.model.subnetwork_config``), recursively."""

    def __getattr__(self, key: str):
        try:
            value = self[key]
        except KeyError:
            raise AttributeError(key) from None
        return AttrDict(value) if isinstance(value, dict) else value


def reference_model(root: Path, config_path: Path) -> torch.nn.Module:
    """The reference network of ``config_path``, built by its own ``bulid_up_network``."""
    sys.path.insert(0, str(root / "src"))
    sys.path.insert(0, str(root))
    # the reference's entry point (src/build_your_net.py; it imports ``thop`` and ``utils``)
    from src.build_your_net import bulid_up_network

    config = AttrDict(yaml.safe_load(config_path.read_text()))
    return bulid_up_network(config, joints_mse)


def step_of(model: torch.nn.Module, forward, batch: dict[str, torch.Tensor]):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        pred = forward(batch["image"])
        joints_mse(pred, batch["heatmaps"], batch["target_weight"]).backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_supernet_args(p)
    p.add_argument("--parts", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    root = os.environ.get("POSENFS_REFERENCE_PATH")
    if not root:
        print(f"{SKIP} PoseNFS code, the folder holding src/)")
        return
    config = os.environ.get("POSENFS_REFERENCE_CONFIG")
    if not config:
        raise SystemExit("reference_step: POSENFS_REFERENCE_CONFIG must name a reference config")
    net, (batch,) = random_supernet(
        args.fabric, args.backbone, args.dataset, args.parts, args.input, args.batch, 1
    )
    torch.manual_seed(0)  # the reference orders MPII joints differently: timing does not care
    ref = reference_model(Path(root).expanduser(), Path(config).expanduser())
    steps = {"posenfs": step_of(net, net, batch), "reference": step_of(ref, ref, batch)}
    times = {n: t["wall"] for n, t in time_alternating(steps, args.warmup, args.steps).items()}
    medians = {n: statistics.median(t) for n, t in times.items()}
    for name, median in medians.items():
        print(f"{name:<10} {median * 1000:8.1f} ms/step")
    ratio = medians["reference"] / medians["posenfs"]
    print(f"reference/posenfs step time {ratio:.2f}x")
    print(
        json.dumps(
            {
                "benchmark": "reference_step",
                "config": {**vars(args), "reference_config": config},
                "median_s": medians,
                "ratio": ratio,
            }
        )
    )


if __name__ == "__main__":
    main()
