"""The enqueue API on fakeredis: validation before I/O, one atomic claim, duplicates, conflicts, Redis down."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import fakeredis
import pytest
import redis

from refold_dispatch import jobs
from refold_dispatch.dispatcher import ENQUEUE_BATCH, AsyncDispatcher, Dispatcher
from refold_dispatch.errors import EnqueueError, IdempotencyConflictError, PartialEnqueueError, ValidationError
from refold_dispatch.message import TRIGGER_EVENT_TASK, UPSERT_LINKED_ACCOUNT_TASK
from refold_dispatch.scripts import STREAM_WINDOW, ScriptContext, Scripts
from tests.conftest import make_settings
from tests.support import TEST_API_KEY


@pytest.fixture
def dispatcher(fake_redis: fakeredis.FakeRedis) -> Dispatcher:
    return Dispatcher(make_settings(), redis_client=fake_redis)


def queued_messages(client: fakeredis.FakeRedis, queue: str = "refold") -> list[dict[str, object]]:
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def test_trigger_event_stores_job_and_publishes_celery_message(
    dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis
) -> None:
    receipt = dispatcher.trigger_event("order.created", "acme", {"secret_field": 1}, idempotency_key="key-1")

    assert receipt.idempotency_key == "key-1"
    assert receipt.duplicate is False
    [message] = queued_messages(fake_redis)
    headers = message["headers"]
    assert isinstance(headers, dict)
    assert headers["task"] == TRIGGER_EVENT_TASK
    assert headers["id"] == receipt.job_id
    body = json.loads(base64.b64decode(str(message["body"])))
    assert body[0] == [receipt.job_id]  # the message carries the job id only
    assert "secret_field" not in headers["kwargsrepr"]  # Flower sees the payload size, not the payload
    assert "payload_bytes" in headers["kwargsrepr"]
    record = fake_redis.hgetall(f"refold:job:{receipt.job_id}")
    assert record[b"state"] == b"queued"
    assert json.loads(record[b"data"])["params"]["payload"] == {"secret_field": 1}
    assert fake_redis.get("refold:idem:key-1") == receipt.job_id.encode()
    assert fake_redis.ttl("refold:idem:key-1") > 0
    assert fake_redis.ttl(f"refold:job:{receipt.job_id}") > 0


def test_upsert_uses_its_own_task(dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis) -> None:
    receipt = dispatcher.upsert_linked_account("acme", name="Acme", udf={"plan": "pro", "seats": 3})

    [message] = queued_messages(fake_redis)
    assert message["headers"]["task"] == UPSERT_LINKED_ACCOUNT_TASK  # type: ignore[index]
    data = json.loads(fake_redis.hget(f"refold:job:{receipt.job_id}", "data"))  # type: ignore[arg-type]
    assert data["params"]["udf"] == {"plan": "pro", "seats": "3"}


def test_same_key_same_job_is_a_duplicate_and_enqueues_nothing(
    dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis
) -> None:
    first = dispatcher.trigger_event("order.created", "acme", {"n": 1}, idempotency_key="k")
    second = dispatcher.trigger_event("order.created", "acme", {"n": 1}, idempotency_key="k")

    assert second.duplicate is True
    assert second.job_id == first.job_id
    assert fake_redis.llen("refold") == 1


def test_same_key_different_job_is_a_conflict(dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis) -> None:
    first = dispatcher.trigger_event("order.created", "acme", {"n": 1}, idempotency_key="k")

    with pytest.raises(IdempotencyConflictError) as caught:
        dispatcher.trigger_event("order.created", "acme", {"n": 2}, idempotency_key="k")

    assert caught.value.existing_job_id == first.job_id
    assert fake_redis.llen("refold") == 1


def test_minted_keys_are_unique(dispatcher: Dispatcher) -> None:
    keys = {dispatcher.trigger_event("order.created", "acme").idempotency_key for _ in range(20)}
    assert len(keys) == 20


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda d: d.trigger_event("", "acme"), "event"),
        (lambda d: d.trigger_event("order.created", " acme"), "whitespace"),
        (lambda d: d.trigger_event("order.created", "acme", payload=[1, 2]), "JSON object"),
        (lambda d: d.trigger_event("order.created", "acme", payload={"x": float("nan")}), "JSON"),
        (lambda d: d.trigger_event("order.created", "acme", payload={"x": object()}), "not JSON"),
        (lambda d: d.trigger_event("order.created", "acme", payload={"big": "x" * 300_000}), "limit"),
        (lambda d: d.upsert_linked_account("acme", udf={"a": {"nested": 1}}), "udf"),
        (lambda d: d.upsert_linked_account("acme", your_app={}), "your_app"),
        (lambda d: d.trigger_event("order.created", "acme", idempotency_key="bad\nkey"), "control character"),
    ],
)
def test_invalid_input_raises_and_touches_nothing(
    dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis, call: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        call(dispatcher)  # type: ignore[operator]
    assert fake_redis.keys("*") == []


def test_payload_limit_is_configurable(fake_redis: fakeredis.FakeRedis) -> None:
    dispatcher = Dispatcher(make_settings(max_payload_bytes=64), redis_client=fake_redis)
    dispatcher.trigger_event("e", "acme", {"x": "y" * 10})
    with pytest.raises(ValidationError, match="limit is 64"):
        dispatcher.trigger_event("e", "acme", {"x": "y" * 100})


def test_unreachable_redis_fails_fast_with_a_clear_error() -> None:
    settings = make_settings(redis_url="redis://127.0.0.1:1/0", redis_socket_timeout=0.5, redis_connect_timeout=0.5)
    dispatcher = Dispatcher(settings)
    started = time.monotonic()
    with pytest.raises(EnqueueError, match=r"127\.0\.0\.1:1/0.*nothing was enqueued") as caught:
        dispatcher.trigger_event("order.created", "acme", idempotency_key="retry-me")
    assert caught.value.idempotency_keys == ["retry-me"]
    assert time.monotonic() - started < 5  # bounded: a generous ceiling, not a benchmark
    dispatcher.close()


def test_enqueue_error_hides_the_redis_password() -> None:
    settings = make_settings(redis_url="redis://:hunter2@127.0.0.1:1/0", redis_connect_timeout=0.2)
    with Dispatcher(settings) as dispatcher, pytest.raises(EnqueueError) as caught:
        dispatcher.trigger_event("order.created", "acme")
    assert "hunter2" not in str(caught.value)


def test_enqueue_many_is_one_batch_with_per_job_dedupe(dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis) -> None:
    batch = [dispatcher.event_job("order.created", f"acct-{n % 3}", {"n": n}) for n in range(10)]
    batch.append(batch[0])  # the same job twice in one batch

    receipts = dispatcher.enqueue_many(batch)

    assert [r.duplicate for r in receipts] == [False] * 10 + [True]
    assert receipts[-1].job_id == receipts[0].job_id
    assert fake_redis.llen("refold") == 10
    assert dispatcher.enqueue_many([]) == []


def test_event_after_upsert_records_its_dependency(dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis) -> None:
    before = dispatcher.trigger_event("e", "acme")
    upsert = dispatcher.upsert_linked_account("acme", name="Acme")
    after = dispatcher.trigger_event("e", "acme")

    assert fake_redis.hget(f"refold:job:{before.job_id}", "after") is None
    assert fake_redis.hget(f"refold:job:{after.job_id}", "after_job") == upsert.job_id.encode()
    assert fake_redis.hget(f"refold:job:{upsert.job_id}", "seq") == b"1"


def test_fair_share_holds_a_noisy_account_back(fake_redis: fakeredis.FakeRedis) -> None:
    dispatcher = Dispatcher(make_settings(account_queue_share=3), redis_client=fake_redis)
    for n in range(10):
        dispatcher.trigger_event("e", "noisy", {"n": n})
    quiet = dispatcher.trigger_event("e", "quiet")

    assert fake_redis.llen("refold") == 4  # three of the noisy account, then the quiet one
    assert fake_redis.llen("refold:acct:noisy:backlog") == 7
    newest = json.loads(fake_redis.lindex("refold", 0))  # type: ignore[arg-type]
    assert newest["headers"]["id"] == quiet.job_id


def test_messages_and_records_never_hold_the_api_key(dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis) -> None:
    dispatcher.trigger_event("order.created", "acme", {"n": 1})
    dispatcher.upsert_linked_account("acme", name="x")
    for key in fake_redis.keys("*"):
        dump = repr(fake_redis.dump(key))
        assert TEST_API_KEY not in dump


def test_jobs_round_trip_through_json() -> None:
    job = jobs.trigger_event_job("e", "acme", {"a": [1, 2]}, config_id="c1", slug="s")
    assert jobs.Job.from_json(job.to_json()) == job
    assert job.fingerprint() == jobs.Job.from_json(job.to_json()).fingerprint()
    with pytest.raises(ValidationError):
        jobs.Job.from_json("{}")


async def test_async_dispatcher_shares_the_same_guarantees(redis_server: object) -> None:
    fake = fakeredis.FakeAsyncRedis()
    async with AsyncDispatcher(make_settings(), redis_client=fake) as dispatcher:
        first = await dispatcher.trigger_event("order.created", "acme", {"n": 1}, idempotency_key="k")
        again = await dispatcher.trigger_event("order.created", "acme", {"n": 1}, idempotency_key="k")
        with pytest.raises(IdempotencyConflictError):
            await dispatcher.trigger_event("order.created", "acme", {"n": 2}, idempotency_key="k")
        batch = await dispatcher.enqueue_many([dispatcher.account_job("acme"), dispatcher.event_job("e", "acme")])
    assert again.duplicate and again.job_id == first.job_id
    assert [r.duplicate for r in batch] == [False, False]
    assert await fake.llen("refold") == 3
    await fake.aclose()


def test_redis_errors_other_than_connection_are_enqueue_errors(real_redis: redis.Redis) -> None:
    with Dispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        dispatcher.trigger_event("e", "warm")  # the script is loaded and the connection pooled
        real_redis.config_set("maxmemory", 1)  # noeviction: every write is refused with OOM
        try:
            with pytest.raises(EnqueueError, match=r"OutOfMemoryError.*enqueue it again with the same idempotency key"):
                dispatcher.trigger_event("e", "acme")
        finally:
            real_redis.config_set("maxmemory", 0)
        # The error reply was read: the pooled connection is still in step for the next enqueue.
        receipt = dispatcher.trigger_event("e", "acme")
    assert real_redis.llen("refold") == 2 and not receipt.duplicate


def test_enqueue_announces_the_job_to_flower_once(real_redis: redis.Redis, redis_server: object) -> None:
    url = f"redis://127.0.0.1:{real_redis.connection_pool.connection_kwargs['port']}/0"
    subscriber = real_redis.pubsub()
    subscriber.subscribe("/0.celeryev/task.multi")
    subscriber.get_message(timeout=1)  # the subscribe confirmation
    with Dispatcher(make_settings(redis_url=url)) as dispatcher:
        receipt = dispatcher.trigger_event("order.created", "acme", {"secret_field": 1}, idempotency_key="k")
        dispatcher.trigger_event("order.created", "acme", {"secret_field": 1}, idempotency_key="k")  # duplicate

    message = subscriber.get_message(timeout=2)
    assert message is not None
    envelope = json.loads(message["data"])
    assert envelope["properties"]["delivery_info"] == {"exchange": "celeryev", "routing_key": "task.multi"}
    [event] = json.loads(envelope["body"])
    assert (event["type"], event["uuid"], event["queue"]) == ("task-sent", receipt.job_id, "refold")
    assert "secret_field" not in event["kwargs"]
    assert subscriber.get_message(timeout=0.5) is None  # the duplicate announced nothing
    subscriber.close()


@pytest.mark.parametrize(
    "account", ["acme", 'we"ird\\\\acct', "@refold-kwargs@", "00000000-0000-4000-8000-0000000000ff"]
)
def test_message_templates_equal_the_reference_builders(account: str) -> None:
    from refold_dispatch import message

    for job in (
        jobs.trigger_event_job("order.created", account, {"a": [1, "x"]}),
        jobs.upsert_linked_account_job(account, name="n", udf={"k": "v"}),
    ):
        described = repr(message.describe(job))
        reference = message.task_message(
            message.TASK_FOR_KIND[job.kind], job.id, [job.id], exchange="", routing_key="refold",
            kwargs_repr=described, delivery_tag=f"{job.id}.1",
        )  # fmt: skip
        assert message.build_message(job, "refold") == reference
        event = message.sent_event(job, "refold", described, timestamp_ms=1795983418072)
        assert event == message.sent_event_reference(job, "refold", described, timestamp=1795983418.072)


def test_the_script_fills_the_templates_into_exactly_the_reference_message_and_event(
    real_redis: redis.Redis,
) -> None:
    """What enqueue.lua pushes and publishes, byte for byte, and what a later publish (lib.lua) pushes."""
    from refold_dispatch import message

    subscriber = real_redis.pubsub()
    subscriber.subscribe("/0.celeryev/task.multi")
    subscriber.get_message(timeout=1)
    with Dispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        event_job = dispatcher.event_job("order.created", 'a"c\\me/1', {"n": 1})
        upsert_job = dispatcher.account_job("acme", name="Acme")
        dispatcher.enqueue_many([event_job, upsert_job])
    pushed = [raw.decode() for raw in reversed(real_redis.lrange("refold", 0, -1))]
    for job, text in zip((event_job, upsert_job), pushed, strict=True):
        tag = json.loads(text)["properties"]["delivery_tag"]  # id, publish count, publish time (ms)
        assert tag.startswith(f"{job.id}.1.")
        assert text == message.build_message(job, "refold").replace(f'"{job.id}.1"', f'"{tag}"')

    published = subscriber.get_message(timeout=2)
    assert published is not None
    events = json.loads(json.loads(published["data"])["body"])
    for job, event in zip((event_job, upsert_job), events, strict=True):
        expected = json.loads(
            message.sent_event_reference(job, "refold", repr(message.describe(job)), timestamp=event["timestamp"])
        )
        assert event == expected
    # Byte for byte too: the script escapes nothing itself but the description (pieces come escaped).
    references = [
        message.sent_event(job, "refold", repr(message.describe(job)), timestamp_ms=round(event["timestamp"] * 1000))
        for job, event in zip((event_job, upsert_job), events, strict=True)
    ]
    assert published["data"].decode() == message.sent_events_reference(references)
    subscriber.close()

    # A later publish (a retry, a backlog) fills the stored template with the job's stored values.
    scripts = Scripts(real_redis, ScriptContext.from_settings(make_settings()))
    real_redis.delete("refold")
    real_redis.hset(f"refold:job:{event_job.id}", "state", "delayed")
    real_redis.zadd("refold:delayed", {event_job.id: 0})
    assert scripts.run("promote", [10]) == 1
    [republished] = real_redis.lrange("refold", 0, -1)
    tag = json.loads(republished)["properties"]["delivery_tag"]
    assert tag.startswith(f"{event_job.id}.2.")
    assert republished.decode() == message.build_message(event_job, "refold").replace(f'"{event_job.id}.1"', f'"{tag}"')


def test_a_wiped_template_defers_publishing_until_the_mover_restores_it(real_redis: redis.Redis) -> None:
    from refold_dispatch.message import TEMPLATE_KINDS, message_templates

    with Dispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        receipt = dispatcher.trigger_event("order.created", "acme", {"n": 1})
    scripts = Scripts(real_redis, ScriptContext.from_settings(make_settings()))
    real_redis.delete("refold", "refold:tpl:v2:refold:event")
    real_redis.hset(f"refold:job:{receipt.job_id}", "state", "delayed")
    real_redis.zadd("refold:delayed", {receipt.job_id: 0})

    assert scripts.run("promote", [10]) == 1  # admitted, but there is no template to fill
    assert real_redis.llen("refold") == 0
    assert real_redis.hget(f"refold:job:{receipt.job_id}", "defer_reason") == b"template"
    assert real_redis.zscore("refold:delayed", receipt.job_id) is not None  # nothing lost: it comes back

    templates = [message_templates("refold")[kind] for kind in TEMPLATE_KINDS]
    real_redis.zadd("refold:delayed", {receipt.job_id: 0})
    scripts.run("promote", [10, *templates])  # the mover's call restores the template first
    assert real_redis.llen("refold") == 1


def _real_url(client: redis.Redis) -> str:
    return f"redis://127.0.0.1:{client.connection_pool.connection_kwargs['port']}/0"


def test_enqueue_many_streams_several_script_calls_with_dedupe_across_them(real_redis: redis.Redis) -> None:
    with Dispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        early = dispatcher.event_job("order.created", "acct-early", {"n": -1}, idempotency_key="early")
        dispatcher.enqueue(early)
        batch = [dispatcher.event_job("order.created", f"acct-{n}", {"n": n}) for n in range(2 * ENQUEUE_BATCH + 7)]
        batch.insert(ENQUEUE_BATCH + 3, batch[1])  # repeated in a later script call of the same stream
        batch.append(early)  # enqueued before the stream
        conflicting = dispatcher.event_job("order.created", "acct-early", {"n": -2}, idempotency_key="early")
        batch.insert(5, conflicting)

        with pytest.raises(IdempotencyConflictError) as caught:
            dispatcher.enqueue_many(batch)
        assert caught.value.existing_job_id == early.id
        # Every other job was stored once, in order, despite the conflict in the first script call.
        receipts = dispatcher.enqueue_many([job for job in batch if job is not conflicting])

    assert all(r.duplicate for r in receipts)
    assert [r.job_id for r in receipts] == [job.id for job in batch if job is not conflicting]
    assert real_redis.llen("refold") == 1 + 2 * ENQUEUE_BATCH + 7


def test_enqueue_many_reloads_the_script_after_redis_forgets_it(real_redis: redis.Redis) -> None:
    with Dispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        dispatcher.enqueue_many([dispatcher.event_job("e", f"a{n}") for n in range(3)])
        real_redis.script_flush()  # what a Redis restart does to the script cache
        receipts = dispatcher.enqueue_many([dispatcher.event_job("e", f"b{n}") for n in range(120)])
    assert not any(r.duplicate for r in receipts)
    assert real_redis.llen("refold") == 123


def test_enqueue_many_error_reply_is_an_enqueue_error_and_the_connection_stays_usable(
    real_redis: redis.Redis,
) -> None:
    with Dispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        real_redis.config_set("maxmemory", 1)  # noeviction: every write is refused with OOM
        try:
            with pytest.raises(EnqueueError, match=r"OutOfMemoryError.*same idempotency key") as caught:
                dispatcher.enqueue_many([dispatcher.event_job("e", f"a{n}") for n in range(120)])
        finally:
            real_redis.config_set("maxmemory", 0)
        assert len(caught.value.idempotency_keys) == 120
        receipts = dispatcher.enqueue_many([dispatcher.event_job("e", f"b{n}") for n in range(120)])
    assert len(receipts) == 120 and real_redis.llen("refold") == 120


async def test_async_enqueue_many_streams_on_a_real_redis(real_redis: redis.Redis) -> None:
    async with AsyncDispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        batch = [dispatcher.event_job("e", f"a{n}", {"n": n}) for n in range(130)]
        first = await dispatcher.enqueue_many(batch)
        real_redis.script_flush()
        again = await dispatcher.enqueue_many(batch)
    assert not any(r.duplicate for r in first) and all(r.duplicate for r in again)
    assert [r.job_id for r in again] == [job.id for job in batch]
    assert real_redis.llen("refold") == 130


def _rows_with_a_bad_one(dispatcher: Dispatcher | AsyncDispatcher, count: int, bad_at: int) -> Iterator[jobs.Job]:
    """What a backfill passes: jobs built from rows as they are taken; row ``bad_at`` does not validate."""
    for n in range(count):
        account = "" if n == bad_at else f"acct-{n}"
        yield dispatcher.event_job("order.created", account, {"n": n})


def test_enqueue_many_takes_a_generator_and_a_bad_row_stops_it_with_everything_before_stored(
    real_redis: redis.Redis,
) -> None:
    bad_at = 2 * ENQUEUE_BATCH + 5  # in the third script call of the stream
    with (
        Dispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher,
        pytest.raises(PartialEnqueueError, match=rf"stopped at item {bad_at}: ValidationError") as caught,
    ):
        dispatcher.enqueue_many(_rows_with_a_bad_one(dispatcher, 4 * ENQUEUE_BATCH, bad_at))

    error = caught.value
    assert error.position == bad_at and isinstance(error.__cause__, ValidationError)
    assert len(error.receipts) == bad_at and not any(r.duplicate for r in error.receipts)
    # Exactly the rows before the bad one are stored and queued, in order; nothing after it was taken.
    queued = [json.loads(raw)["headers"]["id"] for raw in reversed(real_redis.lrange("refold", 0, -1))]
    assert queued == [r.job_id for r in error.receipts]


async def test_async_enqueue_many_stops_at_a_bad_row_the_same_way(real_redis: redis.Redis) -> None:
    async with AsyncDispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        with pytest.raises(PartialEnqueueError) as caught:
            await dispatcher.enqueue_many(_rows_with_a_bad_one(dispatcher, 2 * ENQUEUE_BATCH, ENQUEUE_BATCH + 1))
    assert len(caught.value.receipts) == ENQUEUE_BATCH + 1
    assert real_redis.llen("refold") == ENQUEUE_BATCH + 1


def test_enqueue_many_checks_a_whole_list_before_touching_redis(
    dispatcher: Dispatcher, fake_redis: fakeredis.FakeRedis
) -> None:
    batch: list[object] = [dispatcher.event_job("e", f"a{n}") for n in range(3)]
    batch.append({"event": "e", "linked_account_id": "a"})  # a row, not a built job
    with pytest.raises(TypeError, match="not dict"):
        dispatcher.enqueue_many(batch)  # type: ignore[arg-type]
    assert fake_redis.llen("refold") == 0

    with pytest.raises(PartialEnqueueError, match="TypeError") as caught:
        dispatcher.enqueue_many(job for job in batch)  # type: ignore[misc]
    assert caught.value.position == 3 and len(caught.value.receipts) == 3
    assert fake_redis.llen("refold") == 3


def test_enqueue_many_streams_more_calls_than_its_window_in_order(real_redis: redis.Redis) -> None:
    count = ENQUEUE_BATCH * (STREAM_WINDOW + 3) + 1
    with Dispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        batch = [dispatcher.event_job("e", f"a{n}") for n in range(count)]
        receipts = dispatcher.enqueue_many(iter(batch))
    assert [r.job_id for r in receipts] == [job.id for job in batch]
    assert real_redis.llen("refold") == count


def test_enqueue_many_sends_unanswered_calls_again_after_the_connection_drops(real_redis: redis.Redis) -> None:
    count = ENQUEUE_BATCH * (STREAM_WINDOW + 3)
    with Dispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        batch = [dispatcher.event_job("e", f"a{n}") for n in range(count)]

        def rows() -> Iterator[jobs.Job]:
            for n, job in enumerate(batch):
                if n == count // 2:  # mid-stream, with script calls sent and not yet answered
                    killed = real_redis.client_kill_filter(_type="normal", skipme=True)
                    assert killed >= 1
                yield job

        receipts = dispatcher.enqueue_many(rows())
    # Every job stored once, whichever calls ran before the drop (those answer duplicate=True when sent again).
    assert [r.job_id for r in receipts] == [job.id for job in batch]
    assert real_redis.llen("refold") == count
    assert len(set(real_redis.lrange("refold", 0, -1))) == count


def test_a_pause_in_the_stream_longer_than_the_health_check_interval_keeps_replies_in_step(
    real_redis: redis.Redis,
) -> None:
    """redis-py's health check would PING before a send and read a script's reply as the PONG."""
    settings = make_settings(redis_url=_real_url(real_redis))
    client = redis.Redis.from_url(settings.redis_url, health_check_interval=1)
    count = 4 * ENQUEUE_BATCH
    with Dispatcher(settings, redis_client=client) as dispatcher:
        batch = [dispatcher.event_job("e", f"a{n}") for n in range(count)]

        def rows() -> Iterator[jobs.Job]:
            for n, job in enumerate(batch):
                if n == 2 * ENQUEUE_BATCH + 1:  # two calls sent, none answered: a slow page of rows
                    time.sleep(1.2)  # the condition is time itself: past the client's health-check interval
                yield job

        receipts = dispatcher.enqueue_many(rows())
    client.close()
    assert [r.job_id for r in receipts] == [job.id for job in batch]
    assert not any(r.duplicate for r in receipts)
    assert real_redis.llen("refold") == count


def test_run_many_answers_every_sent_call_then_raises_what_the_calls_raised(real_redis: redis.Redis) -> None:
    """Even an error type redis-py retries (socket timeouts) is the caller's, not a dropped connection: it must
    not be swallowed by a retry that finds the calls exhausted and returns the replies cut short."""
    scripts = Scripts(redis.Redis.from_url(_real_url(real_redis)), ScriptContext.from_settings(make_settings()))
    connection_id = scripts.client.client_id()

    def calls() -> Iterator[list[str | int | float]]:
        yield [10]
        yield [10]
        raise TimeoutError("the row source timed out")

    with pytest.raises(TimeoutError, match="row source"):
        scripts.run_many("promote", calls())
    # Both sent calls were answered, so the connection went back to the pool in step, not dropped.
    assert scripts.client.client_id() == connection_id
    assert scripts.run_many("promote", [[10], [10]]) == [0, 0]


def test_enqueue_many_of_nothing_does_not_touch_redis() -> None:
    dispatcher = Dispatcher(make_settings(redis_url="redis://127.0.0.1:1/0"))  # nothing listens there
    assert dispatcher.enqueue_many([]) == []


async def test_async_stream_pause_past_the_health_check_interval_keeps_replies_in_step(
    real_redis: redis.Redis,
) -> None:
    settings = make_settings(redis_url=_real_url(real_redis))
    client = redis.asyncio.Redis.from_url(settings.redis_url, health_check_interval=1)
    count = 3 * ENQUEUE_BATCH
    async with AsyncDispatcher(settings, redis_client=client) as dispatcher:
        batch = [dispatcher.event_job("e", f"a{n}") for n in range(count)]

        def rows() -> Iterator[jobs.Job]:
            for n, job in enumerate(batch):
                if n == ENQUEUE_BATCH + 1:
                    time.sleep(1.2)  # past the health-check interval, with a call sent and not answered
                yield job

        receipts = await dispatcher.enqueue_many(rows())
    await client.aclose()
    assert [r.job_id for r in receipts] == [job.id for job in batch]
    assert not any(r.duplicate for r in receipts)
    assert real_redis.llen("refold") == count


def test_a_single_enqueue_loads_the_script_again_after_redis_forgets_it(real_redis: redis.Redis) -> None:
    with Dispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        dispatcher.trigger_event("e", "first")
        real_redis.script_flush()  # what a Redis restart does to the script cache
        receipt = dispatcher.trigger_event("e", "second")
    assert not receipt.duplicate and real_redis.llen("refold") == 2


async def test_async_single_enqueue_loads_the_script_again_after_redis_forgets_it(real_redis: redis.Redis) -> None:
    async with AsyncDispatcher(make_settings(redis_url=_real_url(real_redis))) as dispatcher:
        await dispatcher.trigger_event("e", "first")
        real_redis.script_flush()
        receipt = await dispatcher.trigger_event("e", "second")
    assert not receipt.duplicate and real_redis.llen("refold") == 2
