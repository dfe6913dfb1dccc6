"""What a campaign will cost, before it runs: ``posenfs search FILE --dry-run``, on any machine.

What this is: the forecast of a campaign without a cluster and without GPUs, and the ETA rules
that the running campaign and its trials print (``eta_line``, ``EpochProgress``).

    count      trials × epochs × steps from the spec and the data (search steps, validations)
    time here  the base trial's supernet, random batches at the trial's micro-batch and input
               size, on this CPU with the threads Ray will give a worker: one warm-up step,
               then 2–5 timed steps (CPU seconds); FLOPs of a forward pass counted
               (``torch.utils.flop_counter``), a step's as 3 forwards per pass (``PASSES``)
    scale      to the target: ``cpu`` = this machine as measured; a GPU profile
               (``DEVICE_PROFILES``) = the step's FLOPs at a guessed sustained rate of that
               GPU, i.e. a factor over this CPU's measured rate (printed); or the user's
               ``--step-seconds``
    add        per-epoch validation (timed forward passes) and reporting (genotype, drawings:
               timed), per-trial start (``TRIAL_START_S``) and campaign start
    ASHA       Ray's asynchronous rule simulated (``asha_simulation``): expected epochs per
               trial and the wall-clock of trials packed onto the cluster's trial slots

What it is not: a benchmark (``benchmarks/``) or the plan of resources (``orchestration/
ray_session.plan_resources``, which the CLI passes in as ``slots``). Pure PyTorch: no ray,
optuna or mlflow.
"""

from __future__ import annotations

import heapq
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from nfs_orchestrator.errors import SpecError

# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceProfile:
    """A target device: its dense peak at the precision posenfs picks there (bf16 autocast on
    compute capability ≥ 8.0, fp32 below: ``hardware.choose_execution``) and the share of that
    peak a supernet step sustains. The peaks are the vendors' data-sheet figures (dense, no
    sparsity); the share is a GUESS until a GPU run calibrates it: HRNet-W32-size training at
    ≤ 32 images per GPU sustains about a tenth of fp32 peak on V100-class GPUs, and a smaller
    share of bf16 tensor-core peaks (many small convolutions, launch-bound)."""

    name: str
    peak_tflops: float  # dense, at the precision used
    utilisation: float  # sustained share of the peak in a supernet step (guess)
    precision: str

    @property
    def flops_per_s(self) -> float:
        return self.peak_tflops * 1e12 * self.utilisation


DEVICE_PROFILES: dict[str, DeviceProfile] = {
    "cpu": DeviceProfile("this machine's CPU, as measured", 0.0, 1.0, "as detected"),
    "v100": DeviceProfile("NVIDIA V100 SXM2", 15.7, 0.10, "fp32"),
    "a100": DeviceProfile("NVIDIA A100 SXM", 312.0, 0.05, "bf16"),
    "l4": DeviceProfile("NVIDIA L4", 121.0, 0.05, "bf16"),
    "h100": DeviceProfile("NVIDIA H100 SXM", 989.0, 0.03, "bf16"),
    "h200": DeviceProfile("NVIDIA H200 SXM", 989.0, 0.03, "bf16"),
}
DEFAULT_GPU_PROFILE = "a100"

# Standard split sizes (person instances) when the data is not on this machine: HRNet's MPII
# preparation (annot/train.json, valid.json) and COCO 2017 person keypoints with GT boxes.
STANDARD_SPLITS: dict[str, tuple[int, int]] = {  # dataset: (train, val) person instances
    "mpii": (22246, 2958),
    "coco": (149813, 6352),
}
# bytes of the images: the MPII image archive; COCO train2017 + val2017
STANDARD_BYTES: dict[str, float] = {"mpii": 12.9e9, "coco": 19.3e9}

# Seconds outside the epoch loop, from benchmarks/RESULTS.md "Campaign overhead" (2-vCPU
# machine): a trial whose search runs in its (reused) Tune trial actor ≈ 5 s; one that starts a
# Ray Train controller and worker group ≈ 25 s; the campaign itself (Ray, Tune, first actor).
TRIAL_START_S = {"trial actor": 5.0, "worker group": 25.0}
CAMPAIGN_START_S = 15.0
VAL_BATCH = 32  # evaluate_model's batch
# Forward+backward passes of one step per search mode while α/β are searched (a weight-only
# step is 1), each counted as 3 forward passes of FLOPs (backward ≈ 2 forwards): first_order
# an α/β pass and a weight pass; second_order DARTS' unrolled step (virtual step, α/β pass at
# w', two finite-difference passes) and the weight pass; sync one joint pass.
PASSES = {"first_order": 2, "second_order": 5, "sync": 1, "random": 1, "none": 1}


# --------------------------------------------------------------------------------------------
# ASHA: Ray's asynchronous successive halving, simulated
# --------------------------------------------------------------------------------------------


def asha_rungs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The milestones (epochs) at which Ray's ASHA decides, ascending: grace · rf^k, as many as
    ``int(log(max_t / grace) / log(rf) + 1)`` (ray.tune.schedulers.async_hyperband)."""
    count = int(math.log(max_t / grace_period) / math.log(reduction_factor) + 1)
    return [grace_period * reduction_factor**k for k in range(count)]


def _percentile(values: list[float], q: float) -> float:
    """numpy's default (linear) percentile, ``q`` in [0, 100]."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def asha_run(
    quality: list[float], rungs: list[int], reduction_factor: int, max_t: int
) -> list[int]:
    """Epochs each trial runs under ASHA when trial i reaches every rung after trials < i
    (equal epoch times, trials started in order) and reports ``quality[i]`` at every rung:
    at a rung, a trial stops when it is below the (1 - 1/rf) percentile of the results
    recorded there before it (the first one always goes on)."""
    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    epochs = []
    for q in quality:
        ran = max_t
        for rung in rungs:
            if rung >= max_t:
                break
            seen = recorded[rung]
            cutoff = _percentile(seen, (1 - 1 / reduction_factor) * 100) if seen else None
            seen.append(q)
            if cutoff is not None and q < cutoff:
                ran = rung
                break
        epochs.append(ran)
    return epochs


@dataclass(frozen=True)
class AshaForecast:
    rungs: tuple[int, ...]
    epoch_fraction: float  # expected share of trial-epochs run, of num_trials × max_t
    draws: int


def asha_simulation(
    num_trials: int,
    grace_period: int,
    reduction_factor: int,
    max_t: int,
    draws: int = 2000,
    seed: int = 0,
) -> AshaForecast:
    """Expected share of epochs ASHA runs: ``asha_run`` over ``draws`` random orders of trial
    quality (a trial's rank is the same at every rung), seeded, so the forecast is repeatable."""
    rungs = asha_rungs(grace_period, reduction_factor, max_t)
    rng = random.Random(seed)
    total = 0
    for _ in range(draws):
        quality = [rng.random() for _ in range(num_trials)]
        total += sum(asha_run(quality, rungs, reduction_factor, max_t))
    return AshaForecast(tuple(rungs), total / (draws * num_trials * max_t), draws)


def pack_trials(durations: list[float], slots: int) -> float:
    """Wall-clock of trials started in order on ``slots`` slots, each on the first free one."""
    free = [0.0] * max(1, slots)
    end = 0.0
    for d in durations:
        start = heapq.heappop(free)
        heapq.heappush(free, start + d)
        end = max(end, start + d)
    return end


# --------------------------------------------------------------------------------------------
# Counting: steps and validations of a trial
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataForecast:
    """The data a trial reads: instances of each split, where, and bytes on disk."""

    dataset: str
    train: int
    val: int
    weight_split: int  # instances the weight steps draw from (bilevel: the 2-part of 2:1)
    where: str  # "found at …", "generated for the forecast" or "standard sizes: …"
    bytes_on_disk: float | None
    load_s_per_image: float | None  # measured crop + target time of one training image

    def describe(self) -> str:
        size = f", {self.bytes_on_disk / 1e9:.2f} GB on disk" if self.bytes_on_disk else ""
        return (
            f"{self.dataset}: train {self.train:,} instances (weight split {self.weight_split:,}),"
            f" val {self.val:,}{size} ({self.where})"
        )


def _folder_bytes(*paths: Path) -> float:
    total, seen = 0, set()
    for p in paths:
        p = p.resolve()
        if p in seen or not p.exists():
            continue
        seen.add(p)
        if p.is_file():
            total += p.stat().st_size
            continue
        for dirpath, _, files in os.walk(p):
            for name in files:
                total += os.stat(os.path.join(dirpath, name)).st_size
    return float(total)


def data_forecast(trial, time_loading: bool = True) -> DataForecast:
    """Split sizes from the data when it is here (a synthetic set is generated into a temporary
    folder when it is not written yet), else the standard sizes of the dataset."""
    from nfs_orchestrator.data import build_dataset, split_image_disjoint
    from nfs_orchestrator.data.dataset import synthetic_root

    data, schema, search = trial.data, trial.grouping.schema, trial.search
    bilevel = search.mode in ("first_order", "second_order")
    with tempfile.TemporaryDirectory(prefix="posenfs-forecast-") as tmp:
        if data.dataset == "synthetic":
            here = synthetic_root(data).is_dir()
            spec = data if here else replace(data, root=tmp)
            where = f"at {synthetic_root(data)}" if here else "generated for the forecast"
            folders = [synthetic_root(spec)]
        else:
            spec = data
            if not data.path(data.train_annotations).is_file():
                train, val = STANDARD_SPLITS[data.dataset]
                train = min(train, data.max_train_instances or train)
                val = min(val, data.max_val_instances or val)
                weight = train * search.split[0] // sum(search.split) if bilevel else train
                return DataForecast(
                    data.dataset, train, val, weight,
                    f"not on this machine ({data.root}): the standard split sizes",
                    STANDARD_BYTES[data.dataset], None,
                )  # fmt: skip
            where = f"at {data.root}"
            folders = [
                data.path(data.train_annotations), data.path(data.val_annotations or "."),
                data.path(data.train_images or "."), data.path(data.val_images or "."),
            ]  # fmt: skip
        train_set = build_dataset(spec, schema, "train", train=True)
        val_set = build_dataset(spec, schema, "val", train=False)
        weight = len(train_set)
        if bilevel:
            weight = len(split_image_disjoint(train_set, search.split, trial.seed)[0])
        load_s = None
        if time_loading and search.loader_workers == 0:  # loading then sits in the step
            n = min(8, len(train_set))
            started = time.process_time()  # CPU seconds: the neighbours on a shared machine
            for i in range(n):
                train_set[i]
            load_s = (time.process_time() - started) / n
        on_disk = _folder_bytes(*folders)
    return DataForecast(data.dataset, len(train_set), len(val_set), weight, where, on_disk, load_s)


def steps_per_epoch(weight_split: int, batch_size: int, steps: int | None) -> int:
    """Weight steps of an epoch (``loop_utils.steps_in_epoch``): ``steps_per_epoch`` when set,
    else one pass over the weight split in whole steps."""
    one_pass = weight_split // batch_size
    return one_pass if steps is None or one_pass == 0 else steps


def validations(epochs_run: int, epochs: int, val_every: int) -> int:
    """Validation passes in the first ``epochs_run`` epochs: every ``val_every``-th epoch
    and the last one of the trial (``search.loop``)."""
    return sum(1 for e in range(1, epochs_run + 1) if e % val_every == 0 or e == epochs)


# --------------------------------------------------------------------------------------------
# Timing here
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTiming:
    """Seconds measured on this CPU for one trial's supernet, and the FLOPs they did."""

    hardware: str
    threads: int
    execution: str
    micro: int  # images per forward when timed
    arch_step_s: float  # one micro-batch step with α/β (the mode's step)
    weight_step_s: float  # one micro-batch weight-only step (α/β warm-up epochs)
    arch_step_flops: float
    weight_step_flops: float
    forward_s_per_image: float  # validation forward, per image
    forward_flops_per_image: float
    report_s: float  # genotype derivation + drawings of one epoch
    timed_steps: int


def _median_time(fn, budget_s: float, most: int) -> tuple[float, int]:
    """Median seconds of ``fn`` over 2..``most`` calls (while within ``budget_s``), as this
    process's CPU seconds per torch thread: on a shared machine the wall clock measures the
    neighbours too (perfect scaling over threads is assumed)."""
    import torch

    threads = torch.get_num_threads()
    times: list[float] = []
    spent = time.process_time()
    while len(times) < min(2, most) or (
        len(times) < most and time.process_time() - spent < budget_s * threads
    ):
        started = time.process_time()
        fn()
        times.append((time.process_time() - started) / threads)
    return statistics.median(times), len(times)


def _flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def time_trial_step(trial, micro: int, threads: int, budget_s: float = 3.0) -> StepTiming:
    """Times ``trial``'s supernet search steps on this CPU at ``micro`` images per forward with
    ``threads`` torch threads: one warm-up step, then the median of 2–5 steps (within
    ``budget_s`` CPU seconds per thread); the weight-only step likewise when the mode's step
    differs; validation forward passes (their FLOPs counted); one epoch's genotype and
    drawings."""
    import itertools

    import torch

    from nfs_orchestrator.hardware import choose_execution, detect, prepare_model, run_model
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from nfs_orchestrator.runtime import LocalRuntime
    from nfs_orchestrator.search import bilevel
    from nfs_orchestrator.search.loop import arch_snapshot, init_arch, render_artifacts

    search = trial.search
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        backbone = build_backbone(trial.backbone.name, random_init=True)
        model = PoseSupernet(
            trial.fabric, trial.grouping, backbone, search.partial_channels, search.sampling
        )
        init_arch(model, search)
        hw = detect("cpu")
        execution = choose_execution(hw, search.precision, search.memory_format)
        prepare_model(model, execution)
        w, h = trial.data.input_size
        k = trial.grouping.num_keypoints
        batch = {
            "image": torch.randn(micro, 3, h, w),  # (B, 3, H, W)
            "heatmaps": torch.rand(micro, k, h // 4, w // 4),  # (B, K, H/4, W/4)
            "target_weight": torch.ones(micro, k),
        }
        weights = [p for p in model.weight_parameters() if p.requires_grad]
        arch = [p for p in model.arch_parameters() if p.requires_grad]
        w_opt = torch.optim.Adam(weights, lr=1e-4)
        a_opt = torch.optim.Adam(arch, lr=1e-4) if arch else None
        with tempfile.TemporaryDirectory(prefix="posenfs-forecast-") as tmp:
            state = bilevel.StepState(
                model, weights, arch, w_opt, a_opt, LocalRuntime(tmp, verbose=False),
                None, 1e-4, 0.0, execution,
            )  # fmt: skip
            arch_batches = itertools.repeat([batch])
            model.train()
            mode_step = bilevel.STEPS.get(search.mode) if a_opt is not None else None
            steps = {"weight": bilevel.WEIGHTS_ONLY}
            if mode_step is not None and search.mode != "sync":
                steps["arch"] = mode_step
            elif mode_step is not None:  # sync: one backward into both, as the weight step
                steps = {"weight": mode_step}
            seconds, timed = {}, 0
            for name, step in steps.items():
                run = lambda step=step: step(state, [batch], arch_batches)  # noqa: E731
                run()  # warm-up
                seconds[name], n = _median_time(run, budget_s / len(steps), 5)
                timed += n
            model.eval()
            images = torch.randn(min(micro, VAL_BATCH), 3, h, w)
            fwd = lambda: run_model(model, images, execution)  # noqa: E731
            fwd_flops = _flops(fwd)  # with autograd on: the flop counter's module hooks need it
            with torch.no_grad():
                fwd_s, _ = _median_time(fwd, 1.0, 3)
                for p in model.arch_parameters():  # the timed steps' α/β may be anything
                    p.zero_()

            def report() -> None:  # what every epoch adds on rank 0 besides validation
                genotype = model.genotype(trial.data.input_size, trial.backbone.name)
                render_artifacts(genotype, [arch_snapshot(model)])

            report_s, _ = _median_time(report, 0.0, 1)  # the first call also imports
            if report_s < 2.0:  # cheap enough to time again, warm (what every later epoch costs)
                report_s, _ = _median_time(report, 0.0, 1)
    finally:
        torch.set_num_threads(before)
    passes = PASSES[search.mode] if "arch" in steps else 1
    return StepTiming(
        hardware=f"{hw.name} ({hw.cpu_capability})",
        threads=threads,
        execution=execution.describe(),
        micro=micro,
        arch_step_s=seconds.get("arch", seconds["weight"]),
        weight_step_s=seconds["weight"],
        arch_step_flops=3 * fwd_flops / len(images) * micro * passes,
        weight_step_flops=3 * fwd_flops / len(images) * micro,
        forward_s_per_image=fwd_s / len(images),
        forward_flops_per_image=fwd_flops / len(images),
        report_s=report_s,
        timed_steps=timed,
    )


# --------------------------------------------------------------------------------------------
# The forecast
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    """Everything ``format_forecast`` prints; seconds are per trial on its worker group."""

    campaign_id: str
    trials: int
    epochs: int
    steps: int  # weight steps per epoch
    micro: int
    accumulation: int
    workers: int
    gpus_per_trial: float
    slots: int
    data: DataForecast
    timing: StepTiming | None
    target: str  # the device profile's name or "--step-seconds"
    factor: float  # CPU measured seconds / target seconds, per step
    mix: dict[str, dict[str, float]]  # outer key → {value: step cost / the base trial's}
    step_s: float  # one optimizer step with α/β on the target
    warm_step_s: float  # one optimizer step without (α/β warm-up epochs)
    arch_start: int
    val_s: float  # one validation pass
    val_every: int
    report_s: float
    start_s: float
    asha: AshaForecast | None
    trial_s_full: float
    trial_s_asha: float | None
    wall_s_full: float
    wall_s_asha: float | None

    def epoch_s(self, epoch: int) -> float:
        """Seconds of epoch ``epoch`` (0-based) without validation."""
        step = self.step_s if epoch >= self.arch_start else self.warm_step_s
        return self.steps * step + self.report_s

    def trial_s(self, epochs_run: int) -> float:
        val = validations(epochs_run, self.epochs, self.val_every) * self.val_s
        return self.start_s + sum(self.epoch_s(e) for e in range(epochs_run)) + val


def profile(name: str) -> DeviceProfile:
    if name not in DEVICE_PROFILES:
        raise SpecError(f"--device-profile: {name!r} is not one of {', '.join(DEVICE_PROFILES)}")
    return DEVICE_PROFILES[name]


# Outer parameters that change what a step computes (the fabric, the part grouping); the
# others (learning rates, schedules) change the numbers, not the cost.
COST_KEYS = ("grouping", "fabric")


def forward_flops(trial) -> float:
    """FLOPs of one image's forward through ``trial``'s supernet (counted, not timed)."""
    import torch

    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.supernet import PoseSupernet

    s = trial.search
    model = PoseSupernet(
        trial.fabric, trial.grouping, build_backbone(trial.backbone.name, random_init=True),
        s.partial_channels, s.sampling,
    )  # fmt: skip
    w, h = trial.data.input_size
    return _flops(lambda: model(torch.randn(1, 3, h, w)))


def outer_cost_mix(
    campaign, base: StepTiming, micro: int, threads: int, budget_s: float, on_cpu: bool
) -> dict[str, dict[str, float]]:
    """For each unconditional outer parameter that changes the step's cost (``COST_KEYS``): the
    step cost at each value its domain gives (every choice, both bounds of a range) over the
    base trial's, timed here (CPU targets) or counted in FLOPs (GPU targets). A campaign that
    spends half its trials on P = 3 costs more than its P = 1 base trial alone."""
    from nfs_orchestrator.campaign_spec import domain_values

    mix: dict[str, dict[str, float]] = {}
    for key, param in campaign.outer.items():
        if param.when or key.split(".")[0] not in COST_KEYS:
            continue
        ratios = {}
        for value in domain_values(param):
            trial = campaign.trial({key: value})
            if on_cpu:
                ratios[str(value)] = time_trial_step(trial, micro, threads, budget_s).arch_step_s
            else:  # a step's FLOPs are 3 × forward × passes: the ratio is the forward's
                ratios[str(value)] = forward_flops(trial)
        base_cost = base.arch_step_s if on_cpu else base.forward_flops_per_image
        mix[key] = {v: c / base_cost for v, c in ratios.items()}
    return mix


def mix_factor(mix: dict[str, dict[str, float]]) -> float:
    """The expected step cost over the base trial's when each parameter's values are drawn
    equally often and independently: the product of the per-parameter means."""
    return math.prod(statistics.fmean(r.values()) for r in mix.values()) if mix else 1.0


def forecast_campaign(
    campaign,
    slots: int,
    step_seconds: float | None = None,
    device_profile: str | None = None,
    time_budget_s: float = 3.0,
) -> Forecast:
    """The forecast of ``campaign`` on a cluster with ``slots`` concurrent trials. With
    ``step_seconds`` nothing is timed (the user's seconds per optimizer step on the target,
    with α/β); else the base trial is timed here and scaled to ``device_profile`` (default:
    ``cpu`` for a CPU campaign, ``a100`` for a GPU one)."""
    from nfs_orchestrator.loop_utils import batch_plan

    if step_seconds is not None and not step_seconds > 0:
        raise SpecError(f"--step-seconds: {step_seconds:g} must be > 0")
    b, r, s = campaign.budget, campaign.resources, campaign.search
    gpus = r.workers_per_trial * r.gpus_per_worker
    name = device_profile or (DEFAULT_GPU_PROFILE if gpus else "cpu")
    target = profile(name)
    trial = campaign.trial({})
    micro, accumulation = batch_plan(s.batch_size, s.micro_batch, r.workers_per_trial)
    data = data_forecast(trial, time_loading=step_seconds is None)
    steps = steps_per_epoch(data.weight_split, s.batch_size, s.steps_per_epoch)
    val_images = data.val * (2 if trial.data.flip_test else 1)
    timing = None
    mix: dict[str, dict[str, float]] = {}
    if step_seconds is not None:
        factor = 1.0
        step_s = warm_s = step_seconds
        val_s = 0.0  # unknown without timing: folded into the user's figure
        report_s = 0.0
        target_name = "--step-seconds"
    else:
        on_cpu = name == "cpu"
        cpus = r.cpus_per_worker + (r.trial_cpus if r.search_in_trial_actor else 0.0)
        threads = max(1, math.floor(cpus + 1e-9))  # what Ray gives (OMP_NUM_THREADS)
        threads = min(threads, len(os.sched_getaffinity(0)) if on_cpu else 1)
        timed_micro = micro if on_cpu else 1  # a GPU batch on this CPU: 1 image, × micro
        timing = time_trial_step(trial, timed_micro, threads, time_budget_s)
        per_step = accumulation * micro / timed_micro  # micro-batches of a step, in timed units
        load = (data.load_s_per_image or 0.0) * micro * accumulation
        report_s = timing.report_s
        if on_cpu:
            factor = 1.0
            step_s = timing.arch_step_s * per_step + load
            warm_s = timing.weight_step_s * per_step + load
            val_s = val_images * timing.forward_s_per_image
        else:
            rate = target.flops_per_s
            step_s = timing.arch_step_flops * per_step / rate
            warm_s = timing.weight_step_flops * per_step / rate
            val_s = val_images * timing.forward_flops_per_image / rate
            factor = timing.arch_step_s * per_step / step_s
        target_name = name
        mix = outer_cost_mix(campaign, timing, timed_micro, threads, time_budget_s, on_cpu)
        scale = mix_factor(mix)
        step_s, warm_s, val_s = step_s * scale, warm_s * scale, val_s * scale
    arch_start = s.arch_start if s.searches_arch else s.epochs
    start_s = TRIAL_START_S["trial actor" if r.search_in_trial_actor else "worker group"]
    asha = None
    stops = b.early_stopping and not campaign.multi_objective and b.asha.grace_period < s.epochs
    if stops:  # ASHA runs and has a rung before the last epoch
        asha = asha_simulation(b.num_trials, b.asha.grace_period, b.asha.reduction_factor, s.epochs)
    fc = Forecast(
        campaign_id=campaign.campaign_id, trials=b.num_trials, epochs=s.epochs, steps=steps,
        micro=micro, accumulation=accumulation, workers=r.workers_per_trial,
        gpus_per_trial=gpus, slots=slots, data=data, timing=timing, target=target_name,
        factor=factor, mix=mix, step_s=step_s, warm_step_s=warm_s, arch_start=arch_start,
        val_s=val_s,
        val_every=s.val_every, report_s=report_s, start_s=start_s, asha=asha,
        trial_s_full=0.0, trial_s_asha=None, wall_s_full=0.0, wall_s_asha=None,
    )  # fmt: skip
    full = fc.trial_s(s.epochs)
    wall_full = CAMPAIGN_START_S + pack_trials([full] * b.num_trials, slots)
    trial_asha = wall_asha = None
    if asha is not None:
        trial_asha, wall_asha = _asha_costs(fc, asha)
    return replace(
        fc, trial_s_full=full, trial_s_asha=trial_asha, wall_s_full=wall_full,
        wall_s_asha=wall_asha,
    )  # fmt: skip


def _asha_costs(fc: Forecast, asha: AshaForecast, draws: int = 500) -> tuple[float, float]:
    """(mean trial seconds, mean campaign wall-clock) over ASHA draws (as ``asha_simulation``)."""
    rng = random.Random(1)
    trial_total = wall_total = 0.0
    for _ in range(draws):
        quality = [rng.random() for _ in range(fc.trials)]
        runs = asha_run(quality, list(asha.rungs), _rf(asha), fc.epochs)
        durations = [fc.trial_s(e) for e in runs]
        trial_total += sum(durations) / len(durations)
        wall_total += CAMPAIGN_START_S + pack_trials(durations, fc.slots)
    return trial_total / draws, wall_total / draws


def _rf(asha: AshaForecast) -> int:
    return asha.rungs[1] // asha.rungs[0] if len(asha.rungs) > 1 else 2


# --------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------


def hms(seconds: float) -> str:
    """``h:mm:ss`` (days as hours)."""
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _num(x: float) -> str:
    """Three significant digits without an exponent: 1,647 / 41.2 / 0.133 / 0."""
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.1f}"


def format_forecast(fc: Forecast) -> list[str]:
    """The forecast as a short table (lines)."""
    lines = ["forecast (what it reads, what it costs)"]
    lines.append(f"  data        {fc.data.describe()}")
    lines.append(
        f"  per trial   {fc.epochs} epochs × {fc.steps} steps of {fc.micro} image(s) × "
        f"{fc.accumulation} on each of {fc.workers} worker(s)"
        f" + {validations(fc.epochs, fc.epochs, fc.val_every)} validations "
        f"of {fc.data.val:,} instances"
    )
    t = fc.timing
    if t is None:
        lines.append(f"  step        {fc.step_s:.3g} s per step on the target (--step-seconds; "
                     f"validation and reporting inside it)")  # fmt: skip
    else:
        here = (
            f"{t.arch_step_s:.3g} CPU s per step of {t.micro} image(s) measured here "
            f"({t.hardware}, {t.threads} thread(s), {t.execution}; median of {t.timed_steps} "
            f"steps after a warm-up step)"
        )
        lines.append(f"  measured    {here}")
        if fc.target == "cpu":
            lines.append("  target      this CPU, factor 1 (the trial's threads as Ray gives them)")
        else:
            p = DEVICE_PROFILES[fc.target]
            lines.append(
                f"  target      {p.name} ({fc.target}): {p.peak_tflops:g} TFLOP/s {p.precision}"
                f" peak × {p.utilisation:.0%} sustained (a guess until a GPU run calibrates it)"
                f" = ×{fc.factor:,.0f} this CPU; the CPU timed {t.micro} image(s), "
                f"scaled by FLOPs to {fc.micro}"
            )
        if fc.mix:
            each = "; ".join(
                f"{key} " + ", ".join(f"{v} {r:.2f}" for v, r in ratios.items())
                for key, ratios in fc.mix.items()
            )
            lines.append(
                f"  outer mix   step cost ×{mix_factor(fc.mix):.2f} the base trial's, its values "
                f"equally likely ({each})"
            )
        lines.append(
            f"  epoch       {fc.steps} × {fc.step_s:.3g} s steps (α/β warm-up epochs "
            f"{fc.warm_step_s:.3g} s) + validation {fc.val_s:.3g} s every {fc.val_every} + "
            f"reporting {fc.report_s:.2g} s"
        )
    lines.append(
        f"  campaign    {fc.trials} trials, {fc.slots} at once, "
        f"{fc.gpus_per_trial:g} GPU per trial, start {fc.start_s:g} s per trial + "
        f"{CAMPAIGN_START_S:g} s once"
    )
    gpu = fc.gpus_per_trial
    lines.append(f"  {'':22} {'trial-hours':>12} {'GPU-hours':>10} {'wall-clock':>11}")
    rows = [("all epochs", fc.trial_s_full, fc.wall_s_full)]
    if fc.asha is not None and fc.trial_s_asha is not None and fc.wall_s_asha is not None:
        share = f"ASHA expected ({fc.asha.epoch_fraction:.0%})"
        rows.append((share, fc.trial_s_asha, fc.wall_s_asha))
    for label, trial_s, wall in rows:
        total = trial_s * fc.trials / 3600
        lines.append(f"  {label:<22} {_num(total):>12} {_num(total * gpu):>10} {hms(wall):>11}")
    if fc.asha is not None:
        rungs = ", ".join(map(str, fc.asha.rungs))
        lines.append(
            f"  ASHA model  Ray's async rule (stop below the rung's {1 - 1 / _rf(fc.asha):.0%}"
            f" percentile of earlier results) at epochs {rungs} of {fc.epochs}, trials of "
            f"random quality, same rank at every rung, started in order ({fc.asha.draws} draws)"
        )
    return lines


# --------------------------------------------------------------------------------------------
# ETA while running
# --------------------------------------------------------------------------------------------


def eta_line(done: int, running: int, left: int, eta_s: float | None) -> str:
    """``trials: done D / running R / left L · ETA h:mm:ss`` (``?`` before any epoch time)."""
    eta = hms(eta_s) if eta_s is not None else "?"
    return f"trials: done {done} / running {running} / left {left} · ETA {eta}"


def campaign_eta(
    epoch_s: float, running_left: list[int], pending: int, epochs: float, slots: int
) -> float:
    """Seconds until the campaign ends at ``epoch_s`` per epoch: the running trials' remaining
    epochs (all of them: ASHA may stop them sooner), then ``pending`` trials of ``epochs`` each
    (the caller's expectation, e.g. ASHA's share), each on the first free of ``slots``."""
    free = sorted(left * epoch_s for left in running_left)
    free += [0.0] * max(0, slots - len(free))
    heapq.heapify(free)
    end = max(free) if free else 0.0
    for _ in range(pending):
        start = heapq.heappop(free)
        heapq.heappush(free, start + epochs * epoch_s)
        end = max(end, start + epochs * epoch_s)
    return end


class EpochProgress:
    """A trial's progress lines: ``epoch e/E · step s/S · X s/step · ETA h:mm:ss`` at most
    every ``every_s`` seconds within an epoch (long epochs), and one at each epoch's end. An
    epoch resumed at step k counts its steps from k + 1 and its rates from the steps it ran."""

    def __init__(self, name: str, epochs: int, start_epoch: int, every_s: float = 60.0):
        self.name, self.epochs, self.every_s = name, epochs, every_s
        self.start_epoch = start_epoch
        self.started = time.monotonic()
        self.epoch_times: list[float] = []  # whole epochs (a resumed one scaled to its steps)
        self._epoch_started = self.started
        self._last = self.started
        self._epoch = start_epoch
        self._first = 0  # steps of this epoch done before this process (a resume)
        self._steps_took: float | None = None

    def begin(self, epoch: int, first_step: int = 0) -> None:
        self._epoch, self._first = epoch, first_step
        self._epoch_started = self._last = time.monotonic()
        self._steps_took = None

    def steps_done(self) -> None:
        """The epoch's steps are over (validation and reporting follow)."""
        self._steps_took = time.monotonic() - self._epoch_started

    def step(self, step: int, steps: int) -> str | None:
        """A mid-epoch line after step ``step`` (1-based, of the whole epoch) of ``steps``,
        when due. ETA: this epoch's remainder at this epoch's rate, the epochs after at the
        mean epoch time (this epoch's rate before one ends)."""
        now = time.monotonic()
        if now - self._last < self.every_s or step >= steps:
            return None
        self._last = now
        per_step = (now - self._epoch_started) / max(1, step - self._first)
        per_epoch = statistics.mean(self.epoch_times) if self.epoch_times else per_step * steps
        left = per_step * (steps - step) + (self.epochs - self._epoch - 1) * per_epoch
        return (
            f"{self.name}: epoch {self._epoch + 1}/{self.epochs} · step {step}/{steps} · "
            f"{per_step:.3g} s/step · ETA {hms(left)}"
        )

    def end(self, steps: int) -> str:
        """The line of the finished epoch (steps: how many it has, resumed ones included)."""
        took = time.monotonic() - self._epoch_started
        ran = max(1, steps - self._first)
        self.epoch_times.append(took * steps / ran)
        per_step = (self._steps_took or took) / ran  # the steps alone
        self._epoch_started = time.monotonic()
        self._epoch, self._first = self._epoch + 1, 0
        left = (self.epochs - self._epoch) * statistics.mean(self.epoch_times)
        return (
            f"{self.name}: epoch {self._epoch}/{self.epochs} · {per_step:.3g} s/step · "
            f"{took:.0f} s · ETA {hms(left)}"
        )


def iter_progress(
    batches: Iterator, progress: EpochProgress | None, steps: int, emit, first: int = 0
) -> Iterator:
    """``batches`` (the epoch's steps from ``first`` on) unchanged; ``emit``s ``progress``'s
    mid-epoch line when one is due."""
    for i, item in enumerate(batches, first + 1):
        yield item
        if progress is not None and (line := progress.step(i, steps)) is not None:
            emit(line)
    if progress is not None:
        progress.steps_done()
