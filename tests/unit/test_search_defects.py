"""The three defects of issue "The search must search": a partial ``--set`` on a nested spec
merges into the existing one; ``steps_per_epoch`` is the number of steps run in every mode;
entropies and arch weights are taken at the temperature in use."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.runtime import LocalRuntime
from nfs_orchestrator.search.presets import arch_preset
from nfs_orchestrator.specs import SearchSpec
from nfs_orchestrator.strict import from_mapping
from tests.conftest import tiny_trial

QUICKSTART = Path(__file__).resolve().parents[2] / "experiments" / "quickstart.yaml"


def test_set_on_a_nested_field_merges_into_the_existing_spec(tmp_path):
    default = SearchSpec().arch_optimizer
    c = load_campaign(QUICKSTART, ("search.arch_optimizer.lr=0.01",))
    assert c.search.arch_optimizer.lr == 0.01
    assert c.search.arch_optimizer.weight_decay == default.weight_decay  # not OptimSpec's 0
    assert c.search.arch_optimizer.betas == default.betas
    # a partial mapping written in the file merges the same way
    text = QUICKSTART.read_text().replace(
        "  weight_optimizer: {name: adam, lr: 0.003}",
        "  weight_optimizer: {name: adam, lr: 0.003}\n  arch_optimizer: {weight_decay: 0.5}",
    )
    (tmp_path / "q.yaml").write_text(text)
    c = load_campaign(tmp_path / "q.yaml", ("search.arch_optimizer.lr=0.02",))
    assert (c.search.arch_optimizer.lr, c.search.arch_optimizer.weight_decay) == (0.02, 0.5)
    assert c.search.arch_optimizer.name == default.name
    # the campaign's trial gets the same optimizer
    assert c.trial({}).search.arch_optimizer == c.search.arch_optimizer


@dataclass(frozen=True)
class _Inner:
    a: int = 1
    b: int = 2


@dataclass(frozen=True)
class _Outer:
    inner: _Inner = field(default_factory=lambda: _Inner(a=5, b=7))
    plain: _Inner = field(default_factory=_Inner)


def test_partial_mapping_merges_into_the_fields_default():
    assert from_mapping(_Outer, {"inner": {"a": 9}}) == _Outer(_Inner(9, 7), _Inner(1, 2))
    assert from_mapping(_Outer, {"plain": {"b": 3}}).plain == _Inner(1, 3)
    assert from_mapping(_Outer, {}) == _Outer()


def test_reference_preset_is_reachable():
    c = load_campaign(QUICKSTART, (*arch_preset("reference"), "search.arch_optimizer.lr=0.01"))
    o = c.search.arch_optimizer
    assert (o.name, o.lr, o.weight_decay, o.betas) == ("adam", 0.01, 0.01, (0.9, 0.999))
    assert c.search.arch_start_epoch == 0
    d = load_campaign(QUICKSTART, arch_preset("default")).search
    assert (d.arch_optimizer, d.arch_start_epoch) == (
        SearchSpec().arch_optimizer,
        SearchSpec().arch_start_epoch,
    )
    with pytest.raises(SpecError, match="did you mean 'reference'"):
        arch_preset("referense")


def test_epoch_steps_runs_exactly_the_steps_asked():
    from nfs_orchestrator.loop_utils import epoch_batches, epoch_steps, steps_in_epoch

    data = [{"i": torch.tensor(i)} for i in range(10)]
    rt = LocalRuntime("/tmp", verbose=False)
    one_pass = [b[0]["i"].tolist() for b in epoch_batches(data, range(10), 2, 1, rt, 5)]
    assert len(one_pass) == 5
    seven = [b[0]["i"].tolist() for b in epoch_steps(data, range(10), 2, 1, rt, 5, 7)]
    assert len(seven) == 7 == steps_in_epoch(10, 2, 7)
    assert seven[:5] == one_pass  # the first pass is unchanged: old runs take the same batches
    assert [b[0]["i"].tolist() for b in epoch_steps(data, range(10), 2, 1, rt, 5, 3)] == (
        one_pass[:3]
    )
    assert len(list(epoch_steps(data, range(10), 2, 1, rt, 5, None))) == 5


@pytest.mark.parametrize("mode", ["first_order", "sync"])
def test_steps_per_epoch_is_honest_in_the_loop(tmp_path, synthetic_root, monkeypatch, mode):
    from nfs_orchestrator.search import bilevel
    from nfs_orchestrator.search.loop import run_search

    calls = {"weight": 0, "arch": 0, "joint": 0}

    def counting(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(bilevel, "weight_step", counting("weight", bilevel.weight_step))
    monkeypatch.setattr(bilevel, "joint_step", counting("joint", bilevel.joint_step))
    monkeypatch.setattr(
        bilevel, "arch_step_first_order", counting("arch", bilevel.arch_step_first_order)
    )
    # 48 images, batch 8: the 2:1 weight split holds fewer than 9 steps; 9 must run
    trial = tiny_trial(synthetic_root, mode=mode, epochs=1, steps=9)
    run_search(trial, LocalRuntime(tmp_path, verbose=False))
    if mode == "first_order":
        assert calls == {"weight": 9, "arch": 9, "joint": 0}
    else:
        assert calls["weight"] + calls["joint"] == 9


def test_entropies_and_arch_weights_use_the_temperature(tmp_path, synthetic_root):
    from nfs_orchestrator.nn.backbones import build_backbone
    from nfs_orchestrator.nn.supernet import PoseSupernet
    from nfs_orchestrator.search.loop import arch_metrics, arch_snapshot

    trial = tiny_trial(synthetic_root)
    net = PoseSupernet(trial.fabric, trial.grouping, build_backbone("tiny", random_init=True))
    with torch.no_grad():
        for fabric in net.parts.values():
            fabric.alpha.copy_(torch.tensor([[0.0, 0.0, 2.0, 0.0]]))
    net.temperature = 4.0
    want = torch.softmax(torch.tensor([0.0, 0.0, 2.0, 0.0]) / 4.0, -1)
    g = net.genotype()
    assert g.arch_weights["head"]["alpha"][0] == pytest.approx(want.tolist(), abs=1e-6)
    assert arch_snapshot(net)["head"]["alpha"][0] == pytest.approx(want.tolist(), abs=1e-6)
    h = float(-(want * want.log()).sum())
    assert arch_metrics(net, g)["alpha_entropy"] == pytest.approx(h, abs=1e-5)
    assert arch_metrics(net, g)["beta_entropy"] == pytest.approx(math.log(3), abs=1e-5)


def test_loop_reports_confidence_and_resume_keeps_it(tmp_path, synthetic_root):
    from nfs_orchestrator.search.loop import run_search

    names = {"confidence_decided", "margin_median", "alpha_entropy_drop", "beta_entropy_drop",
             "flip_share", "undecided",
             "arch_step_ratio", "arch_flag_decay_equilibrium", "arch_flag_small_steps"}  # fmt: skip
    straight = LocalRuntime(tmp_path / "straight", verbose=False)
    metrics = run_search(tiny_trial(synthetic_root, epochs=3, steps=2), straight)
    assert names <= set(metrics)
    interrupted = LocalRuntime(tmp_path / "resumed", verbose=False)
    interrupted.stop_requested = True
    run_search(tiny_trial(synthetic_root, epochs=3, steps=2), interrupted)
    resumed = run_search(
        tiny_trial(synthetic_root, epochs=3, steps=2),
        LocalRuntime(tmp_path / "resumed", verbose=False),
    )
    assert {k: resumed[k] for k in names} == {k: metrics[k] for k in names}
    a = json.loads((tmp_path / "straight" / "artifacts" / "genotype.json").read_text())
    b = json.loads((tmp_path / "resumed" / "artifacts" / "genotype.json").read_text())
    assert a["schema_version"] == 2 and a["confidence"]["epochs_seen"] == 3
    assert a["confidence"] == b["confidence"]


def test_a_split_smaller_than_one_batch_is_named_before_any_step(tmp_path, synthetic_root):
    from dataclasses import replace

    from nfs_orchestrator.search.loop import run_search

    trial = tiny_trial(synthetic_root, epochs=1, steps=None)  # one pass over each split
    trial = replace(trial, search=replace(trial.search, batch_size=32))  # ~72 instances, 2:1
    with pytest.raises(SpecError, match=r"the α/β split holds \d+ of \d+ .*batch of 32"):
        run_search(trial, LocalRuntime(tmp_path / "run", verbose=False))
    assert not list((tmp_path / "run").rglob("state.pt"))  # nothing half-written
