"""Test support: a private redis-server, real worker processes, and waiting on conditions (never fixed sleeps).

Integration tests run against parts users run: ``redis-server`` on a free port of its own (so tests never
touch a developer's data), ``celery -A refold_dispatch.worker worker`` started as a subprocess the way the
README starts it, and the sandbox as a real HTTP server.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis

T = TypeVar("T")
TEST_API_KEY = "tk_test_SECRET_canary_7f3a9c"
ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], T], *, timeout: float, interval: float = 0.05, what: str = "condition") -> T:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T = condition()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last value: {last!r})")
        time.sleep(interval)
        last = condition()
    return last


@dataclass
class RedisServer:
    """A private ``redis-server`` with AOF on (as docker-compose runs it), restartable on the same port."""

    port: int = field(default_factory=free_port)
    directory: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="refold-redis-")))
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (see README)")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            wait_for(lambda: _pings(client), timeout=10, what=f"redis-server on port {self.port}")
        finally:
            client.close()

    def stop(self) -> None:
        """A clean shutdown (SHUTDOWN fsyncs the AOF), as an orchestrator's restart would do."""
        if self.process is None:
            return
        with contextlib.suppress(redis.RedisError):
            redis.Redis(port=self.port, socket_timeout=2).shutdown(nosave=False)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def worker_env(redis_url: str, base_url: str, **overrides: str) -> dict[str, str]:
    """The environment a worker process gets: ours, minus any REFOLD_* of the developer's shell."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("REFOLD_") and key != "REDIS_URL"}
    env.update(
        {
            "REFOLD_API_KEY": TEST_API_KEY,
            "REFOLD_REDIS_URL": redis_url,
            "REFOLD_BASE_URL": base_url,
            "REFOLD_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(overrides)
    return env


def celery_worker_argv(app: str, hostname: str, *, pool: str, concurrency: int, extra: Sequence[str] = ()) -> list[str]:
    """``celery -A <app> worker`` as the README starts it (mingle and gossip off: faster, quieter starts)."""
    return [
        sys.executable, "-m", "celery", "-A", app, "worker", "--loglevel", "INFO", "-P", pool,
        "-c", str(concurrency), "-n", hostname, "--without-mingle", "--without-gossip", *extra,
    ]  # fmt: skip


@dataclass
class WorkerProcess:
    """``celery -A refold_dispatch.worker worker``, started as users start it."""

    name: str
    env: Mapping[str, str]
    concurrency: int = 2
    pool: str = "prefork"
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="refold-worker-", suffix=".log")[1]))
    process: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}@{socket.gethostname()}"

    def start(self) -> WorkerProcess:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            celery_worker_argv("refold_dispatch.worker", self.hostname, pool=self.pool, concurrency=self.concurrency),
            env=dict(self.env),
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self

    def wait_ready(self, client: redis.Redis, prefix: str = "refold", timeout: float = 30) -> None:
        """Ready when the mover beats (it starts after the pool) and Celery says it is ready."""

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"worker {self.name} exited with {self.process.returncode}:\n{self.log()}")
            return bool(client.exists(f"{prefix}:worker:{self.hostname}")) and "ready." in self.log()

        wait_for(ready, timeout=timeout, what=f"worker {self.name} to be ready")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        if self.process is None:
            return []
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True, check=False)
        return [int(pid) for pid in out.stdout.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker (main process and its pool) at once, like an OOM kill of the container."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM: Celery's warm shutdown. Returns the exit code."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.terminate(timeout=20)


def job_state(client: redis.Redis, job_id: str, prefix: str = "refold") -> str | None:
    value: Any = client.hget(f"{prefix}:job:{job_id}", "state")
    return value.decode() if value is not None else None


# Read at import, before conftest.py strips REFOLD_* variables from the environment: it only selects the long
# run of the reliability suite (tests/reliability), it configures no behaviour.
CHAOS_LONG = os.environ.get("REFOLD_CHAOS_LONG") == "1"


def redis_dump(client: redis.Redis) -> Iterator[tuple[bytes, bytes]]:
    """Every key and every value (members, fields, scores' members) in Redis, as bytes."""
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        values: list[Any]
        if kind == b"string":
            values = [client.get(key)]
        elif kind == b"hash":
            values = [item for pair in client.hgetall(key).items() for item in pair]
        elif kind == b"list":
            values = list(client.lrange(key, 0, -1))
        elif kind == b"set":
            values = list(client.smembers(key))
        elif kind == b"zset":
            values = [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            values = [json.dumps(str(entry)).encode() for entry in client.xrange(key)]
        else:
            values = []
        for value in values:
            if value is not None:
                yield key, value if isinstance(value, bytes) else str(value).encode()
