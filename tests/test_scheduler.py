"""The mover: due jobs published exactly once across movers; heartbeat and the consumption canary."""

from __future__ import annotations

import json
import time

import fakeredis

from refold_dispatch.dispatcher import Dispatcher
from refold_dispatch.scheduler import Mover, direct_queue
from refold_dispatch.scripts import ScriptContext, Scripts
from tests.conftest import make_settings


def mover(client: fakeredis.FakeRedis, hostname: str = "w1@host", **kw: object) -> Mover:
    settings = make_settings()
    return Mover(settings, client, Scripts(client, ScriptContext.from_settings(settings)), hostname, **kw)  # type: ignore[arg-type]


def test_due_jobs_are_published_once_even_with_many_movers(fake_redis: fakeredis.FakeRedis) -> None:
    dispatcher = Dispatcher(make_settings(), redis_client=fake_redis)
    ids = [dispatcher.trigger_event("e", f"a{n}").job_id for n in range(5)]
    fake_redis.delete("refold")
    for job_id in ids:
        fake_redis.hset(f"refold:job:{job_id}", "state", "delayed")
        fake_redis.zadd("refold:delayed", {job_id: 0})
    fake_redis.zadd("refold:delayed", {"not-due": time.time() * 1000 + 60_000})

    moved = [mover(fake_redis, f"w{n}").promote_due() for n in range(3)]

    assert sum(moved) == 5
    assert fake_redis.llen("refold") == 5
    assert fake_redis.zrange("refold:delayed", 0, -1) == [b"not-due"]


def test_final_jobs_in_the_delayed_set_are_dropped_not_published(fake_redis: fakeredis.FakeRedis) -> None:
    dispatcher = Dispatcher(make_settings(), redis_client=fake_redis)
    job_id = dispatcher.trigger_event("e", "a").job_id
    fake_redis.delete("refold")
    fake_redis.hset(f"refold:job:{job_id}", "state", "delivered")
    fake_redis.zadd("refold:delayed", {job_id: 0})

    assert mover(fake_redis).promote_due() == 0
    assert fake_redis.llen("refold") == 0


def test_canary_goes_to_the_workers_own_queue(fake_redis: fakeredis.FakeRedis) -> None:
    m = mover(fake_redis)
    m._send_canary(time.time())

    [raw] = fake_redis.lrange(direct_queue("w1@host"), 0, -1)
    message = json.loads(raw)
    assert message["headers"]["task"] == "refold.canary"
    assert fake_redis.ttl(direct_queue("w1@host")) > 0


def test_an_unconsumed_canary_means_a_stalled_worker(fake_redis: fakeredis.FakeRedis) -> None:
    stalls: list[bool] = []
    m = mover(fake_redis, on_stall=lambda: stalls.append(True))
    now = time.time()
    fake_redis.hset("refold:worker:w1@host", mapping={"canary_sent_at": now - 200, "canary_at": now - 300})

    m._beat(now)

    assert stalls == [True]
    assert fake_redis.hget("refold:worker:w1@host", "stalled") is not None


def test_a_consumed_canary_is_healthy(fake_redis: fakeredis.FakeRedis) -> None:
    stalls: list[bool] = []
    m = mover(fake_redis, on_stall=lambda: stalls.append(True))
    now = time.time()
    fake_redis.hset("refold:worker:w1@host", mapping={"canary_sent_at": now - 200, "canary_at": now - 199})

    m._beat(now)

    assert stalls == []
    assert fake_redis.ttl("refold:worker:w1@host") > 0


def _promote_at(client: fakeredis.FakeRedis, now_ms: int) -> int:
    settings = make_settings()
    return int(Scripts(client, ScriptContext.from_settings(settings)).run("promote", [500], now_ms=now_ms))


def test_a_message_lost_between_brpop_and_unacked_is_published_again(fake_redis: fakeredis.FakeRedis) -> None:
    dispatcher = Dispatcher(make_settings(), redis_client=fake_redis)
    job_id = dispatcher.trigger_event("e", "acme").job_id
    published = float(fake_redis.zscore("refold:queued", job_id))  # type: ignore[arg-type]
    fake_redis.rpop("refold")  # a worker popped it and died before kombu recorded it as unacked

    assert _promote_at(fake_redis, int(published) + 30_000) == 0  # too early to tell
    assert _promote_at(fake_redis, int(published) + 61_000) == 1
    [message] = fake_redis.lrange("refold", 0, -1)
    assert json.loads(message)["headers"]["id"] == job_id


def test_a_message_held_by_a_worker_or_still_queued_is_left_alone(fake_redis: fakeredis.FakeRedis) -> None:
    dispatcher = Dispatcher(make_settings(), redis_client=fake_redis)
    held = dispatcher.trigger_event("e", "a").job_id
    waiting = dispatcher.trigger_event("e", "b").job_id
    fake_redis.rpop("refold")  # `held` goes to a worker, which records it as unacked
    fake_redis.hset("unacked", fake_redis.hget(f"refold:job:{held}", "tag"), "...")  # type: ignore[arg-type]
    published = float(fake_redis.zscore("refold:queued", waiting))  # type: ignore[arg-type]

    assert _promote_at(fake_redis, int(published) + 120_000) == 0
    assert fake_redis.llen("refold") == 1


def test_a_begun_job_leaves_the_queued_index(fake_redis: fakeredis.FakeRedis) -> None:
    settings = make_settings()
    dispatcher = Dispatcher(settings, redis_client=fake_redis)
    job_id = dispatcher.trigger_event("e", "a").job_id
    Scripts(fake_redis, ScriptContext.from_settings(settings)).run("begin", [job_id, "tok", 5000, 1000])
    assert fake_redis.zscore("refold:queued", job_id) is None


def test_heal_leaves_jobs_still_in_the_queue_alone_behind_a_restored_message(fake_redis: fakeredis.FakeRedis) -> None:
    settings = make_settings()
    dispatcher = Dispatcher(settings, redis_client=fake_redis)
    start = int(time.time() * 1000)
    restored = dispatcher.trigger_event("e", "r").job_id
    waiting = [dispatcher.trigger_event("e", f"a{n}").job_id for n in range(5)]
    # `restored` was consumed first, its worker died, the watchdog published it again much later, and kombu put
    # the original copy back at the consuming end of the queue (its tag still says when it was published).
    original_copy = fake_redis.rpop("refold")
    scripts = Scripts(fake_redis, ScriptContext.from_settings(settings))
    scripts.run("begin", [restored, "dead", 5000, 1000], now_ms=start + 1000)
    fake_redis.hset(f"refold:job:{restored}", "state", "delayed")
    fake_redis.zadd("refold:delayed", {restored: 0})
    scripts.run("promote", [500], now_ms=start + 100_000)  # the watchdog's publish: a recent copy
    fake_redis.rpush("refold", original_copy)  # type: ignore[arg-type]

    assert _promote_at(fake_redis, start + 130_000) == 0
    assert fake_redis.llen("refold") == 7
    assert {json.loads(m)["headers"]["id"] for m in fake_redis.lrange("refold", 0, -1)} >= set(waiting)
