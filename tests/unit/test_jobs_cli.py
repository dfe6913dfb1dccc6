"""`posenfs submit/status/logs/cancel --address` without Ray: bad input (one line, exit 2) and
the attempt logic (job ids, which attempt submit starts or reports, what cancel waits for).

A tiny HTTP server on 127.0.0.1 stands in for a Ray dashboard's Jobs API with token auth: 401
without the right Bearer token (as Ray 2.60), the jobs in ``FakeDashboard.jobs`` listed and
looked up (404 for others), submissions recorded (a new job is PENDING), stop makes a job
STOPPED, every package already uploaded. An unused loopback port stands for an address where
nothing answers. The real Jobs API is exercised in tests/integration/test_cluster_jobs.py.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from nfs_orchestrator.campaign_spec import load_campaign
from nfs_orchestrator.cli import main
from nfs_orchestrator.orchestration import jobs

TOKEN = "a" * 64
REPO = Path(__file__).resolve().parents[2]


def job(job_id: str, status: str, campaign_id: str = "", log: str = "", **env_vars: str) -> dict:
    """A job as the Jobs API lists it (pydantic ``JobDetails``), with its log; ``stuck`` jobs
    ignore a stop request."""
    return {"type": "SUBMISSION", "job_id": None, "submission_id": job_id, "status": status,
            "entrypoint": "posenfs search x.yaml", "message": "", "log": log, "stuck": False,
            "metadata": {"posenfs.campaign_id": campaign_id or job_id},
            "runtime_env": {"env_vars": env_vars}}  # fmt: skip


class FakeDashboard(BaseHTTPRequestHandler):
    jobs: dict[str, dict] = {}
    submitted: list[dict] = []
    no_agent = 0  # the next this many submissions find no job agent (a head still starting)

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _authorized(self) -> bool:
        if self.headers.get("Authorization") == f"Bearer {TOKEN}":
            return True
        self._send(401, "Unauthorized: Missing authentication token")
        return False

    def _details(self, job_id: str) -> dict:
        return {k: v for k, v in self.jobs[job_id].items() if k not in ("log", "stuck")}

    def _send(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        parts = self.path.strip("/").split("/")  # api, jobs, <id>, logs
        if not self._authorized():
            return
        if self.path == "/api/version":
            self._send(200, json.dumps({"version": "4", "ray_version": "2.60.0"}))
        elif parts[:2] == ["api", "packages"]:
            self._send(200, "")  # already uploaded
        elif parts == ["api", "jobs"]:
            self._send(200, json.dumps([self._details(j) for j in self.jobs]))
        elif parts[:2] == ["api", "jobs"] and parts[2] in self.jobs:
            body = {"logs": self.jobs[parts[2]]["log"]} if parts[3:] == ["logs"] else None
            self._send(200, json.dumps(body or self._details(parts[2])))
        else:
            self._send(404, "Job does not exist")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        parts = self.path.strip("/").split("/")
        if not self._authorized():
            return
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
        if parts == ["api", "jobs"] and FakeDashboard.no_agent > 0:
            FakeDashboard.no_agent -= 1
            self._send(500, "No available agent to submit job, please try again later.")
        elif parts == ["api", "jobs"]:
            sid = body["submission_id"]
            self.submitted.append(body)
            self.jobs[sid] = {**job(sid, "PENDING"), "runtime_env": body["runtime_env"]}
            self._send(200, json.dumps({"job_id": sid, "submission_id": sid}))
        elif parts[:2] == ["api", "jobs"] and parts[2] in self.jobs and parts[3:] == ["stop"]:
            if not self.jobs[parts[2]]["stuck"]:
                self.jobs[parts[2]]["status"] = "STOPPED"
            self._send(200, json.dumps({"stopped": True}))
        else:
            self._send(404, "Job does not exist")


@pytest.fixture
def dashboard() -> Iterator[str]:
    FakeDashboard.jobs, FakeDashboard.submitted, FakeDashboard.no_agent = {}, [], 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDashboard)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def no_token(tmp_path, monkeypatch) -> Path:
    """No token anywhere: empty HOME, no RAY_AUTH_TOKEN(_PATH)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    return tmp_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str]):
    return CliRunner().invoke(main, args)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("posenfs: error: "), result.output
    return lines[0]


def token_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tok"
    path.write_text(text + "\n")
    return str(path)


def test_unreachable_address(no_token):
    address = f"http://127.0.0.1:{free_port()}"
    line = one_line_error(run(["status", "c1", "--address", address]))
    assert address in line and "nothing answers" in line


def test_missing_token_names_the_places_tried(no_token, dashboard):
    line = one_line_error(run(["logs", "c1", "--address", dashboard]))
    assert "none was found" in line
    for place in ("$RAY_AUTH_TOKEN", "$RAY_AUTH_TOKEN_PATH", ".ray/auth_token"):
        assert place in line


def test_missing_token_file(no_token, dashboard):
    missing = str(no_token / "nope")
    line = one_line_error(run(["cancel", "c1", "--address", dashboard, "--token-file", missing]))
    assert missing in line


def test_wrong_token(no_token, dashboard):
    tok = token_file(no_token, "b" * 64)
    line = one_line_error(run(["status", "c1", "--address", dashboard, "--token-file", tok]))
    assert "rejected the auth token" in line and tok in line


def test_unknown_job(no_token, dashboard, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)  # found in the environment
    for command in (["status"], ["logs"], ["cancel"]):
        line = one_line_error(run([*command, "nosuchjob", "--address", dashboard]))
        assert "job nosuchjob: no such job" in line


def test_token_order_and_address(no_token, monkeypatch):
    path = token_file(no_token, "from-path")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", path)
    assert jobs.find_token(None)[0] == "from-path"
    monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
    assert jobs.find_token(None)[0] == "from-env"
    assert jobs.find_token(token_file(no_token / "..", "explicit"))[0] == "explicit"
    assert jobs.normalize_address("127.0.0.1:8265/") == "http://127.0.0.1:8265"


def test_entrypoint_and_runtime_env():
    spec = str(REPO / "experiments" / "smoke.yaml")
    command = jobs.entrypoint(spec, ["data.root=/d x"], "/shared/runs", REPO)
    assert command == (
        "posenfs search experiments/smoke.yaml --address auto --root /shared/runs"
        " --set 'data.root=/d x'"
    )
    env = jobs.runtime_env(REPO, {"env_vars": {"A": "1"}, "excludes": ["big"]})
    assert env["working_dir"] == str(REPO)
    assert {".venv", ".git", "posenfs-runs", "big"} <= set(env["excludes"])
    assert env["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0" and env["env_vars"]["A"] == "1"
    with pytest.raises(jobs.JobsError, match="inside the uploaded working directory"):
        jobs.entrypoint("/tmp/elsewhere.yaml", [], None, REPO)


CID = "smoke-1a2b3c4d"


def test_attempt_job_ids():
    assert [jobs.attempt_job_id(CID, n) for n in (1, 2, 10)] == [CID, f"{CID}-2", f"{CID}-10"]
    assert [jobs.attempt_number(j, CID) for j in (CID, f"{CID}-2", f"{CID}-10")] == [1, 2, 10]
    for other in (f"{CID}-1", f"{CID}-02", f"{CID}-2x", f"{CID}-12345678", "smoke-1a2b3c4e", "x"):
        assert jobs.attempt_number(other, CID) is None, other  # not an attempt of CID
    with pytest.raises(ValueError):
        jobs.attempt_job_id(CID, 0)
    infos = [jobs.JobInfo(j, "FAILED") for j in (f"{CID}-10", CID, "other-00000000", f"{CID}-2")]
    assert [i.job_id for i in jobs.campaign_attempts(infos, CID)] == [CID, f"{CID}-2", f"{CID}-10"]


def test_next_attempt_resumes_only_after_stopped_or_failed():
    def attempts(*statuses: str) -> list[jobs.JobInfo]:
        return [jobs.JobInfo(jobs.attempt_job_id(CID, n + 1), s) for n, s in enumerate(statuses)]

    assert jobs.next_attempt([], CID) == 1
    assert jobs.next_attempt(attempts("STOPPED"), CID) == 2
    assert jobs.next_attempt(attempts("STOPPED", "FAILED"), CID) == 3
    for latest in ("PENDING", "RUNNING", "SUCCEEDED"):  # reported, not submitted again
        assert jobs.next_attempt(attempts("FAILED", latest), CID) is None
    log = f"x\ncampaign {CID} interrupted: 2 trials (1 finished, 0 failed)\ncampaign {CID}-2 y\n"
    assert (
        jobs.summary_line(log, CID)
        == f"campaign {CID} interrupted: 2 trials (1 finished, 0 failed)"
    )
    assert jobs.summary_line("Traceback ...", CID) is None


def test_submit_reports_running_and_resubmits_stopped(no_token, dashboard, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    spec = str(REPO / "experiments" / "smoke.yaml")
    cid = load_campaign(spec).campaign_id
    submit = ["submit", spec, "--address", dashboard, "--root", "/shared/runs"]
    posts = FakeDashboard.submitted

    first = run(submit)
    assert first.exit_code == 0 and f"submitted: job {cid}: PENDING" in first.output, first.output
    assert [p["submission_id"] for p in posts] == [cid]
    assert posts[0]["runtime_env"]["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == str(jobs.STOP_WAIT_S)
    assert posts[0]["metadata"] == {"posenfs.campaign_id": cid, "posenfs.attempt": "1"}

    FakeDashboard.jobs[cid]["status"] = "RUNNING"
    again = run(submit)
    assert f"already submitted: job {cid}: RUNNING" in again.output and len(posts) == 1

    FakeDashboard.jobs[cid]["status"] = "STOPPED"  # cancelled: the next attempt resumes
    second = run(submit)
    assert second.exit_code == 0, second.output
    assert f"resubmitted: job {cid}-2: PENDING: attempt 2" in second.output, second.output
    assert "attempt 1 ended STOPPED" in second.output
    assert [p["submission_id"] for p in posts] == [cid, f"{cid}-2"]
    assert posts[1]["entrypoint"] == posts[0]["entrypoint"]  # search on a known id resumes

    FakeDashboard.jobs[f"{cid}-2"]["status"] = "FAILED"
    assert f"resubmitted: job {cid}-3" in run(submit).output
    FakeDashboard.jobs[f"{cid}-3"]["status"] = "SUCCEEDED"
    done = run(submit)
    assert done.exit_code == 0 and f"already done: job {cid}-3: SUCCEEDED" in done.output
    assert len(posts) == 3

    status = run(["status", cid, "--address", dashboard])
    lines = status.output.strip().splitlines()
    assert lines == [f"job {cid}: STOPPED", f"job {cid}-2: FAILED", f"job {cid}-3: SUCCEEDED"]


def test_submit_waits_for_the_heads_job_agent(no_token, dashboard, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    monkeypatch.setattr(jobs, "AGENT_POLL_S", 0)
    spec = str(REPO / "experiments" / "smoke.yaml")
    cid = load_campaign(spec).campaign_id
    FakeDashboard.no_agent = 2  # a head that has just started
    first = run(["submit", spec, "--address", dashboard])
    assert first.exit_code == 0 and f"submitted: job {cid}: PENDING" in first.output, first.output
    assert FakeDashboard.no_agent == 0 and len(FakeDashboard.submitted) == 1

    monkeypatch.setattr(jobs, "AGENT_WAIT_S", 0)
    FakeDashboard.jobs[cid]["status"] = "FAILED"
    FakeDashboard.no_agent = 1_000_000  # no agent ever
    line = one_line_error(run(["submit", spec, "--address", dashboard]))
    assert "the Ray head had no job agent to take the submission for 0 s" in line
    assert len(FakeDashboard.submitted) == 1


def test_cancel_stops_the_latest_attempt_and_reports_the_driver(no_token, dashboard, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    line = f"campaign {CID} interrupted: 2 trials (1 finished, 0 stopped early by ASHA, 0 failed)"
    log = f"...\n{line} in 9 s\n"
    FakeDashboard.jobs = {
        CID: job(CID, "FAILED"),
        f"{CID}-2": job(f"{CID}-2", "RUNNING", CID, log, RAY_JOB_STOP_WAIT_TIME_S="60"),
    }
    waits: list[float] = []
    done = jobs.cancel_job(CID, dashboard, sleep=waits.append)
    assert done.stopped_now and done.job.line() == f"job {CID}-2: STOPPED"
    assert done.summary == f"{line} in 9 s" and done.job.stop_wait_s == 60 and len(waits) == 1
    again = run(["cancel", CID, "--address", dashboard])
    assert again.exit_code == 0 and f"nothing to stop: job {CID}-2: STOPPED" in again.output
    assert run(["logs", CID, "--address", dashboard]).output.endswith(f"{line} in 9 s\n")


def test_cancel_gives_up_after_the_stop_window(no_token, dashboard, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    monkeypatch.setattr(jobs, "STOP_MARGIN_S", 0)
    FakeDashboard.jobs = {CID: {**job(CID, "RUNNING", RAY_JOB_STOP_WAIT_TIME_S="0"), "stuck": True}}
    line = one_line_error(run(["cancel", CID, "--address", dashboard]))
    assert f"job {CID}: still RUNNING" in line and "stop window is 0 s" in line
