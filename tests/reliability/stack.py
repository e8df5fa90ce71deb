"""The parts a reliability test drives: a private redis-server, the sandbox in its own process, and real
``celery worker`` processes; plus the read-only probes the tests judge by (job states, Redis dumps, worker logs).

The sandbox runs as a separate process (``python -m refold_dispatch.sandbox``), not in the test's thread: the
test process enqueues, scans Redis and parses logs while the chaos runs, and its GIL must not add latency to
Refold's stand-in (the workers' read timeout is one second).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import redis

from refold_dispatch.sandbox import SandboxAdmin
from tests.support import ROOT, TEST_API_KEY, RedisServer, WorkerProcess, free_port, redis_dump, wait_for, worker_env

PREFIX = "refold"
QUEUE = "refold"
FINAL_STATES = frozenset({"delivered", "superseded", "dead"})
EVENT_PATH = "/api/v2/public/event/trigger"
ACCOUNT_PATH = "/api/v2/public/linked-account"
# Records are read from the sandbox in pages of this many.
RECORD_PAGE = 5000


def text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


# -- the sandbox, in a process of its own --------------------------------------------------------------------


@dataclass
class SandboxProcess:
    """``python -m refold_dispatch.sandbox`` on a free port; the API key goes through the environment."""

    rate_limit: float
    rate_burst: int
    seed: int | None = None
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _admin: SandboxAdmin | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> SandboxAdmin:
        if self._admin is None:
            raise RuntimeError("the sandbox is not running")
        return self._admin

    def start(self) -> SandboxProcess:
        args = [
            sys.executable,
            "-m",
            "refold_dispatch.sandbox",
            "--port",
            str(self.port),
            "--rate-limit",
            str(self.rate_limit),
            "--rate-burst",
            str(self.rate_burst),
        ]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        env = {**os.environ, "REFOLD_SANDBOX_API_KEY": TEST_API_KEY}
        log = self.log_path.open("ab") if self.log_path is not None else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(
                args, env=env, cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            if self.log_path is not None:
                log.close()  # type: ignore[union-attr]
        self._admin = SandboxAdmin(self.url)

        def healthy() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"the sandbox exited with {self.process.returncode}")
            try:
                return self.admin.health()
            except httpx.HTTPError:
                return False

        wait_for(healthy, timeout=30, what="the sandbox process to answer")
        return self

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(5)

    def records(self, *, since_seq: int = 0, deadline_s: float = 60) -> list[dict[str, Any]]:
        """Every recorded /api request after ``since_seq``, oldest first (paged)."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            page = self.admin.requests(since_seq=since_seq, limit=RECORD_PAGE)
            found.extend(page)
            if len(page) < RECORD_PAGE:
                return found
            since_seq = int(page[-1]["seq"])
        raise AssertionError(f"reading the sandbox's records took over {deadline_s} s")


# -- the whole stack ---------------------------------------------------------------------------------------


@dataclass
class Stack:
    """Redis + sandbox + workers for one test; ``close`` stops everything it started."""

    directory: Path
    worker_overrides: dict[str, str]
    sandbox_rate: float
    sandbox_burst: int
    concurrency: int = 2
    seed: int | None = None
    redis_server: RedisServer = field(default_factory=RedisServer)
    sandbox: SandboxProcess | None = None
    workers: list[WorkerProcess] = field(default_factory=list)
    _names: Iterator[int] = field(default_factory=lambda: iter(range(1, 1_000_000)))
    _client: redis.Redis | None = None

    def start(self) -> Stack:
        self.redis_server.start()
        self.sandbox = SandboxProcess(
            self.sandbox_rate, self.sandbox_burst, seed=self.seed, log_path=self.directory / "sandbox.log"
        ).start()
        return self

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(self.redis_server.url, socket_timeout=5, socket_connect_timeout=2)
        return self._client

    @property
    def env(self) -> dict[str, str]:
        assert self.sandbox is not None
        return worker_env(self.redis_server.url, self.sandbox.url, **self.worker_overrides)

    def start_worker(self, *, wait: bool = True, timeout: float = 60) -> WorkerProcess:
        name = f"w{next(self._names)}"
        worker = WorkerProcess(
            name, self.env, concurrency=self.concurrency, log_path=self.directory / f"worker-{name}.log"
        )
        worker.start()
        self.workers.append(worker)
        if wait:
            worker.wait_ready(self.client, timeout=timeout)
        return worker

    def live_workers(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.process is not None and w.process.poll() is None]

    def close(self) -> None:
        for worker in self.workers:
            with contextlib.suppress(Exception):
                worker.kill()
        if self.sandbox is not None:
            self.sandbox.stop()
        if self._client is not None:
            self._client.close()
        self.redis_server.cleanup()


# -- reading Redis -------------------------------------------------------------------------------------------


def with_redis_retry(call: Any, *, budget: float = 30.0) -> Any:
    """Run a read against Redis, riding out a restart (bounded)."""
    deadline = time.monotonic() + budget
    while True:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def job_fields(client: redis.Redis, job_ids: list[str], *names: str) -> dict[str, dict[str, str | None]]:
    """``HMGET`` of ``names`` for every job id, in one pipeline per 2000 ids."""
    found: dict[str, dict[str, str | None]] = {}
    for start in range(0, len(job_ids), 2000):
        chunk = job_ids[start : start + 2000]
        with client.pipeline(transaction=False) as pipe:
            for job_id in chunk:
                pipe.hmget(f"{PREFIX}:job:{job_id}", list(names))
            rows = pipe.execute()
        for job_id, row in zip(chunk, rows, strict=True):
            found[job_id] = {name: text(value) for name, value in zip(names, row, strict=True)}
    return found


def job_states(client: redis.Redis, job_ids: list[str]) -> dict[str, str | None]:
    return {job_id: row["state"] for job_id, row in job_fields(client, job_ids, "state").items()}


def leases(client: redis.Redis, job_ids: list[str]) -> dict[str, tuple[str, int]]:
    """The lease token and remaining ms of each job that has a lease."""
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.get(f"{PREFIX}:lease:{job_id}")
            pipe.pttl(f"{PREFIX}:lease:{job_id}")
        rows = pipe.execute()
    found: dict[str, tuple[str, int]] = {}
    for index, job_id in enumerate(job_ids):
        token, pttl = rows[2 * index], rows[2 * index + 1]
        if token is not None and pttl is not None and pttl > 0:
            found[job_id] = (text(token) or "", int(pttl))
    return found


def pipeline_idle_problems(client: redis.Redis) -> list[str]:
    """What still moves: queued or unacked messages, leases, backlogs, delayed entries of live jobs."""
    problems = []
    if depth := client.llen(QUEUE):
        problems.append(f"{depth} messages in the queue")
    if unacked := client.hlen("unacked"):
        problems.append(f"{unacked} unacked messages")
    if held := list(client.scan_iter(f"{PREFIX}:lease:*", count=1000)):
        problems.append(f"{len(held)} leases")
    if backlogs := client.zcard(f"{PREFIX}:backlogs"):
        problems.append(f"{backlogs} account backlogs")
    delayed = [text(member) or "" for member in client.zrange(f"{PREFIX}:delayed", 0, -1)]
    live = [job_id for job_id, state in job_states(client, delayed).items() if state not in FINAL_STATES]
    if live:
        problems.append(f"{len(live)} non-final jobs in {PREFIX}:delayed (e.g. {live[:3]})")
    return problems


# -- reading worker logs -------------------------------------------------------------------------------------

_RECEIVED = re.compile(r"Task refold\.(?:trigger_event|upsert_linked_account)\[([0-9a-f-]{36})\] received")
_JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_STAMP = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}):")


def in_flight(log: str) -> dict[str, float]:
    """Job ids a worker received and had not finished with, per its own log, with when it received them.

    Celery's main process logs ``Task ...[id] received`` when it takes a message (reserved or started); the
    next line naming the id is the end of that attempt (our ``delivery_attempt`` line, Celery's
    ``succeeded``/``retry``/``raised``, or a rejection). A job whose last mention is ``received`` is in flight.
    Times are epoch seconds (Celery logs local time with millisecond precision).
    """
    last_received: dict[str, tuple[int, float]] = {}
    last_other: dict[str, int] = {}
    for number, line in enumerate(log.splitlines()):
        if match := _RECEIVED.search(line):
            stamp = _STAMP.match(line)
            at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp() if stamp else 0.0
            last_received[match.group(1)] = (number, at)
            continue
        for job_id in _JOB_ID.findall(line):
            last_other[job_id] = number
    return {job_id: at for job_id, (number, at) in last_received.items() if last_other.get(job_id, -1) < number}


# -- the CLI -------------------------------------------------------------------------------------------------

CLI_MODULE = ROOT / "src" / "refold_dispatch" / "cli.py"


def cli_available() -> bool:
    return CLI_MODULE.exists()


def run_cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``refold-dispatch ARGS`` as an operator runs it (the console script of this environment)."""
    script = Path(sys.executable).parent / "refold-dispatch"
    command = [str(script), *args] if script.exists() else [sys.executable, "-m", "refold_dispatch.cli", *args]
    return subprocess.run(  # noqa: PLW1510 - the caller checks the code and wants the output either way
        command, env=env, cwd=str(ROOT), capture_output=True, text=True, timeout=timeout
    )


def secret_leaks(
    client: redis.Redis, logs: Iterable[tuple[str, str]], outputs: Iterable[tuple[str, str]], secret: str = TEST_API_KEY
) -> tuple[list[str], int]:
    """Where ``secret`` shows up: Redis keys/values, logs, command outputs. Returns (places, values scanned)."""
    places: list[str] = []
    needle = secret.encode()
    scanned = 0
    for key, value in redis_dump(client):
        scanned += 1
        if needle in key:
            places.append(f"redis key {key[:80]!r}")
        if needle in value:
            places.append(f"redis value of {key[:80]!r}: {value[:120]!r}")
    for name, body in logs:
        if secret in body:
            places.append(f"log {name}")
    for name, body in outputs:
        if secret in body:
            places.append(f"output of {name}")
    return places, scanned
