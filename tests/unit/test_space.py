"""The outer search space with a real Optuna study: conditional parameters and list choices."""

from __future__ import annotations

import optuna
import pytest

from nfs_orchestrator.campaign_spec import (
    OuterParam,
    choice_label,
    decode_params,
    suggestion_order,
)
from nfs_orchestrator.errors import SpecError
from nfs_orchestrator.orchestration.space import define_by_run

OPS_A = ["zero", "skip_connect", "sep_conv_3x3"]
OPS_B = ["zero", "skip_connect", "atr_conv_3x3", "sep_conv_3x3"]

OUTER = {
    # listed before its condition on purpose: the order must follow `when`
    "search.arch_optimizer.lr": OuterParam(
        type="float", low=1e-3, high=1e-1, log=True, when={"grouping": "coco-p3"}
    ),
    "grouping": OuterParam(type="categorical", choices=("coco-p1", "coco-p3")),
    "fabric.depth": OuterParam(type="int", low=3, high=5),
    "fabric.ops": OuterParam(type="categorical", choices=(OPS_A, OPS_B)),
    "fabric.channel_factor": OuterParam(
        type="int", low=2, high=8, step=2, when={"fabric.ops": OPS_B}
    ),
}


def run_study(n_trials: int) -> list[dict]:
    space = define_by_run(OUTER)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(n_trials):
        trial = study.ask()
        assert space(trial) is None  # suggestions only, nothing returned
        configs.append(dict(trial.params))
        study.tell(trial, 0.0)
    return configs


def test_conditional_parameters_follow_their_condition():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    configs = run_study(40)
    for config in configs:
        assert ("search.arch_optimizer.lr" in config) == (config["grouping"] == "coco-p3")
        has_cf = "fabric.channel_factor" in config
        assert has_cf == (config["fabric.ops"] == choice_label(OPS_B))
        if has_cf:
            assert config["fabric.channel_factor"] in (2, 4, 6, 8)
        assert 3 <= config["fabric.depth"] <= 5
    assert {c["grouping"] for c in configs} == {"coco-p1", "coco-p3"}
    assert any("fabric.channel_factor" in c for c in configs)
    assert any("fabric.channel_factor" not in c for c in configs)


def test_list_choices_round_trip_through_labels():
    configs = run_study(20)
    seen = set()
    for config in configs + [{"constant": 1, **configs[0]}]:
        label = config["fabric.ops"]
        assert isinstance(label, str)  # Optuna only stores scalars
        params = decode_params(OUTER, config)
        assert params["fabric.ops"] in (OPS_A, OPS_B)
        assert choice_label(params["fabric.ops"]) == label
        assert "constant" not in params
        assert isinstance(params["fabric.depth"], int)
        seen.add(tuple(params["fabric.ops"]))
    assert seen == {tuple(OPS_A), tuple(OPS_B)}


def test_order_puts_conditions_first_and_rejects_cycles():
    order = suggestion_order(OUTER)
    assert order.index("grouping") < order.index("search.arch_optimizer.lr")
    assert order.index("fabric.ops") < order.index("fabric.channel_factor")
    cyclic = {
        "a": OuterParam(type="categorical", choices=(1, 2), when={"b": 1}),
        "b": OuterParam(type="categorical", choices=(1, 2), when={"a": 1}),
    }
    with pytest.raises(SpecError, match="cycle"):
        suggestion_order(cyclic)


def test_bad_spaces_fail_before_any_trial():
    with pytest.raises(SpecError, match="log and step"):
        define_by_run({"x": OuterParam(type="float", low=0.1, high=1.0, log=True, step=0.1)})
    with pytest.raises(SpecError, match="not one of its choices"):
        define_by_run(
            {
                "grouping": OuterParam(type="categorical", choices=("coco-p1",)),
                "seed": OuterParam(type="int", low=0, high=3, when={"grouping": "coco-p9"}),
            }
        )


def test_space_survives_plain_pickle():
    """Tune saves the searcher (and with it this function) with plain pickle."""
    import pickle

    space = pickle.loads(pickle.dumps(define_by_run(OUTER)))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    space(trial)
    assert "grouping" in trial.params
