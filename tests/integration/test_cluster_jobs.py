"""A campaign as Ray jobs on a two-node loopback cluster: node loss, cancel, resubmit.

``LoopbackCluster`` (RAY-MULTINODE §5): ``ray start --head --block`` and ``ray start --address
... --block`` worker nodes as subprocesses, each with its own short ``--temp-dir``, a per-test
token (``RAY_AUTH_MODE=token`` + ``RAY_AUTH_TOKEN_PATH``), fast health checks and no drain on
teardown; nodes are stopped by PID, never with ``ray stop``. The head carries ``head_node``, the
worker nodes ``worker_node``, so the spec (``resources.trial_resources`` /
``resources.worker_resources``) keeps trial drivers on the head and Train workers on the worker.

The test: ``posenfs submit`` the smoke campaign (two trials, one at a time; MLflow on a real
tracking server process). Once trial A has a registered checkpoint the worker node's raylet gets
SIGKILL and a second worker node starts (Ray Train resumes A). Once trial B has a registered
checkpoint, ``posenfs cancel`` stops the job: the driver stops inside the job's stop window, A's
run is FINISHED, B's KILLED, none RUNNING, the ledger agrees. ``posenfs submit`` again starts
attempt 2 (job ``<id>-2``; a third submit reports it); it must SUCCEED with every trial finished
once: A untouched (same run, not re-run), A and B resumed after their checkpoints in their own
runs, no duplicate MLflow runs. Then ``posenfs compare`` and ``posenfs promote`` work against
that server.

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


def wait_for(check, timeout: float, what: str, interval: float = 0.5, explain=None):
    """``check()``'s first true value; on timeout an AssertionError, with ``explain()``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    detail = f"\n{explain()}" if explain else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{detail}")


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


def test_submit_node_loss_cancel_resubmit(tmp_path, cluster, mlflow_server):
    root = tmp_path / "runs"
    overrides = [
        f"data.root={tmp_path / 'data'}",
        f"storage.mlflow_uri={mlflow_server}",
        f"search.epochs={EPOCHS}",
        "budget.worker_retries=2",
        "budget.max_concurrent=1",  # trial A finishes before trial B starts
        "resources.worker_resources={worker_node: 0.5}",
        "resources.trial_resources={head_node: 0.01}",
    ]
    campaign = load_campaign(REPO / "experiments" / "smoke.yaml", tuple(overrides))
    cid, trials = campaign.campaign_id, campaign.budget.num_trials
    sets = [w for o in overrides for w in ("--set", o)]
    env = {**cluster.env, "HOME": str(tmp_path)}  # no ~/.ray/auth_token: only --token-file
    env.pop("RAY_AUTH_TOKEN_PATH")
    tok = str(cluster.token_file)
    on_cluster = ["--address", cluster.address, "--token-file", tok]
    submit = ["submit", "experiments/smoke.yaml", *on_cluster, "--root", str(root), *sets]
    train_root = root / "ray" / cid / "train"
    ledger_path = root / "campaigns" / cid / "ledger.parquet"
    c = tracking.client(mlflow_server)

    def log_tail() -> str:
        return posenfs(["logs", cid, *on_cluster], env).stdout[-6000:]

    def checkpointed(skip: set[str]) -> tuple[str, int] | None:
        """A trial not in ``skip`` with a registered checkpoint and two epochs still to run."""
        assert not jobs.job_status(cid, cluster.address, tok).terminal, log_tail()
        for run in sorted(train_root.glob(f"{cid}-*")) if train_root.is_dir() else []:
            trial_id, epoch = run.name.removeprefix(f"{cid}-"), registered_epoch(run)
            if trial_id not in skip and epoch is not None and epoch < EPOCHS - 2:
                return trial_id, epoch
        return None

    def terminal():
        info = jobs.job_status(cid, cluster.address, tok)
        return info if info.terminal else None

    def trial_runs() -> dict[str, object]:
        exp = c.get_experiment_by_name(tracking.experiment_name(cid))
        runs = tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "trial"})
        assert len(runs) == len({r.data.tags[tracking.TAG_TRIAL] for r in runs}), "duplicate"
        return {r.data.tags[tracking.TAG_TRIAL]: r for r in runs}

    first = posenfs(submit, env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"submitted: job {cid}" in first.stdout and "already" not in first.stdout

    # 1. the worker node dies under trial A (Ray Train restarts it from its checkpoint) ...
    lost, _ = wait_for(lambda: checkpointed(set()), 240, "a checkpoint", 0.2, log_tail)
    cluster.kill_worker("w1")
    registered = registered_epoch(train_root / f"{cid}-{lost}")  # final: its node is dead
    cluster.add_worker("w2")

    # 2. ... then `posenfs cancel` stops the job mid-way through trial B
    cut, _ = wait_for(lambda: checkpointed({lost}), 300, "trial B's checkpoint", 0.2, log_tail)
    cancel = posenfs(["cancel", cid, *on_cluster], env)
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert f"job {cid}: STOPPED" in cancel.stdout, cancel.stdout
    # the driver stopped inside the stop window and printed its summary (not SIGKILLed)
    assert f"driver: campaign {cid} interrupted: {trials} trials (1 finished" in cancel.stdout, (
        cancel.stdout + log_tail()
    )
    cut_epoch = registered_epoch(train_root / f"{cid}-{cut}")
    rows = {r["trial_id"]: r for r in read_ledger(ledger_path)}
    runs = trial_runs()
    assert {t: r["status"] for t, r in rows.items()} == {lost: "FINISHED", cut: "KILLED"}
    assert {t: r.info.status for t, r in runs.items()} == {lost: "FINISHED", cut: "KILLED"}
    assert {t: r["run_id"] for t, r in rows.items()} == {t: r.info.run_id for t, r in runs.items()}
    assert runs[cut].data.tags.get(tracking.TAG_PREEMPTED) == "true"
    exp = c.get_experiment_by_name(tracking.experiment_name(cid))
    everything = c.search_runs([exp.experiment_id])
    assert "RUNNING" not in {r.info.status for r in everything}  # parent run included
    finished_before = runs[lost]
    starts_before = c.get_metric_history(finished_before.info.run_id, "start_epoch")

    # 3. submit again: attempt 2 resumes; a second submit reports it
    second = posenfs(submit, env)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"resubmitted: job {cid}-2" in second.stdout, second.stdout
    again = posenfs(submit, env)
    assert f"already submitted: job {cid}-2" in again.stdout, again.stdout + again.stderr
    assert [j.job_id for j in jobs.list_jobs(cluster.address, tok)] == [cid, f"{cid}-2"]

    info = wait_for(terminal, 300, "attempt 2 to end", 1.0, log_tail)
    status = posenfs(["status", cid, *on_cluster], env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert status.stdout.splitlines()[0].startswith(f"job {cid}: STOPPED")
    assert f"job {cid}-2: SUCCEEDED" in status.stdout, info.line() + log_tail()

    rows = {r["trial_id"]: r for r in read_ledger(ledger_path)}
    assert len(rows) == trials and {r["status"] for r in rows.values()} == {"FINISHED"}
    assert all(r["epochs_run"] == EPOCHS for r in rows.values())
    assert rows[lost]["start_epoch"] >= registered + 1  # not from 0 after the node loss
    assert rows[cut]["start_epoch"] >= cut_epoch + 1  # nor after the cancel

    runs = trial_runs()  # once each, the same runs
    assert sorted(runs) == sorted(rows) and {r.info.status for r in runs.values()} == {"FINISHED"}
    assert {t: r["run_id"] for t, r in rows.items()} == {t: r.info.run_id for t, r in runs.items()}
    assert runs[lost].info.run_id == finished_before.info.run_id  # the finished trial untouched:
    assert runs[lost].info.end_time == finished_before.info.end_time  # not re-run
    assert c.get_metric_history(runs[lost].info.run_id, "start_epoch") == starts_before
    for trial_id, floor in ((lost, registered), (cut, cut_epoch)):
        history = c.get_metric_history(runs[trial_id].info.run_id, "start_epoch")
        assert max(int(m.value) for m in history) >= floor + 1, (trial_id, history)
    assert len(tracking.find_runs(c, exp.experiment_id, {tracking.TAG_KIND: "campaign"})) == 1

    compared = posenfs(["compare", cid, "--root", str(root)], env)
    assert compared.returncode == 0, compared.stdout + compared.stderr
    # the smoke search (4 epochs of 2 steps: 8 α/β steps) decides nothing: promoted when told
    # to (the refusal without --force: test_promote_record)
    promoted = posenfs(["promote", cid, "--root", str(root), "--force"], env)
    assert promoted.returncode == 0, promoted.stdout + promoted.stderr
    assert "registered" in promoted.stdout and "@champion" in promoted.stdout
