"""Campaigns as Ray jobs: ``posenfs submit/status/logs/cancel --address http://<head>:8265``.

What this is: everything that talks to the Ray Jobs API (``JobSubmissionClient``). A campaign is
submitted as one job whose id (``submission_id``) is the campaign id, so submitting the same
campaign twice finds the existing job instead of starting a second one (Ray answers a duplicate
``submission_id`` with an HTTP 500, so the job is looked up first). The job's entrypoint is
``posenfs search <file> --address auto [--root R] [--set ...]``, run in the uploaded working
directory (this repository, without ``.venv``, ``posenfs-runs`` and ``.git``); no entrypoint
resources are given, so the driver stays pinned to the head node and survives the loss of any
worker node.

Token auth (Ray 2.60): the token comes from ``--token-file``, ``RAY_AUTH_TOKEN``,
``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token`` (first found) and is sent as a Bearer header.
Every failure a user can cause (nothing answers at the address, no token, a rejected token, an
unknown job id) is a one-line ``JobsError``.

What it is not: the campaign itself (``campaign.py``, which the job runs) or the stored state
(``store.py``, read without any cluster).
"""

from __future__ import annotations

import asyncio
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nfs_orchestrator
from nfs_orchestrator.errors import PosenfsError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
UPLOAD_EXCLUDES = [".venv", "posenfs-runs", ".git", "**/__pycache__", ".pytest_cache",
                   ".ruff_cache", "*.egg-info"]  # fmt: skip
JOB_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


class JobsError(PosenfsError):
    """A Jobs API call failed for a reason the user can fix."""


class ClusterUnreachable(JobsError):
    """Nothing answers at the address."""


class TokenMissing(JobsError):
    """The cluster wants a token and none was found."""


class TokenRejected(JobsError):
    """The cluster refused the token (HTTP 401)."""


class JobNotFound(JobsError):
    """No job has this id."""


@dataclass(frozen=True)
class JobInfo:
    """What posenfs shows of a job; ``created`` is True when this call submitted it."""

    job_id: str
    status: str
    message: str = ""
    entrypoint: str = ""
    created: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def line(self) -> str:
        message = f" ({self.message})" if self.message else ""
        return f"job {self.job_id}: {self.status}{message}"


# --------------------------------------------------------------------------------------------
# Address and token
# --------------------------------------------------------------------------------------------


def normalize_address(address: str) -> str:
    """``host:port`` → ``http://host:port``; an ``http(s)://`` URL is kept (no trailing /)."""
    address = address.strip().rstrip("/")
    if not address:
        raise JobsError("--address: empty; expected http://<head>:8265")
    return address if "://" in address else f"http://{address}"


def token_sources(token_file: str | None = None) -> list[tuple[str, Path | None, str | None]]:
    """Where a token may be, in order: (description, file or None, token text or None)."""
    sources: list[tuple[str, Path | None, str | None]] = []
    if token_file:
        sources.append((f"--token-file {token_file}", Path(token_file).expanduser(), None))
    sources.append(("$RAY_AUTH_TOKEN", None, os.environ.get("RAY_AUTH_TOKEN") or None))
    env_path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    label = f"$RAY_AUTH_TOKEN_PATH ({env_path})" if env_path else "$RAY_AUTH_TOKEN_PATH"
    sources.append((label, Path(env_path).expanduser() if env_path else None, None))
    home = Path.home() / ".ray" / "auth_token"
    sources.append((str(home), home, None))
    return sources


def find_token(token_file: str | None = None) -> tuple[str | None, list[str]]:
    """The first token found, and the places tried. An explicit ``--token-file`` that is
    missing or empty is an error (never silently replaced by another token)."""
    tried: list[str] = []
    for label, path, text in token_sources(token_file):
        tried.append(label)
        if path is not None and path.is_file():
            text = path.read_text().strip()
        if text:
            return text.strip(), tried
        if token_file and label.startswith("--token-file"):
            raise TokenMissing(f"--token-file {token_file}: no such file, or it is empty")
    return None, tried


def connect(address: str, token_file: str | None = None) -> Any:
    """A ``JobSubmissionClient`` for ``address`` with the token as a Bearer header; without a
    token it tries unauthenticated (clusters with auth disabled) and says where it looked when
    the cluster wants one."""
    from ray.job_submission import JobSubmissionClient

    url = normalize_address(address)
    token, tried = find_token(token_file)
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(url, headers=headers)
    except ConnectionError:
        raise ClusterUnreachable(
            f"{url}: nothing answers there (is the Ray head's dashboard running on that "
            "address and port?)"
        ) from None
    except Exception as e:  # noqa: BLE001 - classified below, re-raised otherwise
        if not _is_auth_error(e):
            raise
        if token is None:
            raise TokenMissing(
                f"{url} requires a Ray auth token and none was found; tried "
                + ", ".join(tried)
                + " (get one with `ray get-auth-token` on the head)"
            ) from None
        raise TokenRejected(
            f"{url} rejected the auth token from {tried[-1]}: not this cluster's token"
        ) from None


def _is_auth_error(e: Exception) -> bool:
    return type(e).__name__ == "AuthenticationError" or _status_code(e) in (401, 403)


def _status_code(e: Exception) -> int | None:
    """The HTTP status of a Jobs SDK ``RuntimeError('Request failed with status code N: ...')``."""
    marker = "status code "
    text = str(e)
    if marker not in text:
        return None
    digits = text.split(marker, 1)[1][:3]
    return int(digits) if digits.isdigit() else None


def _call(fn: Callable[..., Any], job_id: str, *args: Any, **kwargs: Any) -> Any:
    """Calls a Jobs SDK method that names a job; a 404 becomes JobNotFound."""
    try:
        return fn(*args, **kwargs)
    except RuntimeError as e:
        if _status_code(e) == 404 or "does not exist" in str(e):
            raise JobNotFound(f"job {job_id}: no such job on this cluster") from None
        raise


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------


def _info(details: Any, created: bool = False) -> JobInfo:
    status = details.status
    return JobInfo(
        job_id=details.submission_id or details.job_id,
        status=str(getattr(status, "value", status)),
        message=details.message or "",
        entrypoint=details.entrypoint or "",
        created=created,
    )


def _lookup(client: Any, job_id: str) -> JobInfo | None:
    try:
        return _info(_call(client.get_job_info, job_id, job_id))
    except JobNotFound:
        return None


def working_dir() -> Path:
    """The folder uploaded with a job: the one holding the ``nfs_orchestrator`` package."""
    return Path(nfs_orchestrator.__file__).resolve().parent.parent


def entrypoint(spec_path: str, overrides: Sequence[str], root: str | None, workdir: Path) -> str:
    """``posenfs search <file relative to the working dir> --address auto [--root R]
    [--set K=V ...]``: ``auto`` joins the cluster the job runs on (``RAY_ADDRESS``)."""
    spec = Path(spec_path).resolve()
    try:
        relative = spec.relative_to(workdir)
    except ValueError:
        raise JobsError(
            f"{spec_path}: must be inside the uploaded working directory {workdir}"
        ) from None
    words = ["posenfs", "search", relative.as_posix(), "--address", "auto"]  # the job's cluster
    if root:
        words += ["--root", root]
    for item in overrides:
        words += ["--set", item]
    return shlex.join(words)


def runtime_env(workdir: Path, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """The job's runtime env: ``base`` (e.g. cluster/runtime_env.yaml) plus the working dir,
    the upload excludes and posenfs' environment variables."""
    env = dict(base or {})
    env["working_dir"] = str(workdir)
    env["excludes"] = sorted({*env.get("excludes", []), *UPLOAD_EXCLUDES})
    env["env_vars"] = {**JOB_ENV, **env.get("env_vars", {})}
    return env


def load_runtime_env(path: str | None) -> dict[str, Any] | None:
    if not path:
        return None
    import yaml

    try:
        body = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise JobsError(f"--runtime-env {path}: cannot read it ({e})") from None
    if not isinstance(body, dict):
        raise JobsError(f"--runtime-env {path}: expected a mapping")
    return body


def submit_campaign(
    spec_path: str,
    overrides: Sequence[str],
    address: str,
    root: str | None,
    token: str | None = None,
    *,
    base_env: dict[str, Any] | None = None,
) -> JobInfo:
    """Submits the campaign as job ``<campaign id>``, or reports the job already there.

    ``token`` is a token *file* (``--token-file``); the other places are searched as well."""
    from nfs_orchestrator.campaign_spec import load_campaign

    campaign = load_campaign(spec_path, tuple(overrides))  # a bad spec fails here, not remotely
    job_id = campaign.campaign_id
    workdir = working_dir()
    command = entrypoint(spec_path, overrides, root, workdir)
    client = connect(address, token)
    existing = _lookup(client, job_id)
    if existing is not None:
        return existing
    try:
        client.submit_job(
            entrypoint=command,
            submission_id=job_id,
            runtime_env=runtime_env(workdir, base_env),
            metadata={"posenfs.campaign_id": job_id},
        )
    except RuntimeError as e:
        if "already exists" not in str(e):  # submitted meanwhile by someone else
            raise
        return _lookup(client, job_id) or JobInfo(job_id, "PENDING", entrypoint=command)
    found = _lookup(client, job_id)
    status = found.status if found else "PENDING"
    return JobInfo(job_id, status, found.message if found else "", command, created=True)


def job_status(job_id: str, address: str, token: str | None = None) -> JobInfo:
    client = connect(address, token)
    return _info(_call(client.get_job_info, job_id, job_id))


def list_jobs(address: str, token: str | None = None) -> list[JobInfo]:
    client = connect(address, token)
    return sorted((_info(d) for d in client.list_jobs()), key=lambda j: j.job_id)


def job_logs(
    job_id: str,
    address: str,
    token: str | None = None,
    follow: bool = False,
    write: Callable[[str], None] = print,
) -> JobInfo:
    """Writes the job's log (with ``follow``, streams it until the job ends); returns the
    job's status afterwards."""
    client = connect(address, token)
    _call(client.get_job_info, job_id, job_id)  # a clear error for an unknown id
    if not follow:
        write(_call(client.get_job_logs, job_id, job_id))
        return _info(_call(client.get_job_info, job_id, job_id))

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())
    return _info(_call(client.get_job_info, job_id, job_id))


def cancel_job(job_id: str, address: str, token: str | None = None) -> JobInfo:
    """Stops the job (its driver gets SIGTERM: the campaign stops cleanly and can be resumed);
    a job already over is reported as it is."""
    client = connect(address, token)
    info = _info(_call(client.get_job_info, job_id, job_id))
    if info.terminal:
        return info
    _call(client.stop_job, job_id, job_id)
    return _info(_call(client.get_job_info, job_id, job_id))
