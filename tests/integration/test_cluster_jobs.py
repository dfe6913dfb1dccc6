"""A campaign as a Ray job on a two-node loopback cluster that loses its worker node.

``LoopbackCluster`` (RAY-MULTINODE §5): ``ray start --head --block`` and ``ray start --address
... --block`` worker nodes as subprocesses, each with its own short ``--temp-dir``, a per-test
token (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH``), fast health checks and no drain on
teardown; nodes are stopped by PID, never with ``ray stop``. The head carries ``head_node``, the
worker nodes ``worker_node``, so the spec (``resources.trial_resources`` /
``resources.worker_resources``) keeps trial drivers on the head and Train workers on the worker.

The test: ``posenfs submit`` the smoke campaign (MLflow on a real tracking server process);
submitting again reports the same job; once a trial has a registered checkpoint the worker
node's raylet gets SIGKILL and a second worker node starts; the job must SUCCEED with every trial
finished once, the interrupted trial resumed after its checkpoint, no duplicate MLflow runs; then
``posenfs compare`` and ``posenfs promote`` work against that server.

Run inside a loopback-only network namespace:
    unshare -rn sh -c 'ip link set lo up && .venv/bin/pytest -q \
        tests/integration/test_cluster_jobs.py'
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.orchestration import jobs, tracking
from nfs_orchestrator.orchestration.ledger import read_ledger
from tests.integration.helpers import POSENFS, REPO, registered_epoch

pytestmark = pytest.mark.ray

BIN = Path(sys.executable).parent
EPOCHS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class LoopbackCluster:
    """Ray nodes on 127.0.0.1, one ``ray start --block`` Popen each."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.token = secrets.token_hex(32)
        self.token_file = root / "token"
        self.token_file.write_text(self.token)
        self.nodes: dict[str, subprocess.Popen] = {}
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # `posenfs` for jobs
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            "RAY_health_check_initial_delay_ms": "1000",
            "RAY_health_check_period_ms": "1000",
            "RAY_health_check_timeout_ms": "1000",
            "RAY_health_check_failure_threshold": "3",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        }
        self.env.pop("RAY_AUTH_TOKEN", None)
        self.env.pop("RAY_ADDRESS", None)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.root / f"{name}.log", "w")
        self.nodes[name] = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--node-ip-address=127.0.0.1",
             "--object-store-memory=100000000", f"--temp-dir={self.root / name}",
             "--disable-usage-stats", *args],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def _alive_nodes(self) -> dict[str, str]:
        request = urllib.request.Request(
            f"{self.address}/api/v0/nodes?detail=true",
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                body = json.loads(r.read())
        except OSError:
            return {}
        rows = body.get("data", {}).get("result", {}).get("result", [])
        return {n.get("node_name"): n.get("state") for n in rows}

    def start_head(self) -> None:
        self._start("h", [
            "--head", f"--port={self.gcs_port}", "--num-cpus=1",
            "--resources={\"head_node\": 1}", "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}", "--node-name=h",
        ])  # fmt: skip
        wait_for(lambda: self._alive_nodes().get("h") == "ALIVE", 90, "the head node")

    def add_worker(self, name: str) -> None:
        self._start(name, [
            f"--address=127.0.0.1:{self.gcs_port}", "--num-cpus=2",
            "--resources={\"worker_node\": 2}", f"--node-name={name}",
            "--include-log-monitor=False", f"--dashboard-agent-listen-port={free_port()}",
        ])  # fmt: skip
        wait_for(lambda: self._alive_nodes().get(name) == "ALIVE", 90, f"worker node {name}")

    def kill_worker(self, name: str) -> None:
        """SIGKILL to the node's raylet (a crash); its ``ray start --block`` exits after it."""
        proc = psutil.Process(self.nodes[name].pid)
        raylets = [p for p in proc.children(recursive=True) if p.name() == "raylet"]
        assert raylets, f"no raylet under node {name}"
        for p in raylets:
            p.kill()
        wait_for(lambda: self._alive_nodes().get(name) == "DEAD", 60, f"{name} marked dead")
        self._reap(name, signal.SIGKILL)

    def _reap(self, name: str, sig: int) -> None:
        popen = self.nodes.pop(name)
        try:
            tree = psutil.Process(popen.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            tree = []
        for p in [*tree]:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        if popen.poll() is None:
            popen.send_signal(sig)
        try:
            popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            popen.kill()
            popen.wait()
        for p in psutil.wait_procs(tree, timeout=15)[1]:
            p.kill()

    def shutdown(self) -> None:
        for name in [n for n in self.nodes if n != "h"] + [n for n in self.nodes if n == "h"]:
            self._reap(name, signal.SIGTERM)


@pytest.fixture
def cluster() -> Iterator[LoopbackCluster]:
    root = Path(f"/tmp/rc{secrets.token_hex(3)}")  # short: AF_UNIX paths ≤ 107 bytes
    root.mkdir()
    c = LoopbackCluster(root)
    try:
        c.start_head()
        c.add_worker("w1")
        yield c
    finally:
        c.shutdown()
        for proc in psutil.process_iter(["pid", "cmdline"]):  # leftovers of ours only
            try:
                if str(root) in " ".join(proc.info["cmdline"] or []):
                    proc.kill()
            except psutil.NoSuchProcess:
                pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def mlflow_server(tmp_path) -> Iterator[str]:
    port = free_port()
    log = open(tmp_path / "mlflow.log", "w")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "mlartifacts"), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-2000:]
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_for(healthy, 90, "the MLflow server")
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def posenfs(args: list[str], env: dict[str, str], timeout: float = 300):
    return subprocess.run(
        POSENFS + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_submit_survives_worker_node_loss(tmp_path, cluster, mlflow_server):
    root = tmp_path / "runs"
    overrides = [
        f"data.root={tmp_path / 'data'}",
        f"storage.mlflow_uri={mlflow_server}",
        f"search.epochs={EPOCHS}",
        "budget.worker_retries=2",
        "resources.worker_resources={worker_node: 0.5}",
        "resources.trial_resources={head_node: 0.01}",
    ]
    campaign = load_campaign(REPO / "experiments" / "smoke.yaml", tuple(overrides))
    cid, trials = campaign.campaign_id, campaign.budget.num_trials
    sets = [w for o in overrides for w in ("--set", o)]
    env = {**cluster.env, "HOME": str(tmp_path)}  # no ~/.ray/auth_token: only --token-file
    env.pop("RAY_AUTH_TOKEN_PATH")
    submit = ["submit", "experiments/smoke.yaml", "--address", cluster.address,
              "--token-file", str(cluster.token_file), "--root", str(root), *sets]  # fmt: skip

    first = posenfs(submit, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"submitted: job {cid}" in first.stdout and "already" not in first.stdout
    again = posenfs(submit, env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"already submitted: job {cid}" in again.stdout
    tok = str(cluster.token_file)
    assert [j.job_id for j in jobs.list_jobs(cluster.address, tok)] == [cid]  # no second job

    train_root = root / "ray" / cid / "train"

    def victim() -> tuple[str, int] | None:
        info = jobs.job_status(cid, cluster.address, tok)
        assert not info.terminal, posenfs(["logs", cid, "--address", cluster.address,
                                           "--token-file", tok], env).stdout[-4000:]  # fmt: skip
        for run in sorted(train_root.glob(f"{cid}-*")) if train_root.is_dir() else []:
            epoch = registered_epoch(run)
            if epoch is not None and epoch < EPOCHS - 2:
                return run.name.removeprefix(f"{cid}-"), epoch
        return None

    trial_id, _ = wait_for(victim, 240, "a registered checkpoint", interval=0.2)
    cluster.kill_worker("w1")
    registered = registered_epoch(train_root / f"{cid}-{trial_id}")  # final: its node is dead
    cluster.add_worker("w2")

    def finished():
        info = jobs.job_status(cid, cluster.address, tok)
        return info if info.terminal else None

    info = wait_for(finished, 300, "the job to end", interval=1.0)
    status = posenfs(["status", cid, "--address", cluster.address, "--token-file", tok], env)
    assert status.returncode == 0 and f"job {cid}: SUCCEEDED" in status.stdout, (
        info.line()
        + posenfs(["logs", cid, "--address", cluster.address, "--token-file", tok], env).stdout[
            -6000:
        ]  # fmt: skip
    )

    rows = {r["trial_id"]: r for r in read_ledger(root / "campaigns" / cid / "ledger.parquet")}
    assert len(rows) == trials and {r["status"] for r in rows.values()} == {"FINISHED"}
    assert all(r["epochs_run"] == EPOCHS for r in rows.values())
    assert rows[trial_id]["start_epoch"] >= registered + 1  # not from 0

    c = tracking.client(mlflow_server)
    exp = c.get_experiment_by_name(tracking.experiment_name(cid))
    runs = tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "trial"})
    assert sorted(r.data.tags[tracking.TAG_TRIAL] for r in runs) == sorted(rows)  # once each
    assert {r.info.status for r in runs} == {"FINISHED"}
    victim_run = next(r for r in runs if r.data.tags[tracking.TAG_TRIAL] == trial_id)
    starts = [int(m.value) for m in c.get_metric_history(victim_run.info.run_id, "start_epoch")]
    assert max(starts) >= registered + 1, starts
    assert len(tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "campaign"})) == 1

    compared = posenfs(["compare", cid, "--root", str(root)], env)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    # the smoke search (4 epochs of 2 steps: 8 α/β steps) decides nothing: one line says so ...
    refused = posenfs(["promote", cid, "--root", str(root)], env)
    assert refused.returncode == 2 and "undecided" in refused.stderr, refused.stderr
    # ... and promotes it when told to
    promoted = posenfs(["promote", cid, "--root", str(root), "--force"], env)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert "registered" in promoted.stdout and "@champion" in promoted.stdout
