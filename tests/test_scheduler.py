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
