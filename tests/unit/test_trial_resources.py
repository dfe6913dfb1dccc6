"""Where a search trial runs and what its Tune trial actor holds: a one-worker trial runs in the
actor (holding the worker's resources), several workers or ``worker_group: always`` start a
Ray Train worker group (the actor holds only the driver's share). The campaign's resource plan
counts the same CPUs either way."""

from __future__ import annotations

from pathlib import Path

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.orchestration.ray_session import plan_resources, trial_actor_resources
from nfs_orchestrator.specs import ResourceSpec, replace

REPO = Path(__file__).resolve().parents[2]


def test_one_worker_runs_in_the_trial_actor_with_the_workers_resources():
    res = ResourceSpec(
        workers_per_trial=1,
        cpus_per_worker=0.75,
        gpus_per_worker=0.5,
        trial_cpus=0.25,
        worker_resources={"worker_node": 0.5},
        trial_resources={"head_node": 0.01},
    )
    assert res.search_in_trial_actor
    assert trial_actor_resources(res) == {"worker_node": 0.5, "CPU": 1.0, "GPU": 0.5}


def test_a_worker_group_leaves_the_actor_the_drivers_share():
    several = ResourceSpec(workers_per_trial=2, trial_resources={"head_node": 0.01})
    always = ResourceSpec(workers_per_trial=1, worker_group="always", trial_cpus=0.5)
    assert not several.search_in_trial_actor and not always.search_in_trial_actor
    assert trial_actor_resources(several) == {"head_node": 0.01, "CPU": 0.25}
    assert trial_actor_resources(always) == {"CPU": 0.5}


def test_the_plan_counts_the_same_cpus_either_way():
    quickstart = load_campaign(REPO / "experiments" / "quickstart.yaml")
    group = replace(quickstart, resources=replace(quickstart.resources, worker_group="always"))
    here = plan_resources(quickstart.resources, quickstart.budget, 2.0)
    there = plan_resources(group.resources, group.budget, 2.0)
    assert here.in_trial_actor and not there.in_trial_actor
    assert here.cpus_per_trial == there.cpus_per_trial == 1.0
    assert here.max_concurrent == there.max_concurrent == 2
    assert "in the trial actor" in here.describe()


def test_the_trial_trainer_starts_no_dataset_manager_and_keeps_the_rest():
    """posenfs passes no Ray Datasets: the TorchTrainer of a trial drops Ray Train's datasets
    callback (one DatasetManager actor process per trial) and keeps every other callback:
    backend set-up, the placement-group cleaner (fault tolerance), the user's (Tune report)."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    from nfs_orchestrator.orchestration.ray_session import torch_trainer

    config = {
        "scaling_config": ray.train.ScalingConfig(num_workers=1),
        "run_config": ray.train.RunConfig(name="t", storage_path="/tmp/posenfs-unused"),
    }
    plain = TorchTrainer(lambda c: None, **config)._create_default_callbacks()
    ours = torch_trainer(lambda c: None, **config)._create_default_callbacks()
    names = [type(c).__name__ for c in ours]
    assert any(isinstance(c, DatasetsCallback) for c in plain)  # what Ray does by itself
    assert not any(isinstance(c, DatasetsCallback) for c in ours)
    assert names == [type(c).__name__ for c in plain if not isinstance(c, DatasetsCallback)]
    assert {"BackendSetupCallback", "PlacementGroupCleanerCallback", "UserCallbackHandler"} <= set(
        names
    )


def test_quiet_ray_loggers_survive_ray_trains_logging_config(monkeypatch):
    """The worker setup hook's quiet loggers stay quiet after Ray Train's dictConfig of
    ``ray.train`` (which resets the levels of its child loggers), and the Ray environment
    turns Ray Train's print patch off."""
    import logging.config

    from nfs_orchestrator.orchestration import ray_session

    monkeypatch.delenv("RAY_TRAIN_ENABLE_PRINT_PATCH", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "unchanged")  # no Ray here: the hook leaves it
    ray_session.prepare_ray_environment("127.0.0.1:1")
    assert ray_session.os.environ["RAY_TRAIN_ENABLE_PRINT_PATCH"] == "0"
    ray_session.quiet_ray_loggers()
    config = {"version": 1, "disable_existing_loggers": False}
    logging.config.dictConfig({**config, "loggers": {"ray.train": {"level": "DEBUG"}}})
    for name in ray_session.QUIET_LOGGERS:
        logger, seen = logging.getLogger(name), []
        handler = logging.Handler()
        handler.emit = seen.append  # type: ignore[method-assign]
        logger.addHandler(handler)
        logger.warning("Failed to query Ray Train Controller actor state.")
        logger.error("kept")
        logger.removeHandler(handler)
        assert [r.getMessage() for r in seen] == ["kept"], name
    assert ray_session.os.environ["RAY_ADDRESS"] == "unchanged"
