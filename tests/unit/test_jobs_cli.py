"""`posenfs submit/status/logs/cancel --address` on bad input, without Ray: one line, exit 2.

A tiny HTTP server on 127.0.0.1 stands in for a Ray dashboard with token auth: it answers
``/api/version`` only with the right Bearer token (401 otherwise, as Ray 2.60 does) and 404 for
any job id. An unused loopback port stands for an address where nothing answers.
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

from nfs_orchestrator.cli import main
from nfs_orchestrator.orchestration import jobs

TOKEN = "a" * 64
REPO = Path(__file__).resolve().parents[2]


class FakeDashboard(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _send(self, code: int, body: str) -> None:
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, "Unauthorized: Missing authentication token")
        elif self.path == "/api/version":
            self._send(200, json.dumps({"version": "4", "ray_version": "2.60.0"}))
        else:
            self._send(404, "Job does not exist")


@pytest.fixture
def dashboard() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDashboard)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
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
