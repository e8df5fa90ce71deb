"""One delivery attempt, on fakeredis and httpx.MockTransport: each ending, ordering, and the ledger."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import fakeredis
import httpx
import pytest

from refold_dispatch.client import RefoldClient
from refold_dispatch.config import Settings
from refold_dispatch.delivery import Deliverer
from refold_dispatch.dispatcher import Dispatcher
from refold_dispatch.dlq import DeadLetterFilter, DeadLetterQueue
from refold_dispatch.scheduler import Mover
from refold_dispatch.scripts import ScriptContext, Scripts
from tests.conftest import make_settings
from tests.support import wait_for

Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class Refold:
    """A scripted Refold: answers from a queue of handlers (the last one repeats) and records requests."""

    handlers: list[Handler] = field(default_factory=list)
    seen: list[httpx.Request] = field(default_factory=list)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        handler = self.handlers.pop(0) if len(self.handlers) > 1 else self.handlers[0]
        return handler(request)


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"message": "Webhook Fired Success"}, headers={"x-request-id": "req_ok"})


def status(code: int, error_code: str = "X", headers: dict[str, str] | None = None) -> Handler:
    def answer(request: httpx.Request) -> httpx.Response:
        body = {"status_code": code, "error_code": error_code, "message": f"failed {code}", "request_id": "req_e"}
        return httpx.Response(code, json=body, headers=headers or {})

    return answer


@dataclass
class Harness:
    settings: Settings
    redis: fakeredis.FakeRedis
    refold: Refold
    dispatcher: Dispatcher
    deliverer: Deliverer
    dlq: DeadLetterQueue
    sleeps: list[float]

    def state(self, job_id: str) -> str:
        return str(self.redis.hget(f"refold:job:{job_id}", "state").decode())  # type: ignore[union-attr]

    def field(self, job_id: str, name: str) -> str | None:
        value = self.redis.hget(f"refold:job:{job_id}", name)
        return value.decode() if value is not None else None

    def delayed_due(self, job_id: str) -> float | None:
        return self.redis.zscore("refold:delayed", job_id)

    def make_due(self, job_id: str) -> None:
        """Pretend the job's delay has passed, then run the mover once."""
        self.redis.zadd("refold:delayed", {job_id: 0})
        Mover(self.settings, self.redis, self.deliverer.scripts, "test", canaries=False).promote_due()


def build(fake_redis: fakeredis.FakeRedis, **overrides: Any) -> Harness:
    defaults: dict[str, Any] = {"retry_schedule": (10, 60), "quick_retry_attempts": 2, "breaker_threshold": 1000}
    settings = make_settings(**{**defaults, **overrides})
    refold = Refold([ok])
    client = RefoldClient(settings, transport=httpx.MockTransport(refold))
    sleeps: list[float] = []
    scripts = Scripts(fake_redis, ScriptContext.from_settings(settings))
    deliverer = Deliverer(settings, fake_redis, client, scripts, rng=lambda: 0.5, sleep=sleeps.append)
    return Harness(
        settings,
        fake_redis,
        refold,
        Dispatcher(settings, redis_client=fake_redis),
        deliverer,
        DeadLetterQueue(settings, fake_redis, scripts),
        sleeps,
    )


@pytest.fixture
def h(fake_redis: fakeredis.FakeRedis) -> Iterator[Harness]:
    harness = build(fake_redis)
    yield harness
    harness.deliverer.client.close()


def test_delivers_once_with_the_idempotency_key_and_records_evidence(h: Harness) -> None:
    receipt = h.dispatcher.trigger_event("order.created", "acme", {"n": 1}, idempotency_key="k1")

    outcome = h.deliverer.deliver(receipt.job_id)

    assert (outcome.kind, outcome.status, outcome.request_id) == ("delivered", 200, "req_ok")
    [request] = h.refold.seen
    assert request.headers["Idempotency-Key"] == "k1"
    assert request.headers["linked_account_id"] == "acme"
    assert json.loads(request.content) == {"event": "order.created", "payload": {"n": 1}}
    assert h.state(receipt.job_id) == "delivered"
    assert h.field(receipt.job_id, "request_id") == "req_ok"
    assert h.delayed_due(receipt.job_id) is None  # the watchdog is gone
    assert h.redis.exists(f"refold:lease:{receipt.job_id}") == 0
    [entry] = [json.loads(raw) for raw in h.redis.lrange(f"refold:job:{receipt.job_id}:hist", 0, -1)]
    assert entry["outcome"] == "delivered"


def test_a_second_copy_of_a_delivered_job_is_skipped_without_a_request(h: Harness) -> None:
    receipt = h.dispatcher.trigger_event("e", "acme")
    h.deliverer.deliver(receipt.job_id)

    again = h.deliverer.deliver(receipt.job_id)

    assert (again.kind, again.reason) == ("skipped", "delivered")
    assert len(h.refold.seen) == 1


def test_transient_failure_quick_retries_then_schedules_the_next_attempt(h: Harness) -> None:
    h.refold.handlers = [status(503)]
    receipt = h.dispatcher.trigger_event("e", "acme")

    outcome = h.deliverer.deliver(receipt.job_id)

    assert outcome.kind == "deferred"
    assert len(h.refold.seen) == 2  # REFOLD_QUICK_RETRY_ATTEMPTS
    assert h.state(receipt.job_id) == "delayed"
    due = h.delayed_due(receipt.job_id)
    assert due is not None and outcome.due_at is not None
    assert due == pytest.approx(outcome.due_at * 1000, abs=1)
    assert 9.0 < outcome.due_at - h.deliverer.clock() <= 10.5  # first step of the schedule (jitter 0)
    assert json.loads(h.field(receipt.job_id, "last_error") or "{}")["status_code"] == 503


def test_retried_job_is_delivered_when_due_and_attempts_count_up(h: Harness) -> None:
    h.refold.handlers = [status(500), status(500), ok]
    receipt = h.dispatcher.trigger_event("e", "acme")
    assert h.deliverer.deliver(receipt.job_id).kind == "deferred"

    h.make_due(receipt.job_id)
    outcome = h.deliverer.deliver(receipt.job_id)

    assert (outcome.kind, outcome.attempt) == ("delivered", 2)
    assert h.redis.llen("refold") == 2  # published at enqueue, then again by the mover


def test_retry_after_longer_than_the_schedule_wins(h: Harness) -> None:
    h.refold.handlers = [status(503, headers={"Retry-After": "120"})]
    receipt = h.dispatcher.trigger_event("e", "acme")

    outcome = h.deliverer.deliver(receipt.job_id)

    assert outcome.kind == "deferred" and outcome.due_at is not None
    assert outcome.due_at - h.deliverer.clock() == pytest.approx(120, abs=1)
    assert len(h.refold.seen) == 1  # a 120 s hint does not fit the quick-retry budget


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        (status(404, "INVALID_EVENT"), "permanent"),
        (status(400), "permanent"),
        (status(401), "auth"),
        (status(403), "auth"),
    ],
)
def test_permanent_failures_go_to_the_dead_letter_queue_with_evidence(
    h: Harness, handler: Handler, reason: str
) -> None:
    h.refold.handlers = [handler]
    receipt = h.dispatcher.trigger_event("e", "acme", {"keep": "me"}, idempotency_key="dead-1")

    outcome = h.deliverer.deliver(receipt.job_id)

    assert (outcome.kind, outcome.reason) == ("dead", reason)
    assert len(h.refold.seen) == 1  # never retried
    entry = h.dlq.get(receipt.job_id)
    assert entry.reason == reason
    assert entry.idempotency_key == "dead-1"
    assert entry.job is not None and entry.job["params"]["payload"] == {"keep": "me"}
    assert entry.last_error is not None and entry.last_error["request_id"] == "req_e"
    assert entry.attempts == 1
    assert [step["outcome"] for step in entry.history] == [reason]
    assert h.state(receipt.job_id) == "dead"


def test_schedule_exhausted_dead_letters_as_exhausted(h: Harness) -> None:
    h.refold.handlers = [status(500)]
    receipt = h.dispatcher.trigger_event("e", "acme")
    for _ in range(2):  # the schedule has two steps
        assert h.deliverer.deliver(receipt.job_id).kind == "deferred"
        h.make_due(receipt.job_id)

    outcome = h.deliverer.deliver(receipt.job_id)

    assert (outcome.kind, outcome.reason) == ("dead", "exhausted")
    assert h.dlq.get(receipt.job_id).attempts == 3


def test_a_job_past_its_age_budget_expires(fake_redis: fakeredis.FakeRedis) -> None:
    h = build(fake_redis, max_job_age_seconds=5)
    h.refold.handlers = [status(500)]
    receipt = h.dispatcher.trigger_event("e", "acme")

    outcome = h.deliverer.deliver(receipt.job_id)

    assert (outcome.kind, outcome.reason) == ("dead", "expired")


def test_replay_resends_with_the_same_key_and_never_twice(h: Harness) -> None:
    h.refold.handlers = [status(404)]
    receipt = h.dispatcher.trigger_event("e", "acme", idempotency_key="replay-me")
    h.deliverer.deliver(receipt.job_id)
    h.refold.handlers = [ok]

    result = h.dlq.replay([receipt.job_id])
    assert result.outcomes == {receipt.job_id: "replayed"}
    assert h.deliverer.deliver(receipt.job_id).kind == "delivered"
    assert h.refold.seen[-1].headers["Idempotency-Key"] == "replay-me"
    assert h.dlq.count() == 0
    assert h.redis.hget(f"refold:job:{receipt.job_id}", "attempts") == b"1"  # attempts were reset

    assert h.dlq.replay([receipt.job_id]).outcomes == {receipt.job_id: "not_found"}


def test_dlq_filters_stats_and_purge(h: Harness) -> None:
    h.refold.handlers = [status(404)]
    for event in ("a", "a", "b"):
        h.deliverer.deliver(h.dispatcher.trigger_event(event, "acme").job_id)

    assert [e.event for e in h.dlq.list(DeadLetterFilter(event="a"))] == ["a", "a"]
    assert h.dlq.stats()["by_reason"] == {"permanent": 3}
    assert h.dlq.purge(where=DeadLetterFilter(event="b")) == 1
    assert h.dlq.count() == 2


def test_upsert_superseded_by_a_newer_delivered_upsert_is_not_sent(h: Harness) -> None:
    h.refold.handlers = [status(500), status(500), ok]
    older = h.dispatcher.upsert_linked_account("acme", name="old")
    newer = h.dispatcher.upsert_linked_account("acme", name="new")
    assert h.deliverer.deliver(older.job_id).kind == "deferred"  # fails, retries later
    assert h.deliverer.deliver(newer.job_id).kind == "delivered"

    h.make_due(older.job_id)
    outcome = h.deliverer.deliver(older.job_id)

    assert (outcome.kind, outcome.reason) == ("skipped", "superseded")
    sent_names = [json.loads(r.content)["name"] for r in h.refold.seen if r.method == "PUT"]
    assert sent_names[-1] == "new"


def test_two_upserts_of_one_account_never_run_at_once(h: Harness) -> None:
    first = h.dispatcher.upsert_linked_account("acme", name="one")
    second = h.dispatcher.upsert_linked_account("acme", name="two")
    h.redis.set("refold:acct:acme:lock", first.job_id)  # the first is in flight on another worker

    outcome = h.deliverer.deliver(second.job_id)

    assert outcome.kind == "deferred"
    assert h.refold.seen == []
    assert h.state(second.job_id) == "delayed"
    assert (h.field(second.job_id, "attempts") or "0") == "0"  # waiting spends no attempt (absent reads as 0)


def test_event_waits_for_its_accounts_upsert_then_goes(h: Harness) -> None:
    upsert = h.dispatcher.upsert_linked_account("acme", name="Acme")
    event = h.dispatcher.trigger_event("e", "acme")

    parked = h.deliverer.deliver(event.job_id)
    assert parked.kind == "deferred" and "waiting for upsert" in parked.reason
    assert h.state(event.job_id) == "waiting"
    assert h.refold.seen == []

    h.deliverer.deliver(upsert.job_id)
    assert h.state(event.job_id) == "queued"  # released by the upsert's delivery
    assert h.deliverer.deliver(event.job_id).kind == "delivered"
    assert [r.method for r in h.refold.seen] == ["PUT", "POST"]
    assert h.field(event.job_id, "attempts") == "1"


def test_event_follows_a_dead_upsert_to_the_dead_letter_queue(h: Harness) -> None:
    upsert = h.dispatcher.upsert_linked_account("acme", name="Acme")
    event = h.dispatcher.trigger_event("e", "acme")
    h.deliverer.deliver(event.job_id)  # parks
    h.refold.handlers = [status(400)]

    h.deliverer.deliver(upsert.job_id)

    entry = h.dlq.get(event.job_id)
    assert entry.reason == "dependency"
    assert upsert.job_id in entry.detail
    assert h.state(event.job_id) == "dead"


def test_a_job_leased_by_another_worker_is_deferred_not_dropped(h: Harness) -> None:
    receipt = h.dispatcher.trigger_event("e", "acme")
    h.redis.set(f"refold:lease:{receipt.job_id}", "someone-else", px=30_000)

    outcome = h.deliverer.deliver(receipt.job_id)

    assert outcome.kind == "deferred" and outcome.reason == "leased by another worker"
    assert h.delayed_due(receipt.job_id) is not None  # comes back if the holder dies
    assert h.refold.seen == []


def test_a_killed_attempt_leaves_a_watchdog_that_brings_the_job_back(h: Harness) -> None:
    receipt = h.dispatcher.trigger_event("e", "acme")
    h.deliverer.scripts.run("begin", [receipt.job_id, "dead-worker", 5000, 1000])  # then the worker "dies"
    assert h.delayed_due(receipt.job_id) is not None
    h.redis.delete(f"refold:lease:{receipt.job_id}")  # the lease expires

    h.make_due(receipt.job_id)

    assert h.deliverer.deliver(receipt.job_id).kind == "delivered"


def test_unknown_job_id_is_dead_lettered_as_invalid(h: Harness) -> None:
    outcome = h.deliverer.deliver("00000000-0000-4000-8000-000000000000")
    assert (outcome.kind, outcome.reason) == ("dead", "invalid")
    assert h.dlq.get("00000000-0000-4000-8000-000000000000").reason == "invalid"


def test_rate_limit_hold_defers_without_spending_an_attempt(fake_redis: fakeredis.FakeRedis) -> None:
    h = build(fake_redis, rate_limit=1, rate_burst=1, rate_max_wait_seconds=0)
    first = h.dispatcher.trigger_event("e", "a")
    second = h.dispatcher.trigger_event("e", "b")

    assert h.deliverer.deliver(first.job_id).kind == "delivered"
    outcome = h.deliverer.deliver(second.job_id)

    assert outcome.kind == "deferred" and outcome.reason == "rate limit"
    assert (h.field(second.job_id, "attempts") or "0") == "0"
    assert len(h.refold.seen) == 1


def test_429_pauses_every_worker(fake_redis: fakeredis.FakeRedis) -> None:
    h = build(fake_redis, quick_retry_attempts=1)
    h.refold.handlers = [status(429, "RATE_LIMITED", {"Retry-After": "30"}), ok]
    first = h.dispatcher.trigger_event("e", "a")
    second = h.dispatcher.trigger_event("e", "b")

    assert h.deliverer.deliver(first.job_id).kind == "deferred"
    outcome = h.deliverer.deliver(second.job_id)

    assert outcome.reason == "Refold asked everyone to back off"
    assert len(h.refold.seen) == 1  # the second job never reached Refold
    assert float(h.field(second.job_id, "credit") or 0) > 25_000  # the pause does not age the job


def test_open_breaker_holds_jobs_without_spending_attempts(fake_redis: fakeredis.FakeRedis) -> None:
    h = build(fake_redis, breaker_threshold=2, quick_retry_attempts=2)
    h.refold.handlers = [status(502)]
    first = h.dispatcher.trigger_event("e", "a")
    second = h.dispatcher.trigger_event("e", "b")

    assert h.deliverer.deliver(first.job_id).kind == "deferred"  # two failures: the breaker opens
    outcome = h.deliverer.deliver(second.job_id)

    assert outcome.reason == "circuit open"
    assert (h.field(second.job_id, "attempts") or "0") == "0"
    assert h.deliverer.flow.snapshot()["state"] == "open"


def test_a_successful_delivery_takes_two_script_calls(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    receipt = h.dispatcher.trigger_event("e", "acme")
    calls: list[str] = []
    run = h.deliverer.scripts.run

    def counting(name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        return run(name, *args, **kwargs)

    monkeypatch.setattr(h.deliverer.scripts, "run", counting)
    assert h.deliverer.deliver(receipt.job_id).kind == "delivered"
    assert calls == ["begin", "finish"]  # the permit rides on begin, the success report on finish
    assert h.deliverer.flow.snapshot()["last_ok"]  # and flow control heard about the success


def test_after_the_cool_down_begin_sends_the_breakers_probe(fake_redis: fakeredis.FakeRedis) -> None:
    h = build(fake_redis, breaker_threshold=1, quick_retry_attempts=1, breaker_cooldown_seconds=0.001)
    h.refold.handlers = [status(502), ok]
    first = h.dispatcher.trigger_event("e", "a")
    assert h.deliverer.deliver(first.job_id).kind == "deferred"  # the breaker opens for 1 ms
    assert h.deliverer.flow.snapshot()["state"] == "open"
    second = h.dispatcher.trigger_event("e", "b")
    wait_for(lambda: int(h.deliverer.flow.snapshot()["open_until"]) < time.time() * 1000, timeout=2, what="cool-down")

    outcome = h.deliverer.deliver(second.job_id)  # the probe, folded into begin

    assert outcome.kind == "delivered"
    assert h.deliverer.flow.snapshot()["state"] == "closed"


def test_a_hold_at_begin_comes_back_soon_after_the_hold_ends(fake_redis: fakeredis.FakeRedis) -> None:
    h = build(fake_redis, rate_limit=1, rate_burst=1, rate_max_wait_seconds=0)
    h.deliverer.deliver(h.dispatcher.trigger_event("e", "a").job_id)
    outcome = h.deliverer.deliver(h.dispatcher.trigger_event("e", "b").job_id)

    assert outcome.kind == "deferred" and outcome.due_at is not None
    assert outcome.due_at - time.time() < 1.0 + 0.25 + 0.1  # the slot (1 s at 1/s) plus at most the spread
