"""Shared fixtures. Unit tests use fakeredis and httpx.MockTransport; integration tests a private redis-server,
the sandbox as a real HTTP server, and real worker processes (see ``support.py``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import fakeredis
import pytest
import redis

from refold_dispatch.config import Settings
from tests.support import TEST_API_KEY, RedisServer, WorkerProcess, worker_env

# Tests never read the developer's environment or .env: every setting they use is explicit.
# (REFOLD_OPENAPI_SPEC stays: it points the contract tests at Refold's spec, it configures no behaviour.)
for _name in [
    name for name in os.environ if (name.startswith("REFOLD_") or name == "REDIS_URL") and name != "REFOLD_OPENAPI_SPEC"
]:
    del os.environ[_name]


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "api_key": TEST_API_KEY,
        "redis_url": "redis://127.0.0.1:6379/15",
        "base_url": "http://refold.test",
        "retry_jitter": 0.0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture
def settings() -> Settings:
    return make_settings()


@pytest.fixture
def fake_redis() -> Iterator[fakeredis.FakeRedis]:
    client = fakeredis.FakeRedis()
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One private redis-server for the session (AOF on, noeviction), on a free port."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def real_redis(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A client of the private server, emptied before each test (which may have restarted the server)."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def sandbox() -> Iterator[Any]:
    """The Refold sandbox as a real HTTP server on a free port, keyed with the test API key."""
    from refold_dispatch.sandbox import SandboxConfig, SandboxServer

    with SandboxServer(SandboxConfig(api_key=TEST_API_KEY)) as server:
        yield server


@pytest.fixture
def start_worker(redis_server: RedisServer, sandbox: Any) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes against the private Redis and the sandbox; all stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(name: str = "w1", *, concurrency: int = 2, wait: bool = True, **env: str) -> WorkerProcess:
        worker = WorkerProcess(name, worker_env(redis_server.url, sandbox.url, **env), concurrency=concurrency)
        worker.start()
        started.append(worker)
        if wait:
            client = redis.Redis.from_url(redis_server.url)
            try:
                worker.wait_ready(client)
            finally:
                client.close()
        return worker

    yield start
    for worker in started:
        worker.stop()
        worker.kill()
