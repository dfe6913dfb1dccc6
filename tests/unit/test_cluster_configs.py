"""Cluster files are valid for their tools: YAML parses, KubeRay manifests use only fields of
the RayCluster/RayJob CRDs (ray.io/v1), the job runs a campaign that exists and validates, and
the runtime environment pins what pyproject.toml pins."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from nfs_orchestrator.campaign_spec import load_campaign

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"

# Fields of the KubeRay v1 CRDs (ray-operator/apis/ray/v1) that these manifests may use.
RAYCLUSTER_SPEC = {
    "rayVersion",
    "enableInTreeAutoscaling",
    "headGroupSpec",
    "workerGroupSpecs",
    "autoscalerOptions",
    "headServiceAnnotations",
    "suspend",
}
HEAD_GROUP = {"rayStartParams", "template", "serviceType", "enableIngress"}
WORKER_GROUP = {
    "groupName",
    "replicas",
    "minReplicas",
    "maxReplicas",
    "rayStartParams",
    "template",
    "scaleStrategy",
    "suspend",
    "numOfHosts",
}
RAYJOB_SPEC = {
    "entrypoint",
    "runtimeEnvYAML",
    "shutdownAfterJobFinishes",
    "ttlSecondsAfterFinished",
    "backoffLimit",
    "submissionMode",
    "rayClusterSpec",
    "clusterSelector",
    "activeDeadlineSeconds",
    "jobId",
    "metadata",
    "entrypointNumCpus",
    "entrypointNumGpus",
    "entrypointResources",
    "suspend",
    "submitterPodTemplate",
    "managedBy",
    "deletionStrategy",
}


def load(name: str) -> dict:
    return yaml.safe_load((CLUSTER / name).read_text())


def check_cluster_spec(spec: dict) -> None:
    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    assert spec["rayVersion"] == "2.60.0"
    assert set(spec["headGroupSpec"]) <= HEAD_GROUP
    for group in spec["workerGroupSpecs"]:
        assert set(group) <= WORKER_GROUP, set(group) - WORKER_GROUP
        assert group["minReplicas"] <= group["maxReplicas"]
        container = group["template"]["spec"]["containers"][0]
        assert "nvidia.com/gpu" in container["resources"]["limits"]


def test_raycluster_manifest():
    doc = load("kuberay/raycluster.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayCluster"
    check_cluster_spec(doc["spec"])


def test_rayjob_runs_an_existing_valid_campaign():
    doc = load("kuberay/rayjob.yaml")
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
    check_cluster_spec(spec["rayClusterSpec"])
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["posenfs", "search"]
    overrides = tuple(argv[i + 1] for i, a in enumerate(argv) if a == "--set")
    campaign = load_campaign(REPO / argv[2], overrides)
    assert campaign.data.root == "/mnt/shared/data/mpii"
    yaml.safe_load(spec["runtimeEnvYAML"])


def test_launcher_config_has_head_and_spot_gpu_workers():
    doc = load("ray-cluster.yaml")
    types = doc["available_node_types"]
    assert doc["head_node_type"] in types
    gpu = types["gpu_spot"]
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert gpu["min_workers"] <= gpu["max_workers"] <= doc["max_workers"]


def test_runtime_env_pins_equal_pyproject():
    pins = set(load("runtime_env.yaml")["pip"])
    pyproject = (REPO / "pyproject.toml").read_text()
    block = pyproject.split("dependencies = [", 1)[1].split("]", 1)[0]
    declared = set(re.findall(r'"([^"]+)"', block))
    assert {p for p in declared if "==" in p} <= pins  # the exact pins travel with the job


def test_paper_scale_campaigns_validate():
    files = sorted((REPO / "experiments").glob("search_*.yaml"))
    assert len(files) >= 3
    for f in files:
        campaign = load_campaign(f)
        assert campaign.resources.gpus_per_worker >= 1
        assert campaign.search.epochs == 200 and campaign.search.batch_size == 24
