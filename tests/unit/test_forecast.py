"""The campaign forecast (``posenfs search --dry-run``) and the progress lines: counts from the
spec, Ray's ASHA rule as simulated, trial packing, the ETA arithmetic, and one real timing of
the tiny quickstart on this CPU."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest

from nfs_orchestrator import forecast
from nfs_orchestrator.campaign_spec import load_campaign

REPO = Path(__file__).resolve().parents[2]
PAPER = REPO / "experiments" / "search_hrnet-w32_cnf5_mpii-256x256_groupings.yaml"
QUICKSTART = REPO / "experiments" / "quickstart.yaml"


def test_counts_steps_and_validations():
    assert forecast.steps_per_epoch(336, 16, None) == 21  # one pass over the weight split
    assert forecast.steps_per_epoch(336, 16, 40) == 40  # steps_per_epoch is exact
    assert forecast.steps_per_epoch(10, 16, 40) == 0  # fewer images than a step
    assert forecast.validations(12, 12, 1) == 12
    assert forecast.validations(200, 200, 5) == 40
    assert forecast.validations(40, 200, 5) == 8  # stopped by ASHA at 40
    assert forecast.validations(7, 7, 5) == 2  # epoch 5 and the last


def test_asha_rungs_are_rays():
    assert forecast.asha_rungs(4, 2, 12) == [4, 8]
    assert forecast.asha_rungs(40, 2, 200) == [40, 80, 160]
    assert forecast.asha_rungs(1, 3, 27) == [1, 3, 9, 27]


def test_asha_run_by_hand():
    # rung 4: 0.5 first (goes on), 0.4 < 0.5 stops, 0.6 ≥ median(0.5, 0.4) goes on, 0.3 stops;
    # rung 8: 0.5 first, 0.6 ≥ 0.5 goes on
    assert forecast.asha_run([0.5, 0.4, 0.6, 0.3], [4, 8], 2, 12) == [12, 4, 12, 4]


def test_asha_run_matches_rays_bracket():
    """The simulation takes the same decisions as Ray's own ASHA bracket, trial by trial."""
    import random

    from ray.tune.schedulers.async_hyperband import _Bracket
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    rng = random.Random(7)
    for grace, rf, max_t in ((4, 2, 12), (1, 3, 27), (40, 2, 200)):
        quality = [rng.random() for _ in range(12)]
        bracket = _Bracket(grace, max_t, rf, 0)
        ray_epochs = []
        for i, q in enumerate(quality):
            trial = type("T", (), {"trial_id": str(i)})()
            ran = max_t
            for epoch in range(1, max_t + 1):
                if bracket.on_result(trial, epoch, q) == TrialScheduler.STOP:
                    ran = epoch
                    break
            ray_epochs.append(ran)
        ours = forecast.asha_run(quality, forecast.asha_rungs(grace, rf, max_t), rf, max_t)
        assert ours == ray_epochs, (grace, rf, max_t)


def test_asha_share_of_epochs():
    one = forecast.asha_simulation(1, 4, 2, 12, draws=50)
    assert one.epoch_fraction == 1.0  # a lone trial is never stopped
    # many trials: about half pass each rung, as synchronous halving: (4 + 4/2 + 4/4) / 12
    many = forecast.asha_simulation(300, 4, 2, 12, draws=10)
    assert abs(many.epoch_fraction - 7 / 12) < 0.03
    few = forecast.asha_simulation(8, 4, 2, 12, draws=400)
    assert 7 / 12 < few.epoch_fraction < 1.0  # the first trials at a rung always go on


def test_pack_trials_and_campaign_eta():
    assert forecast.pack_trials([10.0] * 8, 2) == 40.0
    assert forecast.pack_trials([10.0, 1.0, 1.0, 1.0], 2) == 10.0
    # 2 running trials with 3 and 1 epochs left, 2 pending of 4 epochs, 2 slots, 5 s/epoch:
    # slot A free at 5 s -> pending 1 ends 25 s; slot B free at 15 s -> pending 2 ends 35 s
    assert forecast.campaign_eta(5.0, [3, 1], 2, 4, 2) == 35.0
    assert forecast.eta_line(3, 2, 3, 3725) == "trials: done 3 / running 2 / left 3 · ETA 1:02:05"
    assert forecast.eta_line(0, 2, 6, None).endswith("ETA ?")


def test_epoch_progress_lines(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(forecast.time, "monotonic", lambda: clock[0])
    progress = forecast.EpochProgress("t1", epochs=4, start_epoch=0, every_s=60.0)
    progress.begin(0)
    lines = []
    batches = forecast.iter_progress(iter(range(10)), progress, 10, lines.append)
    for _ in batches:
        clock[0] += 20.0  # 20 s per step: a mid-epoch line every 3 steps (60 s)
    assert lines[0] == "t1: epoch 1/4 · step 3/10 · 20 s/step · ETA 0:12:20"  # 140 + 3 × 200 s
    assert len(lines) == 3  # steps 3, 6, 9; none after the last step
    clock[0] += 10.0  # validation and reporting
    assert progress.end(10) == "t1: epoch 1/4 · 20 s/step · 210 s · ETA 0:10:30"


def test_epoch_progress_after_a_resume_mid_epoch(monkeypatch):
    """Resumed at epoch 2 step 4: steps count on from 5, rates from the steps this run ran."""
    clock = [100.0]
    monkeypatch.setattr(forecast.time, "monotonic", lambda: clock[0])
    progress = forecast.EpochProgress("t1", epochs=4, start_epoch=1, every_s=60.0)
    progress.begin(1, first_step=4)
    lines = []
    batches = forecast.iter_progress(iter(range(6)), progress, 10, lines.append, first=4)
    for _ in batches:
        clock[0] += 20.0
    assert lines == ["t1: epoch 2/4 · step 7/10 · 20 s/step · ETA 0:07:40"]  # 60 + 2 × 200 s
    clock[0] += 10.0
    # 130 s for 6 of 10 steps: the epoch counts as 130 × 10/6 = 216.7 s for the 2 left
    assert progress.end(10) == "t1: epoch 2/4 · 20 s/step · 130 s · ETA 0:07:13"


def test_forecast_of_the_paper_campaign_with_given_step_seconds():
    """Data absent here: the standard MPII sizes; sync mode reads all of train; 4 GPUs a trial."""
    campaign = load_campaign(PAPER)
    fc = forecast.forecast_campaign(campaign, slots=2, step_seconds=0.5)
    assert fc.data.train == 22246 and fc.data.weight_split == 22246 and fc.data.val == 2958
    assert fc.steps == 22246 // 24 and fc.micro == 6 and fc.accumulation == 1
    start = forecast.TRIAL_START_S["worker group"]
    assert fc.trial_s_full == pytest.approx(start + 200 * 926 * 0.5)
    assert fc.wall_s_full == pytest.approx(forecast.CAMPAIGN_START_S + 4 * fc.trial_s_full)
    assert fc.asha is not None and fc.asha.rungs == (40, 80, 160)
    assert fc.trial_s_asha < fc.trial_s_full and fc.wall_s_asha < fc.wall_s_full
    text = "\n".join(forecast.format_forecast(fc))
    gpu_hours = 8 * fc.trial_s_full * 4 / 3600  # trials × seconds × GPUs per trial
    assert f"{gpu_hours:,.0f}" in text and "GPU-hours" in text


def test_forecast_without_asha_when_seeds_repeat():
    campaign = load_campaign(PAPER, ("budget.seeds=2",))
    fc = forecast.forecast_campaign(campaign, slots=2, step_seconds=1.0)
    assert fc.asha is None and fc.trial_s_asha is None
    assert "ASHA" not in "\n".join(forecast.format_forecast(fc))


def test_unknown_device_profile_and_bad_step_seconds():
    campaign = load_campaign(PAPER)
    with pytest.raises(forecast.SpecError, match="--device-profile: 'tpu' is not one of"):
        forecast.forecast_campaign(campaign, slots=1, device_profile="tpu", step_seconds=1.0)
    with pytest.raises(forecast.SpecError, match="--step-seconds: 0 must be > 0"):
        forecast.forecast_campaign(campaign, slots=1, step_seconds=0.0)


def test_times_the_quickstart_here(tmp_path, monkeypatch):
    """A real timing of the tiny quickstart's base trial (and of its outer choices that change
    the cost) on this CPU (data generated in a temporary folder): every measured figure
    positive, the trial's time their sum."""
    monkeypatch.chdir(tmp_path)  # data.root is relative: nothing written in the repo
    campaign = load_campaign(QUICKSTART, ("data.synthetic.train_images=48",))
    started = time.process_time()
    fc = forecast.forecast_campaign(campaign, slots=2, time_budget_s=0.3)
    assert time.process_time() - started < 60  # CPU seconds, not wall-clock: a broken budget
    t = fc.timing
    assert t is not None and t.threads == 1 and t.micro == 16
    assert t.arch_step_s > 0 and t.weight_step_s > 0 and t.forward_s_per_image > 0
    assert t.arch_step_flops == pytest.approx(2 * t.weight_step_flops)  # first_order: 2 passes
    assert fc.target == "cpu" and fc.factor == 1.0 and fc.data.where == "generated for the forecast"
    by_epoch = [fc.epoch_s(e) for e in range(12)]
    # α/β warm-up epochs (12 // 6 = 2) are timed by the weight-only step, the rest by the mode's
    # (which of the two measured times is larger is the CPU's business: a clean-clone CI run
    # once timed the weight step at twice the first-order step with 2 samples each)
    assert fc.arch_start == 2
    assert by_epoch[:2] == [fc.steps * fc.warm_step_s + fc.report_s] * 2
    assert by_epoch[2:] == [fc.steps * fc.step_s + fc.report_s] * 10
    assert fc.trial_s_full == pytest.approx(fc.start_s + sum(by_epoch) + 12 * fc.val_s)
    assert not (tmp_path / "posenfs-runs").exists()
    assert dataclasses.asdict(fc)  # plain data all through
    # the outer space's cost: P = 3 trials cost more than the P = 1 base, depth 5 more than 3
    grouping, depth = fc.mix["grouping"], fc.mix["fabric.depth"]
    assert grouping["groupings/coco-p3"] > 1.3 * grouping["groupings/coco-p1"]
    assert depth["5"] > depth["3"]


def test_mix_factor_is_the_product_of_each_parameters_mean():
    mix = {"grouping": {"p1": 1.0, "p3": 2.0}, "fabric.depth": {"3": 0.5, "5": 1.5}}
    assert forecast.mix_factor(mix) == pytest.approx(1.5 * 1.0)
    assert forecast.mix_factor({}) == 1.0
