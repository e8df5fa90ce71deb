"""The status snapshot (monitor.py) on fakeredis: each number read from where keys.py says it lives."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import fakeredis
import pytest

from refold_dispatch import monitor
from refold_dispatch.config import Settings
from refold_dispatch.dispatcher import Dispatcher
from refold_dispatch.keys import Keys
from refold_dispatch.message import build_message
from refold_dispatch.monitor import LATE_BEAT_SECONDS, job_id_of_message, take_snapshot
from refold_dispatch.scripts import ScriptContext, Scripts
from tests.conftest import make_settings

KEYS = Keys("refold")


@pytest.fixture
def dispatcher(settings: Settings, fake_redis: fakeredis.FakeRedis) -> Iterator[Dispatcher]:
    with Dispatcher(settings, redis_client=fake_redis) as instance:
        yield instance


def _dead_letter(settings: Settings, client: fakeredis.FakeRedis, job_id: str, reason: str) -> None:
    Scripts(client, ScriptContext.from_settings(settings)).run(
        "deadletter", [job_id, "", reason, json.dumps({"status_code": 404}), "seeded", ""]
    )


def test_job_id_is_read_from_the_envelope_headers(dispatcher: Dispatcher) -> None:
    job = dispatcher.event_job("order.created", "acct_1", {"n": 1})
    assert job_id_of_message(build_message(job, "refold").encode()) == job.id
    assert job_id_of_message(None) is None
    assert job_id_of_message(b"not json") is None
    assert job_id_of_message(b"[1, 2]") is None
    assert job_id_of_message(b'{"headers": {"id": 7}}') is None


def test_an_empty_redis_reads_as_idle_and_closed(settings: Settings, fake_redis: fakeredis.FakeRedis) -> None:
    snapshot = take_snapshot(settings, fake_redis)

    assert (snapshot.queue_depth, snapshot.delayed, snapshot.backlog_accounts, snapshot.dead_letters) == (0, 0, 0, 0)
    assert snapshot.oldest_waiting_seconds is None
    assert snapshot.workers == []
    assert snapshot.flow is not None
    assert snapshot.flow.breaker == "closed"
    assert snapshot.environment == "test"
    assert snapshot.warnings == []


def test_queue_depth_and_the_age_of_the_next_job_out(
    settings: Settings, fake_redis: fakeredis.FakeRedis, dispatcher: Dispatcher
) -> None:
    # Given three jobs enqueued in order: kombu pops from the right, so the first one is next out
    first = dispatcher.trigger_event("order.created", "acct_1", {"n": 1})
    dispatcher.trigger_event("order.created", "acct_2", {"n": 2})
    dispatcher.trigger_event("order.created", "acct_3", {"n": 3})
    created_ms = int(fake_redis.hget(KEYS.job(first.job_id), "created"))  # type: ignore[arg-type]

    # When the snapshot is taken 42 s after it was created (on the Redis clock the scripts stamp with)
    snapshot = take_snapshot(settings, fake_redis, now=created_ms / 1000 + 42)

    # Then
    assert snapshot.queue_depth == 3
    assert snapshot.oldest_waiting_job == first.job_id
    assert snapshot.oldest_waiting_seconds == pytest.approx(42, abs=0.01)


def test_delayed_jobs_due_now_and_backlogged_accounts(settings: Settings, fake_redis: fakeredis.FakeRedis) -> None:
    now = 1_800_000_000.0
    fake_redis.zadd(KEYS.delayed, {"due": now * 1000 - 1, "later": now * 1000 + 60_000, "now": now * 1000})
    fake_redis.zadd(KEYS.backlogs, {"acct_noisy": now * 1000})

    snapshot = take_snapshot(settings, fake_redis, now=now)

    assert (snapshot.delayed, snapshot.delayed_due, snapshot.backlog_accounts) == (3, 2, 1)


def test_dead_letters_by_reason(
    settings: Settings, fake_redis: fakeredis.FakeRedis, dispatcher: Dispatcher, monkeypatch: pytest.MonkeyPatch
) -> None:
    for number, reason in enumerate(["permanent", "permanent", "auth"]):
        receipt = dispatcher.trigger_event("order.created", f"acct_{number}", {"n": number})
        _dead_letter(settings, fake_redis, receipt.job_id, reason)

    snapshot = take_snapshot(settings, fake_redis)
    assert snapshot.dead_letters == 3
    assert snapshot.dead_by_reason == {"permanent": 2, "auth": 1}
    assert not snapshot.dead_by_reason_partial

    # A huge queue is sampled, newest first, and says so.
    monkeypatch.setattr(monitor, "DLQ_REASON_SCAN_LIMIT", 2)
    sampled = take_snapshot(settings, fake_redis)
    assert sampled.dead_letters == 3
    assert sum(sampled.dead_by_reason.values()) == 2
    assert sampled.dead_by_reason_partial


def test_workers_from_their_heartbeats(settings: Settings, fake_redis: fakeredis.FakeRedis) -> None:
    now = time.time()
    fake_redis.hset(KEYS.worker("w1@host"), mapping={"beat_at": now - 2, "canary_at": now - 20, "pid": 101})
    fake_redis.hset(KEYS.worker("w2@host"), mapping={"beat_at": now - 3, "canary_at": now - 400, "stalled": now})
    fake_redis.hset(KEYS.worker("w3@host"), mapping={"beat_at": now - LATE_BEAT_SECONDS - 10, "pid": 303})
    fake_redis.hset("refold:job:not-a-worker", "state", "queued")

    snapshot = take_snapshot(settings, fake_redis)

    by_name = {worker.hostname: worker for worker in snapshot.workers}
    assert sorted(by_name) == ["w1@host", "w2@host", "w3@host"]
    assert by_name["w1@host"].pid == 101
    assert by_name["w1@host"].beat_age_seconds == pytest.approx(2, abs=1)
    assert by_name["w1@host"].canary_age_seconds == pytest.approx(20, abs=1)
    assert not by_name["w1@host"].late
    assert not by_name["w1@host"].stalled
    assert by_name["w2@host"].stalled
    assert by_name["w3@host"].late
    assert by_name["w3@host"].canary_age_seconds is None
    assert any("w2@host stopped consuming" in warning for warning in snapshot.warnings)
    assert any("w3@host has not beaten" in warning for warning in snapshot.warnings)


def test_queued_jobs_without_a_live_worker_are_a_warning(
    settings: Settings, fake_redis: fakeredis.FakeRedis, dispatcher: Dispatcher
) -> None:
    dispatcher.trigger_event("order.created", "acct_1", {"n": 1})

    assert "1 job(s) queued but no live worker is beating" in take_snapshot(settings, fake_redis).warnings


def test_flow_state_for_the_configured_key(settings: Settings, fake_redis: fakeredis.FakeRedis) -> None:
    now = 1_800_000_000.0
    fake_redis.hset(
        KEYS.flow(settings.api_key_fingerprint),
        mapping={
            "state": "open",
            "open_until": str(now * 1000 + 15_000),
            "pause_until": str(now * 1000 + 4_000),
            "factor": "0.49",
            "fails": "0",
            "tat": "123",
        },
    )

    snapshot = take_snapshot(settings, fake_redis, now=now)

    assert snapshot.flow is not None
    assert snapshot.flow.breaker == "open"
    assert snapshot.flow.open_for_seconds == pytest.approx(15)
    assert snapshot.flow.paused_for_seconds == pytest.approx(4)
    assert snapshot.flow.rate_factor == pytest.approx(0.49)
    assert "tat" not in snapshot.flow.raw
    assert any("circuit breaker is open" in warning for warning in snapshot.warnings)
    assert any("paused for 4 s" in warning for warning in snapshot.warnings)


@pytest.mark.parametrize("api_key", [None, "  "])
def test_flow_is_unknown_without_an_api_key(fake_redis: fakeredis.FakeRedis, api_key: str | None) -> None:
    settings = make_settings(api_key=api_key)

    snapshot = take_snapshot(settings, fake_redis)

    assert snapshot.flow is None
    assert snapshot.to_json()["flow"] is None


def test_the_json_form_is_complete_and_never_holds_the_key(
    settings: Settings, fake_redis: fakeredis.FakeRedis, dispatcher: Dispatcher
) -> None:
    dispatcher.trigger_event("order.created", "acct_1", {"n": 1})
    fake_redis.hset(KEYS.worker("w1@host"), mapping={"beat_at": time.time(), "pid": 1})

    text = take_snapshot(settings, fake_redis).dumps()
    data = json.loads(text)

    assert data["queue_depth"] == 1
    assert data["workers"][0]["late"] is False
    assert isinstance(data["warnings"], list)
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() not in text
