"""Benchmark: what a campaign costs beyond its search loops (start-up, scheduling, checkpoints,
tracking), on the embedded default.

What this is: a reproducible measurement, not a test. It runs a small campaign (the smoke
campaign: by default 2 trials × 3 epochs × 8 steps, 2 Train workers per trial, one trial at a
time; with ``--workers 1`` each trial runs its search in its Tune trial actor unless
``--worker-group always``) with ``run_campaign`` in this process, and, as the baseline, the same
base trial once in-process with ``LocalRuntime`` (no Ray, no MLflow; torch threads as a Train
worker gets).
The search loop's own time is the sum of the loop's ``epoch_time_s`` over every reported epoch
(read back from MLflow); everything else in the campaign's wall time is overhead: Ray start,
Tune scheduling, actor and worker-group start-up, data and model set-up, checkpoint upload,
MLflow logging, ledger writes, shutdown. It prints the overhead share, the overhead seconds per
trial, the campaign's wall time per trial against the baseline's, the detected hardware, and
last one JSON line with every figure.

Run it in a loopback-only network namespace (Ray binds to the machine's address otherwise):
    unshare -rn sh -c 'ip link set lo up && .venv/bin/python benchmarks/campaign_overhead.py'
Options: --trials N --epochs N --steps N --workers N --worker-group auto|always
--timeline: also print, per trial, when each of its Ray processes (Tune trial actor, Train
controller, Train workers) was asked for, started its Python process and became ready, and when
its actor ended, from Ray's state API (seconds after the trial actor's start).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.hardware import detect
from nfs_orchestrator.keypoints import load_grouping
from nfs_orchestrator.runtime import LocalRuntime

SMOKE = Path(__file__).resolve().parents[1] / "experiments" / "smoke.yaml"


def hardware() -> dict:
    """What ``nfs_orchestrator.hardware.detect`` sees, plus memory, GPU and Ray's version."""
    import ray

    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        **detect().to_dict(),
        "memory_gb": round(pages / 2**30, 1),
        "gpu": gpu,
        "ray": ray.__version__,
    }


def baseline(campaign, root: Path) -> dict:
    """The base trial run once in this process with LocalRuntime: wall time and loop time."""
    from nfs_orchestrator.orchestration.trial import build_trial
    from nfs_orchestrator.search.loop import run_search

    trial = build_trial(campaign, {}, "baseline", str(root))
    runtime = LocalRuntime(root / "baseline", verbose=False)
    torch.set_num_threads(max(1, int(campaign.resources.cpus_per_worker)))  # as a Train worker
    started = time.monotonic()
    run_search(trial, runtime)
    wall = time.monotonic() - started
    loop = sum(row["epoch_time_s"] for row in runtime.history)
    return {"wall_s": wall, "loop_s": loop, "epochs": len(runtime.history)}


def breakdown(result) -> dict[str, float]:
    """Where the campaign's time went, in seconds summed over trials (from MLflow and the
    ledger): ``startup`` (trial driver start → the search: actor, controller and worker-group
    start; near 0 when the search runs in the trial actor), ``setup`` (data, supernet, restore),
    ``loop`` (the epochs' ``epoch_time_s``), ``reporting`` (the rest of each trial's wall time:
    checkpoint persist, MLflow logging, Train/Tune report polling, teardown), and ``epochs``
    reported."""
    from nfs_orchestrator.orchestration import tracking

    c = tracking.client(result.record.tracking_uri)
    out = {"startup": 0.0, "setup": 0.0, "loop": 0.0, "reporting": 0.0, "epochs": 0}
    for row in result.rows:
        first = {}
        for name in ("startup_s", "setup_s"):
            history = c.get_metric_history(row["run_id"], name)
            first[name] = min(history, key=lambda m: m.step).value if history else 0.0
        loop = [m.value for m in c.get_metric_history(row["run_id"], "epoch_time_s")]
        out["startup"] += first["startup_s"]
        out["setup"] += first["setup_s"]
        out["loop"] += sum(loop)
        out["epochs"] += len(loop)
        out["reporting"] += (row["wall_time_s"] or 0.0) - first["startup_s"] - first["setup_s"]
        out["reporting"] -= sum(loop)
    return out


def timeline() -> list[dict]:
    """Ray's record of every actor of the campaign (it must still be running): class, pid,
    actor start/end and its worker process's launch request, process start and ready times
    (epoch seconds), in actor start order."""
    from ray.util.state import list_actors, list_workers

    workers = {
        w.pid: w for w in list_workers(detail=True, limit=10000, raise_on_missing_output=False)
    }
    rows = []
    for a in list_actors(detail=True, limit=10000, raise_on_missing_output=False):
        w = workers.get(a.pid)
        rows.append(
            {
                "actor": a.class_name,
                "pid": a.pid,
                "launch": (w.worker_launch_time_ms / 1e3)
                if w and w.worker_launch_time_ms and w.worker_launch_time_ms > 0
                else None,
                "process": (w.worker_launched_time_ms / 1e3)
                if w and w.worker_launched_time_ms and w.worker_launched_time_ms > 0
                else None,
                "ready": (w.start_time_ms / 1e3) if w and w.start_time_ms else None,
                "actor_start": (a.start_time_ms / 1e3) if a.start_time_ms else None,
                "actor_end": (a.end_time_ms / 1e3) if a.end_time_ms else None,
            }
        )
    return sorted(rows, key=lambda r: r["actor_start"] or 0.0)


def print_timeline(rows: list[dict]) -> None:
    """One line per actor, times in seconds after the first actor's start."""
    t0 = min(r["actor_start"] for r in rows if r["actor_start"])

    def rel(v: float | None) -> str:
        return "    -  " if v is None else f"{v - t0:7.1f}"

    print("actor                        pid    launch  process  ready  actor_start  actor_end")
    for r in rows:
        print(
            f"{r['actor'][:28]:<28} {r['pid']:>6} {rel(r['launch'])} {rel(r['process'])} "
            f"{rel(r['ready'])} {rel(r['actor_start'])}    {rel(r['actor_end'])}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--worker-group", choices=("auto", "always"), default="auto")
    parser.add_argument("--timeline", action="store_true", help="per-actor start/end times")
    args = parser.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    with tempfile.TemporaryDirectory(prefix="posenfs-bench-") as tmp:
        root = Path(tmp)
        overrides = (
            f"data.root={root / 'data'}",
            f"budget.num_trials={args.trials}",
            f"search.epochs={args.epochs}",
            f"search.steps_per_epoch={args.steps}",
            f"resources.workers_per_trial={args.workers}",
            f"resources.worker_group={args.worker_group}",
            f"search.batch_size={2 * args.workers}",
            "budget.max_concurrent=1",
        )
        campaign = load_campaign(SMOKE, overrides)
        load_grouping(campaign.grouping)
        base = baseline(campaign, root)  # also writes the synthetic data both runs share

        from nfs_orchestrator.orchestration import ray_session
        from nfs_orchestrator.orchestration.campaign import run_campaign

        started = time.monotonic()
        if args.timeline:  # Ray started here and kept up after the campaign, for its records
            ray_session.prepare_ray_environment(None)
            ray_session.start_ray(campaign.resources, campaign.budget, None)
        result = run_campaign(campaign, root / "runs", base_dir=root)
        wall = time.monotonic() - started
        actors = []
        if args.timeline:
            import ray

            actors = timeline()
            ray.shutdown()
        parts = breakdown(result)
        loop, epochs = parts["loop"], parts["epochs"]

    trials = len(result.rows)
    overhead = wall - loop
    figures = {
        "benchmark": "campaign_overhead",
        "hardware": hardware(),
        "config": {
            "trials": trials,
            "epochs": args.epochs,
            "steps_per_epoch": args.steps,
            "workers_per_trial": args.workers,
            "search_in_trial_actor": campaign.resources.search_in_trial_actor,
            "status": result.status,
        },
        "campaign_wall_s": round(wall, 2),
        "search_loop_s": round(loop, 2),
        "epochs_reported": epochs,
        "overhead_s": round(overhead, 2),
        "overhead_share": round(overhead / wall, 4),
        "overhead_s_per_trial": round(overhead / max(trials, 1), 2),
        "per_trial_s": {
            k: round(parts[k] / max(trials, 1), 2)
            for k in ("startup", "setup", "loop", "reporting")
        },
        "campaign_fixed_s": round(wall - sum(r["wall_time_s"] or 0.0 for r in result.rows), 2),
        "train_poll_s": os.environ.get("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "posenfs default"),
        "baseline_trial_wall_s": round(base["wall_s"], 2),
        "baseline_trial_loop_s": round(base["loop_s"], 2),
        "campaign_s_per_trial_vs_baseline": round(wall / max(trials, 1) / base["wall_s"], 2),
    }
    print(f"hardware: {figures['hardware']}")
    where = "in the trial actor" if campaign.resources.search_in_trial_actor else "worker group"
    print(
        f"campaign: {trials} trials × {args.epochs} epochs × {args.steps} steps, "
        f"{args.workers} workers/trial ({where}): {wall:.1f} s wall, "
        f"{loop:.1f} s in the search loop"
    )
    print(
        f"overhead: {overhead:.1f} s = {100 * overhead / wall:.0f}% of wall time, "
        f"{overhead / max(trials, 1):.1f} s per trial"
    )
    print(
        "per trial: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in figures["per_trial_s"].items())
        + f"; once per campaign (Ray start, Tune, shutdown): {figures['campaign_fixed_s']:.1f} s"
    )
    print(
        f"baseline (one trial in-process, LocalRuntime): {base['wall_s']:.1f} s wall, "
        f"{base['loop_s']:.1f} s loop; campaign per trial = "
        f"{figures['campaign_s_per_trial_vs_baseline']}× the baseline"
    )
    if actors:
        print_timeline(actors)
        figures["timeline"] = actors
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
