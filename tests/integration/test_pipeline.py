"""The whole pipeline, end to end: a real redis-server, real ``celery worker`` processes, the sandbox over HTTP.

Each test enqueues with the public :class:`~refold_dispatch.dispatcher.Dispatcher`, lets real workers deliver,
and judges by what the sandbox received (its request log and per-idempotency-key delivery counts) and by the
job ledger and dead-letter queue in Redis. Schedules and time limits are shortened through the workers'
``REFOLD_*`` environment so the file runs in a few minutes; nothing waits on a fixed sleep.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis

from refold_dispatch.config import Settings
from refold_dispatch.dispatcher import Dispatcher, Receipt
from refold_dispatch.dlq import DeadLetter, DeadLetterFilter, DeadLetterQueue
from refold_dispatch.message import TRIGGER_EVENT_TASK, task_message
from refold_dispatch.sandbox import DEFAULT_KNOWN_EVENTS
from tests.support import TEST_API_KEY, RedisServer, WorkerProcess, job_state, redis_dump, wait_for

pytestmark = pytest.mark.integration

StartWorker = Callable[..., WorkerProcess]

EVENT_PATH = "/api/v2/public/event/trigger"
ACCOUNT_PATH = "/api/v2/public/linked-account"
QUEUE = "refold"
PREFIX = "refold"

# Short job-level schedules, no quick retries and a breaker that never opens: each failure is one request and
# one trip through the delayed set, so a test can count them.
FAST = {
    "REFOLD_RETRY_SCHEDULE": "[1,1,1]",  # JSON: "1,1,1" fails to parse (config.py bug, reported)
    "REFOLD_RETRY_JITTER": "0",
    "REFOLD_QUICK_RETRY_ATTEMPTS": "1",
    "REFOLD_BREAKER_THRESHOLD": "1000",
    "REFOLD_MOVER_INTERVAL_SECONDS": "0.1",
}
# A short hard time limit (soft limit 5 s) keeps a lost worker's lease, and so the recovery, short.
SHORT_LIMITS = {"REFOLD_TASK_TIME_LIMIT_SECONDS": "10", "REFOLD_VISIBILITY_TIMEOUT_SECONDS": "25"}


# -- helpers -----------------------------------------------------------------------------------------------


def settings_for(redis_server: RedisServer, sandbox: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None, api_key=TEST_API_KEY, redis_url=redis_server.url, base_url=sandbox.url
    )


@pytest.fixture
def dispatcher(redis_server: RedisServer, sandbox: Any, real_redis: redis.Redis) -> Iterator[Dispatcher]:
    with Dispatcher(settings_for(redis_server, sandbox)) as client:
        yield client


@pytest.fixture
def dlq(redis_server: RedisServer, sandbox: Any, real_redis: redis.Redis) -> DeadLetterQueue:
    return DeadLetterQueue(settings_for(redis_server, sandbox), real_redis)


def account() -> str:
    return f"acct-{uuid.uuid4().hex[:8]}"


def records(sandbox: Any, key: str) -> list[dict[str, Any]]:
    """Every request the sandbox received with this Idempotency-Key, in the order it decided them."""
    found: list[dict[str, Any]] = sandbox.admin.requests(idempotency_key=key)
    return found


def deliveries(sandbox: Any, key: str) -> int:
    return int(sandbox.admin.stats()["delivered_by_idempotency_key"].get(key, 0))


def delivered_record(sandbox: Any, key: str) -> dict[str, Any]:
    [record] = [r for r in records(sandbox, key) if r["outcome"] == "delivered"]
    return record


def wait_state(client: redis.Redis, receipt: Receipt, state: str, timeout: float = 30) -> None:
    wait_for(
        lambda: job_state(client, receipt.job_id) == state,
        timeout=timeout,
        what=f"job {receipt.job_id} to be {state} (now {job_state(client, receipt.job_id)})",
    )


def idle(client: redis.Redis) -> bool:
    """Nothing left to do anywhere: no delayed job, no queued message, no unacked message, no lease."""
    return (
        client.zcard(f"{PREFIX}:delayed") == 0
        and client.llen(QUEUE) == 0
        and client.hlen("unacked") == 0
        and not client.keys(f"{PREFIX}:lease:*")
    )


def wait_idle(client: redis.Redis, timeout: float = 30) -> None:
    wait_for(lambda: idle(client), timeout=timeout, what="the pipeline to go idle")


def job_field(client: redis.Redis, job_id: str, name: str) -> str | None:
    value: Any = client.hget(f"{PREFIX}:job:{job_id}", name)
    return value.decode() if value is not None else None


def dead_letter(dlq: DeadLetterQueue, receipt: Receipt, reason: str, timeout: float = 30) -> DeadLetter:
    wait_state(dlq.redis, receipt, "dead", timeout)
    entry = dlq.get(receipt.job_id)
    assert entry.reason == reason, entry
    return entry


def assert_secret_absent(client: redis.Redis, dlq: DeadLetterQueue, *workers: WorkerProcess) -> None:
    secret = TEST_API_KEY.encode()
    scanned = 0
    for key, value in redis_dump(client):
        scanned += 1
        assert secret not in key, key
        assert secret not in value, (key, value[:200])
    assert scanned > 0
    for entry in dlq.list(limit=None):
        assert TEST_API_KEY not in entry.model_dump_json(), entry.id
    for worker in workers:
        assert TEST_API_KEY not in worker.log(), f"the API key is in {worker.name}'s log"


def push_raw(client: redis.Redis, message: bytes | str) -> None:
    client.lpush(QUEUE, message)


# -- 1, 2: delivery and duplicates -------------------------------------------------------------------------


def test_upsert_then_events_are_each_delivered_exactly_once(
    dispatcher: Dispatcher, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    start_worker("w1", **FAST)
    acct = account()
    upsert = dispatcher.upsert_linked_account(acct, name="Acme", udf={"plan": "pro"})
    events = [dispatcher.trigger_event("order.created", acct, {"n": n}) for n in range(3)]

    for receipt in [upsert, *events]:
        wait_state(real_redis, receipt, "delivered")
    wait_idle(real_redis)

    stats = sandbox.admin.stats()
    assert stats["duplicates"] == []
    for receipt in [upsert, *events]:
        assert stats["delivered_by_idempotency_key"][receipt.idempotency_key] == 1
        # The sandbox saw exactly one request with the receipt's key: it is the Idempotency-Key header.
        [record] = records(sandbox, receipt.idempotency_key)
        assert record["outcome"] == "delivered"
        assert record["idempotency_key"] == receipt.idempotency_key
        assert job_field(real_redis, receipt.job_id, "request_id") == record["request_id"]
    upsert_record = delivered_record(sandbox, upsert.idempotency_key)
    assert upsert_record["method"] == "PUT"
    assert upsert_record["path"] == ACCOUNT_PATH
    assert (upsert_record["account_id"], upsert_record["name"], upsert_record["udf"]) == (acct, "Acme", {"plan": "pro"})
    for receipt in events:
        record = delivered_record(sandbox, receipt.idempotency_key)
        assert (record["path"], record["linked_account_id"], record["event"]) == (EVENT_PATH, acct, "order.created")
        assert record["seq"] > upsert_record["seq"]


def test_duplicate_enqueue_is_delivered_once(
    dispatcher: Dispatcher, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    first = dispatcher.trigger_event("invoice.paid", acct, {"invoice": 7}, idempotency_key="invoice-7-paid")
    second = dispatcher.trigger_event("invoice.paid", acct, {"invoice": 7}, idempotency_key="invoice-7-paid")
    assert (first.duplicate, second.duplicate) == (False, True)
    assert second.job_id == first.job_id
    assert real_redis.llen(QUEUE) == 1  # one message, not two

    start_worker("w1", **FAST)
    wait_state(real_redis, first, "delivered")
    third = dispatcher.trigger_event("invoice.paid", acct, {"invoice": 7}, idempotency_key="invoice-7-paid")
    assert third.duplicate and third.job_id == first.job_id
    wait_idle(real_redis)
    assert deliveries(sandbox, "invoice-7-paid") == 1
    assert len(records(sandbox, "invoice-7-paid")) == 1


# -- 3: transient failures and Retry-After -----------------------------------------------------------------


def test_transient_failures_are_retried_then_delivered_once(
    dispatcher: Dispatcher, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    sandbox.admin.set_faults(error_rate=1.0)
    start_worker("w1", **FAST)
    receipt = dispatcher.trigger_event("order.shipped", acct, {"order": 1})

    wait_for(lambda: len(records(sandbox, receipt.idempotency_key)) >= 2, timeout=20, what="two failed attempts")
    sandbox.admin.set_faults(error_rate=0.0)
    wait_state(real_redis, receipt, "delivered")
    wait_idle(real_redis)

    seen = records(sandbox, receipt.idempotency_key)
    assert [r["outcome"] for r in seen[:-1]] == ["fault"] * (len(seen) - 1)
    assert seen[-1]["outcome"] == "delivered"
    assert deliveries(sandbox, receipt.idempotency_key) == 1
    assert int(job_field(real_redis, receipt.job_id, "attempts") or 0) == len(seen)
    # The job-level schedule (1 s) spaced the attempts: they were retries, not a tight loop.
    times = [r["time"] for r in seen]
    assert all(later - earlier >= 0.9 for earlier, later in itertools.pairwise(times)), times


@pytest.mark.parametrize("quick_attempts", ["1", "3"])
def test_retry_after_on_429_is_honoured(
    dispatcher: Dispatcher, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker, quick_attempts: str
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    sandbox.admin.set_faults(rate_429=1.0, retry_after_429=2)
    start_worker("w1", **{**FAST, "REFOLD_QUICK_RETRY_ATTEMPTS": quick_attempts})
    receipt = dispatcher.trigger_event("user.updated", acct, {"user": 1})

    wait_for(lambda: records(sandbox, receipt.idempotency_key), timeout=20, what="the first (429) attempt")
    sandbox.admin.set_faults(rate_429=0.0)
    wait_state(real_redis, receipt, "delivered")
    wait_idle(real_redis)

    first, *rest = records(sandbox, receipt.idempotency_key)
    assert first["status"] == 429
    assert [r["outcome"] for r in rest] == ["delivered"]
    waited = rest[0]["time"] - first["time"]
    assert waited >= 2.0 - 0.05, f"the retry came {waited:.2f} s after a 429 with Retry-After: 2"
    assert deliveries(sandbox, receipt.idempotency_key) == 1


# -- 4, 5: the dead-letter queue -----------------------------------------------------------------------------


def test_unknown_event_is_dead_lettered_then_replayed_once(
    dispatcher: Dispatcher,
    dlq: DeadLetterQueue,
    real_redis: redis.Redis,
    sandbox: Any,
    start_worker: StartWorker,
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    worker = start_worker("w1", **FAST)
    receipt = dispatcher.trigger_event("report.generated", acct, {"report": 1})

    entry = dead_letter(dlq, receipt, "permanent")
    assert entry.last_error is not None
    assert entry.last_error["status_code"] == 404
    assert entry.last_error["error_code"] == "INVALID_EVENT"
    assert entry.attempts == 1  # a permanent error is not retried
    assert (entry.event, entry.linked_account_id, entry.idempotency_key) == (
        "report.generated",
        acct,
        receipt.idempotency_key,
    )
    assert len(records(sandbox, receipt.idempotency_key)) == 1
    stored_entry = real_redis.hget(f"{PREFIX}:dlq:entries", receipt.job_id)
    assert stored_entry is not None

    sandbox.admin.set_config(known_events=[*DEFAULT_KNOWN_EVENTS, "report.generated"])
    assert dlq.replay([receipt.job_id]).outcomes == {receipt.job_id: "replayed"}
    wait_state(real_redis, receipt, "delivered")
    wait_idle(real_redis)
    assert deliveries(sandbox, receipt.idempotency_key) == 1
    assert dlq.count() == 0

    # An operator replays a stale copy of the dead letter: the ledger says delivered, so nothing is sent.
    real_redis.hset(f"{PREFIX}:dlq:entries", receipt.job_id, stored_entry)
    real_redis.zadd(f"{PREFIX}:dlq", {receipt.job_id: int(time.time() * 1000)})
    sent_before = len(records(sandbox, receipt.idempotency_key))
    assert dlq.replay([receipt.job_id]).outcomes == {receipt.job_id: "delivered"}
    assert dlq.count() == 0
    assert real_redis.llen(QUEUE) == 0
    assert job_state(real_redis, receipt.job_id) == "delivered"
    wait_idle(real_redis)
    assert len(records(sandbox, receipt.idempotency_key)) == sent_before == 2
    assert_secret_absent(real_redis, dlq, worker)


def test_exhausted_schedule_dead_letters(
    dispatcher: Dispatcher, dlq: DeadLetterQueue, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    sandbox.admin.set_faults(error_rate=1.0, error_statuses=[500, 502])
    worker = start_worker("w1", **{**FAST, "REFOLD_RETRY_SCHEDULE": "[0.3,0.3]"})
    receipt = dispatcher.trigger_event("ticket.opened", acct, {"ticket": 1})

    entry = dead_letter(dlq, receipt, "exhausted")
    assert entry.attempts == 3  # the first try and one per schedule step
    assert entry.last_error is not None and entry.last_error["status_code"] in (500, 502)
    assert [h["outcome"] for h in entry.history] == ["retry", "retry", "exhausted"]
    seen = records(sandbox, receipt.idempotency_key)
    assert [r["outcome"] for r in seen] == ["fault"] * 3
    wait_idle(real_redis)
    assert_secret_absent(real_redis, dlq, worker)


def test_job_past_its_maximum_age_expires(
    dispatcher: Dispatcher, dlq: DeadLetterQueue, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    sandbox.admin.set_faults(error_rate=1.0, error_statuses=[502])
    max_age = 4.0
    schedule = [1.0] * 10
    start_worker(
        "w1", **{**FAST, "REFOLD_RETRY_SCHEDULE": json.dumps(schedule), "REFOLD_MAX_JOB_AGE_SECONDS": str(max_age)}
    )
    receipt = dispatcher.trigger_event("ticket.opened", acct, {"ticket": 2})
    created = int(job_field(real_redis, receipt.job_id, "created") or 0) / 1000

    entry = dead_letter(dlq, receipt, "expired")
    # Attempts about 1 s apart; the one that would start past the 4 s budget is never made, long before the
    # schedule's 11 attempts are spent.
    assert 2 <= entry.attempts <= 5, entry.attempts
    assert "maximum age" in entry.detail
    seen = records(sandbox, receipt.idempotency_key)
    assert len(seen) == entry.attempts
    # The last retry is due before the budget ends; the mover (0.1 s) and a publish may make it start a little late.
    assert all(r["time"] <= created + max_age + 0.5 for r in seen), [r["time"] - created for r in seen]
    assert entry.last_error is not None and entry.last_error["status_code"] == 502


# -- 6: ordering per account -------------------------------------------------------------------------------


def test_event_waits_for_the_upsert_that_creates_its_account(
    dispatcher: Dispatcher, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()  # not seeded: the sandbox rejects events for it until the upsert lands
    sandbox.admin.set_faults(error_rate=1.0)
    start_worker("w1", **FAST)
    upsert = dispatcher.upsert_linked_account(acct, name="New Co")
    event = dispatcher.trigger_event("user.signed_up", acct, {"user": 1})

    wait_for(lambda: records(sandbox, upsert.idempotency_key), timeout=20, what="the upsert's failed first try")
    wait_state(real_redis, event, "waiting")
    sandbox.admin.set_faults(error_rate=0.0)
    wait_state(real_redis, event, "delivered")
    wait_idle(real_redis)

    # The event was sent once, after the upsert had landed, and never rejected for an unknown account.
    [event_record] = records(sandbox, event.idempotency_key)
    assert event_record["outcome"] == "delivered"
    upsert_records = records(sandbox, upsert.idempotency_key)
    assert upsert_records[0]["outcome"] == "fault"
    assert event_record["seq"] > delivered_record(sandbox, upsert.idempotency_key)["seq"]
    assert sandbox.admin.requests(outcome="rejected") == []


def test_event_follows_a_dead_upsert_to_the_dlq(
    *,
    dispatcher: Dispatcher,
    dlq: DeadLetterQueue,
    real_redis: redis.Redis,
    sandbox: Any,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acct = account()
    sandbox.admin.set_faults(error_rate=1.0)
    start_worker("w1", **{**FAST, "REFOLD_RETRY_SCHEDULE": "[1]"})
    upsert = dispatcher.upsert_linked_account(acct, name="Doomed")
    parked = dispatcher.trigger_event("user.signed_up", acct, {"user": 1})
    wait_state(real_redis, parked, "waiting")

    upsert_entry = dead_letter(dlq, upsert, "exhausted")
    event_entry = dead_letter(dlq, parked, "dependency", timeout=5)
    assert upsert.job_id in event_entry.detail
    assert upsert_entry.attempts == 2
    # An event enqueued after the upsert died follows it too, without being sent.
    late = dispatcher.trigger_event("user.updated", acct, {"user": 1})
    dead_letter(dlq, late, "dependency")
    wait_idle(real_redis)
    assert records(sandbox, parked.idempotency_key) == []
    assert records(sandbox, late.idempotency_key) == []
    assert dlq.stats()["by_reason"] == {"exhausted": 1, "dependency": 2}

    # Once Refold is back, replaying the account's dead letters delivers all three, the upsert first, whatever
    # order they are named in, even when workers pick each one up before the next is replayed (a big batch).
    sandbox.admin.set_faults(error_rate=0.0)
    replay_one = dlq._replay_one

    def replay_and_let_workers_catch_up(entry: DeadLetter) -> str:
        outcome = replay_one(entry)
        wait_for(lambda: job_state(real_redis, entry.id) not in ("new", "queued"), timeout=10, what="a worker")
        return outcome

    monkeypatch.setattr(dlq, "_replay_one", replay_and_let_workers_catch_up)
    assert [entry.id for entry in dlq.list(DeadLetterFilter(account=acct), limit=None)]  # all three are listed
    outcomes = dlq.replay([parked.job_id, late.job_id, upsert.job_id]).outcomes
    assert outcomes == dict.fromkeys([parked.job_id, late.job_id, upsert.job_id], "replayed")
    for receipt in (upsert, parked, late):
        wait_state(real_redis, receipt, "delivered")
    wait_idle(real_redis)
    upsert_seq = delivered_record(sandbox, upsert.idempotency_key)["seq"]
    for receipt in (parked, late):
        [record] = records(sandbox, receipt.idempotency_key)
        assert record["outcome"] == "delivered" and record["seq"] > upsert_seq
    assert dlq.count() == 0


def test_the_last_enqueued_upsert_wins(
    dispatcher: Dispatcher, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.set_faults(error_rate=1.0)
    start_worker("w1", concurrency=4, **FAST)
    old = dispatcher.upsert_linked_account(acct, name="old", udf={"v": "1"})
    wait_for(lambda: records(sandbox, old.idempotency_key), timeout=20, what="the old upsert's failed first try")
    new = dispatcher.upsert_linked_account(acct, name="new", udf={"v": "2"})
    wait_for(lambda: records(sandbox, new.idempotency_key), timeout=20, what="the new upsert's failed first try")
    sandbox.admin.set_faults(error_rate=0.0)

    wait_state(real_redis, new, "delivered")
    wait_for(
        lambda: job_state(real_redis, old.job_id) in ("delivered", "superseded"),
        timeout=20,
        what="the old upsert to be settled",
    )
    wait_idle(real_redis)

    landed = [r for r in sandbox.admin.requests(path=ACCOUNT_PATH, outcome="delivered") if r["account_id"] == acct]
    assert landed[-1]["name"] == "new"
    assert [r["name"] for r in landed] in (["new"], ["old", "new"])
    response = httpx.get(f"{sandbox.url}{ACCOUNT_PATH}/{acct}", headers={"x-api-key": TEST_API_KEY}, timeout=5)
    response.raise_for_status()
    body = response.json()
    assert body["name"] == "new"
    assert {item["key_name"]: item["key_value"] for item in body["udf"]} == {"v": "2"}


# -- 7, 8, 10: workers and Redis dying -----------------------------------------------------------------------


def test_sigkilled_worker_job_is_delivered_once_by_another_worker(
    dispatcher: Dispatcher, dlq: DeadLetterQueue, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    # A hang is answered with a 504 and never processed, so the killed worker's request cannot land late (a
    # slow fault would be processed after the kill and count as a delivery the dead worker never recorded).
    sandbox.admin.set_faults(hang_rate=1.0, hang_seconds=60)
    env = {**FAST, **SHORT_LIMITS}
    doomed = start_worker("w1", concurrency=1, **env)
    receipt = dispatcher.trigger_event("order.created", acct, {"order": 99})
    wait_state(real_redis, receipt, "active")  # w1 holds the lease; its request hangs in the sandbox

    doomed.kill()
    killed_at = time.time()
    sandbox.admin.set_faults(hang_rate=0.0)
    rescuer = start_worker("w2", concurrency=1, **env)

    wait_state(real_redis, receipt, "delivered", timeout=60)
    delay = delivered_record(sandbox, receipt.idempotency_key)["time"] - killed_at
    print(f"\nSIGKILL -> redelivery by another worker: {delay:.1f} s")
    assert delay < 60, delay
    wait_idle(real_redis, timeout=40)  # the kombu restore of w1's unacked message comes and is skipped
    assert deliveries(sandbox, receipt.idempotency_key) == 1
    assert int(job_field(real_redis, receipt.job_id, "attempts") or 0) == 2
    assert "delivered" in rescuer.log()
    assert_secret_absent(real_redis, dlq, doomed, rescuer)


def test_killed_pool_child_job_is_delivered_once(
    dispatcher: Dispatcher, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    sandbox.admin.set_faults(hang_rate=1.0, hang_seconds=60)
    worker = start_worker("w1", concurrency=1, **{**FAST, **SHORT_LIMITS})
    [child] = wait_for(worker.children, timeout=30, what="w1's pool process")
    receipt = dispatcher.trigger_event("order.created", acct, {"order": 7})
    wait_state(real_redis, receipt, "active")

    os.kill(child, signal.SIGKILL)  # an OOM kill of the pool process: the main process lives on
    killed_at = time.time()
    sandbox.admin.set_faults(hang_rate=0.0)
    wait_state(real_redis, receipt, "delivered", timeout=60)
    delay = delivered_record(sandbox, receipt.idempotency_key)["time"] - killed_at
    print(f"\npool child SIGKILL -> redelivery: {delay:.1f} s")
    assert delay < 60, delay
    wait_idle(real_redis, timeout=40)
    assert deliveries(sandbox, receipt.idempotency_key) == 1
    assert worker.process is not None and worker.process.poll() is None


def test_soft_time_limit_reschedules_a_hung_attempt(
    dispatcher: Dispatcher, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    sandbox.admin.set_faults(hang_rate=1.0, hang_seconds=60)
    # A 3 s retry delay leaves time to lift the fault between the two attempts.
    start_worker("w1", concurrency=1, **{**FAST, **SHORT_LIMITS, "REFOLD_RETRY_SCHEDULE": "[3,3,3]"})
    receipt = dispatcher.trigger_event("order.created", acct, {"order": 8})
    # The soft time limit (5 s) interrupts the hung request; the attempt is rescheduled, not lost.
    wait_state(real_redis, receipt, "delayed", timeout=30)
    sandbox.admin.set_faults(hang_rate=0.0)
    wait_state(real_redis, receipt, "delivered", timeout=40)
    wait_idle(real_redis, timeout=40)
    assert deliveries(sandbox, receipt.idempotency_key) == 1
    assert int(job_field(real_redis, receipt.job_id, "attempts") or 0) == 2


def test_worker_consumes_again_after_redis_restarts(
    dispatcher: Dispatcher,
    real_redis: redis.Redis,
    redis_server: RedisServer,
    sandbox: Any,
    start_worker: StartWorker,
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    worker = start_worker("w1", **FAST)
    before = dispatcher.trigger_event("demo.event", acct, {"phase": "before"})
    wait_state(real_redis, before, "delivered")
    # Jobs waiting for a retry when Redis goes down are in Redis (AOF), not in the worker.
    sandbox.admin.set_faults(error_rate=1.0)
    retrying = [dispatcher.trigger_event("demo.event", acct, {"phase": "retrying", "n": n}) for n in range(3)]
    for receipt in retrying:
        wait_for(lambda r=receipt: records(sandbox, r.idempotency_key), timeout=20, what="a failed first try")

    # And one job in flight: its request is still in the sandbox when Redis goes away, its finish comes after.
    sandbox.admin.set_faults(error_rate=0.0, slow_rate=1.0, slow_seconds=3)
    in_flight = dispatcher.trigger_event("demo.event", acct, {"phase": "in flight"})
    wait_state(real_redis, in_flight, "active")

    redis_server.restart()
    sandbox.admin.set_faults(slow_rate=0.0)
    after = [dispatcher.trigger_event("demo.event", acct, {"phase": "after", "n": n}) for n in range(3)]

    for receipt in [*retrying, in_flight, *after]:
        wait_state(real_redis, receipt, "delivered", timeout=60)
    wait_idle(real_redis)
    assert worker.process is not None and worker.process.poll() is None
    stats = sandbox.admin.stats()
    assert stats["duplicates"] == []
    for receipt in [before, *retrying, in_flight, *after]:
        assert stats["delivered_by_idempotency_key"][receipt.idempotency_key] == 1


def test_warm_shutdown_finishes_or_hands_over_in_flight_work(
    dispatcher: Dispatcher, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    sandbox.admin.set_faults(slow_rate=1.0, slow_seconds=2)
    leaving = start_worker("w1", concurrency=1, **{**FAST, **SHORT_LIMITS})
    in_flight = dispatcher.trigger_event("order.created", acct, {"n": 1})
    queued = dispatcher.trigger_event("order.created", acct, {"n": 2})
    wait_state(real_redis, in_flight, "active")

    # Warm shutdown waits for the in-flight job (billiard may add up to 30 s when SIGTERM meets a finishing task).
    assert leaving.terminate(timeout=60) == 0
    sandbox.admin.set_faults(slow_rate=0.0)
    start_worker("w2", concurrency=1, **{**FAST, **SHORT_LIMITS})

    for receipt in (in_flight, queued):
        wait_state(real_redis, receipt, "delivered", timeout=40)
    wait_idle(real_redis, timeout=40)
    assert deliveries(sandbox, in_flight.idempotency_key) == 1
    assert deliveries(sandbox, queued.idempotency_key) == 1
    assert sandbox.admin.stats()["duplicates"] == []


# -- 9: garbage on the queue ---------------------------------------------------------------------------------


def test_garbage_on_the_queue_is_dead_lettered_and_consumption_continues(
    dispatcher: Dispatcher, dlq: DeadLetterQueue, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    worker = start_worker("w1", **FAST)

    def envelope(task: str, args: list[object], **changes: Any) -> str:
        message = json.loads(
            task_message(task, str(uuid.uuid4()), args, exchange="", routing_key=QUEUE, delivery_tag=str(uuid.uuid4()))
        )
        message.update(changes)
        return json.dumps(message)

    garbage: list[tuple[str, bytes | str]] = [
        ("not JSON", b"\x00\xff{{ this is not json"),
        ("JSON, not an envelope", json.dumps({"hello": "world", "n": [1, 2, 3]})),
        ("a JSON array", "[1, 2, 3]"),
        ("body not base64", envelope(TRIGGER_EVENT_TASK, [str(uuid.uuid4())], body="%%% not base64 %%%")),
        ("body not JSON", envelope(TRIGGER_EVENT_TASK, [], body=base64.b64encode(b"{not json").decode())),
        ("unknown task", envelope("refold.no_such_task", ["x"])),
        ("not a job id", envelope(TRIGGER_EVENT_TASK, ["DROP TABLE jobs"])),
        ("no args", envelope(TRIGGER_EVENT_TASK, [])),
        ("no such job", envelope(TRIGGER_EVENT_TASK, [str(uuid.uuid4())])),
    ]
    for expected_count, (_label, message) in enumerate(garbage, start=1):
        push_raw(real_redis, message)
        wait_for(lambda n=expected_count: dlq.count() >= n, timeout=20, what=f"{_label!r} to be dead-lettered")
        assert worker.process is not None and worker.process.poll() is None, worker.log()[-3000:]

    entries = dlq.list(limit=None)
    assert len(entries) == len(garbage)
    assert {entry.reason for entry in entries} == {"invalid"}
    assert all(entry.job is None for entry in entries)
    assert sum(1 for entry in entries if entry.raw) >= len(garbage) - 1  # the raw message is kept as evidence
    assert any("DROP TABLE jobs" in (entry.raw or "") for entry in entries)

    receipt = dispatcher.trigger_event("demo.event", acct, {"after": "garbage"})
    wait_state(real_redis, receipt, "delivered")
    wait_idle(real_redis)
    assert deliveries(sandbox, receipt.idempotency_key) == 1
    assert dlq.count() == len(garbage)  # nothing looped back in
    assert dlq.replay([entries[0].id]).outcomes == {entries[0].id: "invalid"}
    assert_secret_absent(real_redis, dlq, worker)


# -- 11: the API key stays secret ----------------------------------------------------------------------------


def test_api_key_is_never_logged_or_stored(
    dispatcher: Dispatcher, dlq: DeadLetterQueue, real_redis: redis.Redis, sandbox: Any, start_worker: StartWorker
) -> None:
    acct = account()
    sandbox.admin.seed_accounts([acct])
    sandbox.admin.set_faults(error_rate=0.5, rate_429=0.5, retry_after_429=1, seed=7)
    worker = start_worker("w1", **{**FAST, "REFOLD_RETRY_SCHEDULE": "[0.3,0.3]", "REFOLD_LOG_LEVEL": "DEBUG"})
    jobs = [dispatcher.trigger_event("order.created", acct, {"n": n}) for n in range(4)]
    jobs.append(dispatcher.trigger_event("no.such.event", acct, {"n": 0}))
    jobs.append(dispatcher.upsert_linked_account(acct, name="Secretive", udf={"k": "v"}))
    push_raw(real_redis, b"garbage " + TEST_API_KEY[:4].encode())

    for receipt in jobs:
        wait_for(
            lambda r=receipt: job_state(real_redis, r.job_id) in ("delivered", "dead", "superseded"),
            timeout=30,
            what=f"job {receipt.job_id} to settle",
        )
    wait_idle(real_redis)
    wait_for(lambda: dlq.count() >= 2, timeout=20, what="the dead letters")
    reasons = {entry.id: entry.reason for entry in dlq.list(limit=None)}
    # The unknown event ends dead with error evidence: its 404 (permanent), or, when the seeded faults answered
    # every attempt first, the last fault (exhausted). Either way its entry holds a last error to scan.
    assert reasons[jobs[4].job_id] in {"permanent", "exhausted"}
    assert "invalid" in reasons.values()
    assert_secret_absent(real_redis, dlq, worker)
