"""Campaigns as Ray jobs: ``posenfs submit/status/logs/cancel --address http://<head>:8265``.

What this is: everything that talks to the Ray Jobs API (``JobSubmissionClient``).

Attempts. A campaign runs as one job per attempt: attempt 1 is job ``<campaign id>``, attempt
n >= 2 is job ``<campaign id>-<n>`` (``attempt_job_id``; a campaign id ends in 8 hex digits, so
no campaign id has that form). ``submit`` lists the campaign's attempts and acts on the latest:
PENDING or RUNNING is reported (never a second job), SUCCEEDED is reported as done, STOPPED or
FAILED (or no attempt) submits the next attempt (``next_attempt``). Every attempt runs the same
entrypoint, ``posenfs search <file> --address auto [--root R] [--set ...]``: on a campaign that
has a record, ``search`` resumes it as ``posenfs resume ID`` does (same record and base dir, same
MLflow parent and trial runs, ``Tuner.restore`` continuing unfinished trials from their
checkpoints), and unlike ``resume`` it also starts a campaign whose failed attempt never wrote a
record (a runtime env that did not install). ``status``, ``logs`` and ``cancel`` take a campaign
id (or one attempt's job id) and use its latest attempt; ``status`` shows every attempt.

Stop window. ``stop_job`` makes Ray's JobSupervisor send SIGTERM to the driver's process tree
and SIGKILL ``RAY_JOB_STOP_WAIT_TIME_S`` seconds later (default 3). The supervisor reads that
variable from its own environment, which carries the job's runtime_env ``env_vars``
(``JobManager._get_supervisor_runtime_env``). A campaign's graceful stop (Tune saves its state,
trials stop, the ledger is written, open runs end KILLED, the comparison is drawn) takes longer
than 3 s, so the window is configured, not squeezed: every job gets
``RAY_JOB_STOP_WAIT_TIME_S=STOP_WAIT_S`` (a ``--runtime-env`` file's ``env_vars`` may set
another). ``cancel`` waits (bounded: the window plus ``STOP_MARGIN_S``) until the job is terminal
and prints the driver's own summary line, which says how its trials ended.

Placement: the job's id is its ``submission_id``; the entrypoint runs in the uploaded working
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
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nfs_orchestrator
from nfs_orchestrator.errors import PosenfsError

TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
RESUBMITTABLE = ("FAILED", "STOPPED")  # a new attempt resumes the campaign
STOP_WAIT_S = 60  # SIGTERM -> SIGKILL window given to every job (Ray's default: 3 s)
STOP_MARGIN_S = 30  # cancel waits this long past the window for Ray to record the stop
RAY_STOP_WAIT_S = 3  # Ray's own window, for jobs that do not set one
# A head that has just started (or is busy) answers a submission with 500 "No available agent
# to submit job, please try again later" until its job agent is up: submit retries that long.
AGENT_WAIT_S = 60
AGENT_POLL_S = 2
UPLOAD_EXCLUDES = [".venv", "posenfs-runs", ".git", "**/__pycache__", ".pytest_cache",
                   ".ruff_cache", "*.egg-info"]  # fmt: skip
JOB_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "PYTHONUNBUFFERED": "1",
    "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S),  # read by the JobSupervisor (an int)
}


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
    """What posenfs shows of a job; ``created`` is True when this call submitted it;
    ``stop_wait_s`` is the job's SIGTERM -> SIGKILL window."""

    job_id: str
    status: str
    message: str = ""
    entrypoint: str = ""
    created: bool = False
    stop_wait_s: int = RAY_STOP_WAIT_S
    campaign_id: str = ""  # from the job's metadata (jobs posenfs submitted)

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
# Attempts: job ids from the campaign id (pure, no cluster)
# --------------------------------------------------------------------------------------------


def attempt_job_id(campaign_id: str, attempt: int) -> str:
    """Attempt 1 is job ``<campaign id>``; attempt n >= 2 is ``<campaign id>-<n>``."""
    if not 1 <= attempt < 10**7:
        raise ValueError(f"attempt {attempt}: attempts count from 1 (fewer than 8 digits)")
    return campaign_id if attempt == 1 else f"{campaign_id}-{attempt}"


def attempt_number(job_id: str, campaign_id: str) -> int | None:
    """The attempt ``job_id`` is of ``campaign_id``, or None when it is not one of its jobs."""
    if job_id == campaign_id:
        return 1
    prefix = f"{campaign_id}-"
    tail = job_id[len(prefix) :] if job_id.startswith(prefix) else ""
    if tail.isdigit() and not tail.startswith("0") and len(tail) < 8 and int(tail) >= 2:
        return int(tail)
    return None


def campaign_attempts(infos: Iterable[JobInfo], campaign_id: str) -> list[JobInfo]:
    """The campaign's jobs among ``infos``, oldest attempt first."""
    numbered = [(attempt_number(i.job_id, campaign_id), i) for i in infos]
    return [info for n, info in sorted((p for p in numbered if p[0]), key=lambda p: p[0])]


def next_attempt(attempts: Sequence[JobInfo], campaign_id: str) -> int | None:
    """The attempt ``submit`` starts, or None when the latest one is to be reported instead
    (PENDING/RUNNING: not duplicated; SUCCEEDED: the campaign is done)."""
    if not attempts:
        return 1
    latest = attempts[-1]
    if latest.status not in RESUBMITTABLE:
        return None
    return (attempt_number(latest.job_id, campaign_id) or 1) + 1


def summary_line(log: str, campaign_id: str) -> str | None:
    """The campaign driver's last summary line in a job log (``campaign <id> <outcome>: N
    trials (... finished, ...)``, printed by ``posenfs search`` after the ledger and the runs
    are final), or None when the driver ended before printing it."""
    lines = [ln for ln in log.splitlines() if ln.startswith(f"campaign {campaign_id} ")]
    return lines[-1] if lines else None


# --------------------------------------------------------------------------------------------
# Jobs
# --------------------------------------------------------------------------------------------


def _info(details: Any, created: bool = False) -> JobInfo:
    status = details.status
    env_vars = (details.runtime_env or {}).get("env_vars") or {}
    wait = str(env_vars.get("RAY_JOB_STOP_WAIT_TIME_S", RAY_STOP_WAIT_S))
    return JobInfo(
        job_id=details.submission_id or details.job_id,
        status=str(getattr(status, "value", status)),
        message=details.message or "",
        entrypoint=details.entrypoint or "",
        created=created,
        stop_wait_s=int(wait) if wait.isdigit() else RAY_STOP_WAIT_S,
        campaign_id=(details.metadata or {}).get("posenfs.campaign_id", ""),
    )


def _lookup(client: Any, job_id: str) -> JobInfo | None:
    try:
        return _info(_call(client.get_job_info, job_id, job_id))
    except JobNotFound:
        return None


def _all_jobs(client: Any) -> list[JobInfo]:
    return [_info(d) for d in client.list_jobs()]


def _attempts_or_fail(client: Any, name: str) -> list[JobInfo]:
    """The attempts of campaign ``name`` (a campaign id or one attempt's job id)."""
    found = campaign_attempts(_all_jobs(client), name)
    if not found:
        raise JobNotFound(f"job {name}: no such job on this cluster")
    return found


def working_dir() -> Path:
    """The folder uploaded with a job: the one holding the ``nfs_orchestrator`` package."""
    return Path(nfs_orchestrator.__file__).resolve().parent.parent


def entrypoint(spec_path: str, overrides: Sequence[str], root: str | None, workdir: Path) -> str:
    """``posenfs search <file relative to the working dir> --address auto [--root R]
    [--set K=V ...]``: ``auto`` joins the cluster the job runs on (``RAY_ADDRESS``). The same
    for every attempt: on a campaign id with a record, ``search`` resumes."""
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
    the upload excludes and posenfs' environment variables (``base``'s ``env_vars`` win)."""
    env = dict(base or {})
    env["working_dir"] = str(workdir)
    env["excludes"] = sorted({*env.get("excludes", []), *UPLOAD_EXCLUDES})
    env["env_vars"] = {**JOB_ENV, **env.get("env_vars", {})}
    wait = str(env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"])
    if not wait.isdigit():  # Ray parses it with int() in the supervisor, after the job started
        raise JobsError(f"env_vars.RAY_JOB_STOP_WAIT_TIME_S: {wait!r} is not a whole number")
    env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] = wait
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


@dataclass(frozen=True)
class Submission:
    """What ``submit`` did: ``job`` is the attempt submitted (``job.created``) or the one
    reported; ``previous`` the attempt a new one resumes after (None for attempt 1)."""

    campaign_id: str
    job: JobInfo
    attempt: int
    previous: JobInfo | None = None


def submit_campaign(
    spec_path: str,
    overrides: Sequence[str],
    address: str,
    root: str | None,
    token: str | None = None,
    *,
    base_env: dict[str, Any] | None = None,
) -> Submission:
    """Submits the campaign's next attempt, or reports its latest one (PENDING, RUNNING or
    SUCCEEDED). ``token`` is a token *file* (``--token-file``); the other places are searched
    as well."""
    from nfs_orchestrator.campaign_spec import load_campaign

    campaign = load_campaign(spec_path, tuple(overrides))  # a bad spec fails here, not remotely
    cid = campaign.campaign_id
    workdir = working_dir()
    command = entrypoint(spec_path, overrides, root, workdir)
    env = runtime_env(workdir, base_env)
    client = connect(address, token)
    attempts = campaign_attempts(_all_jobs(client), cid)
    attempt = next_attempt(attempts, cid)
    if attempt is None:
        latest = attempts[-1]
        return Submission(cid, latest, attempt_number(latest.job_id, cid) or 1)
    job_id = attempt_job_id(cid, attempt)
    previous = attempts[-1] if attempts else None
    try:
        _submit_when_agent_ready(
            client,
            address,
            entrypoint=command,
            submission_id=job_id,
            runtime_env=env,
            metadata={"posenfs.campaign_id": cid, "posenfs.attempt": str(attempt)},
        )
    except RuntimeError as e:
        if "already exists" not in str(e):
            raise
        # submitted meanwhile by someone else: report theirs
        found = _lookup(client, job_id) or JobInfo(job_id, "PENDING", entrypoint=command)
        return Submission(cid, found, attempt, previous)
    found = _lookup(client, job_id)
    status = found.status if found else "PENDING"
    wait = int(env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"])
    message = found.message if found else ""
    job = JobInfo(job_id, status, message, command, True, wait, cid)
    return Submission(cid, job, attempt, previous)


def _submit_when_agent_ready(client: Any, address: str, **job: Any) -> None:
    """``client.submit_job(**job)``, again every ``AGENT_POLL_S`` while the head has no job
    agent yet, for at most ``AGENT_WAIT_S``; then a one-line ``JobsError``."""
    started = time.monotonic()
    while True:
        try:
            client.submit_job(**job)
            return
        except RuntimeError as e:
            if "No available agent" not in str(e):
                raise
            if time.monotonic() - started >= AGENT_WAIT_S:
                raise JobsError(
                    f"{normalize_address(address)}: the Ray head had no job agent to take the "
                    f"submission for {AGENT_WAIT_S} s ('No available agent to submit job'); is "
                    "the head still starting? Submit again once `ray status` lists it"
                ) from None
        time.sleep(AGENT_POLL_S)


def job_attempts(name: str, address: str, token: str | None = None) -> list[JobInfo]:
    """Every attempt of campaign ``name`` (a campaign id or a job id), oldest first."""
    return _attempts_or_fail(connect(address, token), name)


def job_status(name: str, address: str, token: str | None = None) -> JobInfo:
    """The latest attempt of campaign ``name`` (a campaign id or a job id)."""
    return job_attempts(name, address, token)[-1]


def list_jobs(address: str, token: str | None = None) -> list[JobInfo]:
    client = connect(address, token)
    return sorted(_all_jobs(client), key=lambda j: j.job_id)


def job_logs(
    name: str,
    address: str,
    token: str | None = None,
    follow: bool = False,
    write: Callable[[str], None] = print,
) -> JobInfo:
    """Writes the log of campaign ``name``'s latest attempt (with ``follow``, streams it until
    the job ends); returns the job's status afterwards."""
    client = connect(address, token)
    job_id = _attempts_or_fail(client, name)[-1].job_id
    if not follow:
        write(_call(client.get_job_logs, job_id, job_id))
        return _info(_call(client.get_job_info, job_id, job_id))

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    asyncio.run(tail())
    return _info(_call(client.get_job_info, job_id, job_id))


@dataclass(frozen=True)
class Cancellation:
    """What ``cancel`` saw: the job afterwards, whether this call stopped it, how long the stop
    took, and the driver's summary line (None: the driver did not print it, e.g. SIGKILLed)."""

    job: JobInfo
    stopped_now: bool
    waited_s: float = 0.0
    summary: str | None = None


def cancel_job(
    name: str,
    address: str,
    token: str | None = None,
    *,
    poll_s: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Cancellation:
    """Stops the latest attempt of campaign ``name`` and waits until Ray reports it terminal:
    the driver gets SIGTERM and stops the campaign cleanly (checkpoints kept, open runs ended
    KILLED) within the job's stop window; a job already over is reported as it is. Waiting
    longer than the window plus ``STOP_MARGIN_S`` is a ``JobsError``."""
    client = connect(address, token)
    info = _attempts_or_fail(client, name)[-1]
    job_id = info.job_id
    if info.terminal:
        return Cancellation(info, stopped_now=False)
    started = time.monotonic()
    _call(client.stop_job, job_id, job_id)
    bound = info.stop_wait_s + STOP_MARGIN_S
    while not info.terminal:
        if time.monotonic() - started > bound:
            raise JobsError(
                f"job {job_id}: still {info.status} {bound} s after the stop request (its stop "
                f"window is {info.stop_wait_s} s); see posenfs status {job_id} --address {address}"
            )
        sleep(poll_s)
        info = _info(_call(client.get_job_info, job_id, job_id))
    waited = time.monotonic() - started
    log = _call(client.get_job_logs, job_id, job_id)
    cid = info.campaign_id or name
    return Cancellation(info, stopped_now=True, waited_s=waited, summary=summary_line(log, cid))
