"""The Celery app's configuration answers each Celery-on-Redis trap; startup refuses a missing key."""

from __future__ import annotations

import subprocess
import sys

import pytest
import redis

from refold_dispatch.config import Settings
from refold_dispatch.worker import celery_config, check_redis_durability
from tests.conftest import make_settings
from tests.support import ROOT, RedisServer, worker_env


def test_celery_config_answers_the_traps() -> None:
    settings = make_settings()
    config = celery_config(settings)
    transport = config["broker_transport_options"]

    assert config["accept_content"] == ["json"]  # trap 7: never pickle
    assert config["task_serializer"] == config["event_serializer"] == "json"
    assert config["task_acks_late"] and config["task_reject_on_worker_lost"]  # trap 2
    assert config["worker_prefetch_multiplier"] == settings.prefetch_multiplier == 4  # trap 9: the ledger dedupes
    assert config["task_ignore_result"] and config["result_backend"] is None  # trap 5
    # trap 1/2: a running job is never redelivered (visibility > hard limit), a killed one comes back fast
    assert transport["visibility_timeout"] > config["task_time_limit"] > config["task_soft_time_limit"]
    assert transport["visibility_timeout"] + transport["unacked_restore_interval"] < 120
    assert transport["unacked_restore_throttle"] == 1
    assert config["broker_connection_max_retries"] is None  # trap 3: reconnect forever
    assert config["task_default_queue"] == settings.queue
    # Flower's task events come from our scripts (events.py, tests/integration/test_flower_events.py).
    assert not config["worker_send_task_events"] and config["task_send_sent_event"]


def test_visibility_timeout_must_cover_the_time_limit() -> None:
    with pytest.raises(ValueError, match="VISIBILITY_TIMEOUT"):
        make_settings(task_time_limit_seconds=60, visibility_timeout_seconds=61)


def test_importing_the_worker_reads_no_settings() -> None:
    code = (
        "import refold_dispatch.worker, refold_dispatch.tasks, refold_dispatch.config as c;"
        "print(c.get_settings.cache_info().currsize)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "0"


def test_durability_warnings(redis_server: RedisServer, real_redis: redis.Redis) -> None:
    assert check_redis_durability(real_redis) == []  # the test server runs as compose runs it
    real_redis.config_set("maxmemory-policy", "allkeys-lru")
    real_redis.config_set("appendonly", "no")
    try:
        problems = check_redis_durability(real_redis)
    finally:
        real_redis.config_set("maxmemory-policy", "noeviction")
        real_redis.config_set("appendonly", "yes")
    assert any("noeviction" in problem for problem in problems)
    assert any("AOF" in problem for problem in problems)


@pytest.mark.integration
@pytest.mark.parametrize("key", [None, "changeme"])
def test_worker_refuses_to_start_without_a_real_api_key(redis_server: RedisServer, key: str | None) -> None:
    env = worker_env(redis_server.url, "http://127.0.0.1:9")
    if key is None:
        del env["REFOLD_API_KEY"]
    else:
        env["REFOLD_API_KEY"] = key
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "refold_dispatch.worker", "worker", "-c", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "REFOLD_API_KEY" in result.stderr + result.stdout


def test_settings_report_the_environment_without_the_key() -> None:
    settings = Settings(_env_file=None, api_key="pk_live_SECRET_value")  # type: ignore[call-arg]
    assert settings.environment == "production"
    assert "SECRET" not in repr(settings)
    assert "SECRET" not in settings.model_dump_json()
    assert "SECRET" not in settings.api_key_fingerprint
