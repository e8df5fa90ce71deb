"""The shared limiter, pause and breaker scripts, with an injected clock (fakeredis) and on a real Redis."""

from __future__ import annotations

from typing import Any

import fakeredis
import pytest
import redis

from refold_dispatch.scripts import ScriptContext, Scripts
from tests.conftest import make_settings

RATE, BURST = 20, 5
FP = "fp"


def scripts_on(client: Any) -> Scripts:
    return Scripts(client, ScriptContext.from_settings(make_settings()))


def acquire(scripts: Scripts, now_ms: int, max_wait_ms: int = 0, token: str = "t") -> tuple[str, float, int]:
    result = scripts.run("acquire", [FP, RATE, BURST, max_wait_ms, token, 10_000], now_ms=now_ms)
    kind = result[0].decode()
    return kind, float(result[1]), int(result[2]) if len(result) > 2 else 0


def report(scripts: Scripts, now_ms: int, outcome: str, retry_after_ms: int | str = "", probe: int = 0) -> str:
    result = scripts.run("report", [FP, outcome, retry_after_ms, probe, 3, 1000, 8000], now_ms=now_ms)
    return str(result.decode())


def admitted_in(scripts: Scripts, start_ms: int, end_ms: int, step_ms: int = 1) -> list[int]:
    """Ask for a slot every millisecond (as a crowd of workers would) and list the times granted."""
    granted = []
    for now in range(start_ms, end_ms, step_ms):
        kind, wait, _ = acquire(scripts, now)
        if kind == "ok" and wait == 0:
            granted.append(now)
    return granted


@pytest.mark.parametrize("backend", ["fake", "real"])
def test_gcra_never_exceeds_rate_plus_burst_in_any_second_and_uses_the_budget(
    backend: str, fake_redis: fakeredis.FakeRedis, request: pytest.FixtureRequest
) -> None:
    client = fake_redis if backend == "fake" else request.getfixturevalue("real_redis")
    scripts = scripts_on(client)

    granted = admitted_in(scripts, 1_000_000, 1_005_000, step_ms=2)

    worst = max(sum(1 for t in granted if start <= t < start + 1000) for start in granted)
    assert worst <= RATE + BURST
    assert len(granted) >= 0.95 * RATE * 5  # the budget is used: 5 s at 20/s


def test_a_short_wait_reserves_a_slot_and_a_long_one_is_refused(fake_redis: fakeredis.FakeRedis) -> None:
    scripts = scripts_on(fake_redis)
    for _ in range(BURST - 1):
        assert acquire(scripts, 0)[0] == "ok"

    kind, wait, _ = acquire(scripts, 0, max_wait_ms=100)
    assert (kind, wait) == ("ok", 50.0)  # one emission interval at 20/s
    kind, until, _ = acquire(scripts, 0, max_wait_ms=10)
    assert kind == "rate" and until == 100


def test_429_pauses_everyone_until_retry_after_then_slows_down(fake_redis: fakeredis.FakeRedis) -> None:
    scripts = scripts_on(fake_redis)
    report(scripts, 0, "rate_limited", retry_after_ms=2000)

    assert acquire(scripts, 500) == ("paused", 2000.0, 0)
    kind, wait, _ = acquire(scripts, 1900, max_wait_ms=200)
    assert kind == "ok" and wait == 100  # starts when the pause ends
    factor = float(fake_redis.hget("refold:rl:fp", "factor"))  # type: ignore[arg-type]
    assert factor == pytest.approx(0.7)
    for now in range(3000, 3050):
        report(scripts, now, "ok")
    assert float(fake_redis.hget("refold:rl:fp", "factor")) == 1.0  # type: ignore[arg-type]


def test_429_without_retry_after_backs_off_adaptively(fake_redis: fakeredis.FakeRedis) -> None:
    scripts = scripts_on(fake_redis)
    report(scripts, 0, "rate_limited")
    first_pause = float(fake_redis.hget("refold:rl:fp", "pause_until"))  # type: ignore[arg-type]
    report(scripts, 0, "rate_limited")
    second_pause = float(fake_redis.hget("refold:rl:fp", "pause_until"))  # type: ignore[arg-type]
    assert (first_pause, second_pause) == (1000, 2000)


def test_breaker_opens_probes_alone_and_closes(fake_redis: fakeredis.FakeRedis) -> None:
    scripts = scripts_on(fake_redis)
    assert [report(scripts, 0, "transient") for _ in range(3)] == ["closed", "closed", "open"]

    assert acquire(scripts, 500)[0] == "breaker"
    kind, _, probe = acquire(scripts, 1001, token="probe-1")
    assert (kind, probe) == ("ok", 1)
    assert acquire(scripts, 1002, token="other")[0] == "breaker"  # one probe at a time

    assert report(scripts, 1100, "ok", probe=1) == "closed"
    assert acquire(scripts, 1200, token="other")[0] == "ok"


def test_a_failed_probe_reopens_for_longer(fake_redis: fakeredis.FakeRedis) -> None:
    scripts = scripts_on(fake_redis)
    for _ in range(3):
        report(scripts, 0, "transient")
    acquire(scripts, 1001)
    assert report(scripts, 1100, "transient", probe=1) == "open"
    assert float(fake_redis.hget("refold:rl:fp", "open_until")) == 1100 + 2000  # type: ignore[arg-type]


def test_flow_state_is_per_api_key_and_never_names_the_key(real_redis: redis.Redis) -> None:
    from refold_dispatch.flow import FlowControl

    settings = make_settings()
    flow = FlowControl(scripts_on(real_redis), settings)
    assert flow.acquire().__class__.__name__ == "Permit"
    [key] = real_redis.keys("refold:rl:*")
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() not in key.decode()
    assert flow.snapshot()["state"] == "closed"
