"""Unit tests for the sandbox's pure parts: GCRA, the busiest-window count, fault draws, recorder, stores,
configuration and the command-line mapping. No server, no network."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from refold_dispatch import sandbox
from refold_dispatch.sandbox import FaultConfig, Gcra, SandboxConfig, max_in_window
from refold_dispatch.sandbox.__main__ import build_parser, config_from_args
from refold_dispatch.sandbox.faults import FaultInjector
from refold_dispatch.sandbox.ratelimit import NANOS_PER_SECOND, Admission
from refold_dispatch.sandbox.recorder import Outcome, Recorder, RequestRecord
from refold_dispatch.sandbox.runtime import SandboxRuntime
from refold_dispatch.sandbox.state import AccountStore, TokenStore, iso_timestamp


class FakeClock:
    """A monotonic nanosecond clock that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1_000 * NANOS_PER_SECOND

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * NANOS_PER_SECOND)


def test_public_names_are_pinned() -> None:
    assert sorted(sandbox.__all__) == [
        "DEFAULT_API_KEY",
        "DEFAULT_HOST",
        "DEFAULT_KNOWN_EVENTS",
        "DEFAULT_PORT",
        "FaultConfig",
        "Gcra",
        "RequestRecord",
        "SandboxAdmin",
        "SandboxConfig",
        "SandboxServer",
        "create_app",
        "max_in_window",
        "run_sandbox",
    ]


# --- GCRA -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "burst"), [(20.0, 5), (3.0, 4), (0.5, 1), (7.0, 10)])
def test_gcra_admits_exactly_burst_at_one_instant(rate: float, burst: int) -> None:
    clock = FakeClock()
    limiter = Gcra(rate, burst, clock=clock)

    results = [limiter.acquire("key").allowed for _ in range(burst + 3)]

    assert results == [True] * burst + [False] * 3
    assert limiter.rate == pytest.approx(rate)
    assert limiter.burst == burst


def test_gcra_refills_one_request_per_interval() -> None:
    # Given a drained 20/s, burst 5 limiter
    clock = FakeClock()
    limiter = Gcra(20.0, 5, clock=clock)
    for _ in range(5):
        assert limiter.acquire("key").allowed
    refused = limiter.acquire("key")
    assert not refused.allowed
    # Then it says how long until the next slot: one interval
    assert refused.retry_after == pytest.approx(0.05)

    # When just under one interval passes, still refused; at one interval, exactly one more is admitted
    clock.advance(0.049)
    assert not limiter.acquire("key").allowed
    clock.advance(0.001)
    assert limiter.acquire("key").allowed
    assert not limiter.acquire("key").allowed


def test_gcra_steady_rate_never_exceeds_rate() -> None:
    clock = FakeClock()
    limiter = Gcra(10.0, 3, clock=clock)
    admitted = 0
    # Offer 1000 requests/s for 10 s: admitted = burst + rate * duration.
    for _ in range(10_000):
        admitted += limiter.acquire("key").allowed
        clock.advance(0.001)
    assert admitted == pytest.approx(3 + 10 * 10, abs=1)


def test_gcra_keys_are_independent_and_reset_forgets() -> None:
    clock = FakeClock()
    limiter = Gcra(1.0, 1, clock=clock)
    assert limiter.acquire("a").allowed
    assert not limiter.acquire("a").allowed
    assert limiter.acquire("b").allowed
    limiter.reset()
    assert limiter.acquire("a").allowed


def test_gcra_configure_validates_and_restarts() -> None:
    clock = FakeClock()
    limiter = Gcra(1.0, 1, clock=clock)
    assert limiter.acquire("a").allowed
    limiter.configure(2.0, 2)
    assert [limiter.acquire("a").allowed for _ in range(3)] == [True, True, False]
    with pytest.raises(ValueError, match="rate"):
        limiter.configure(0.0, 1)
    with pytest.raises(ValueError, match="burst"):
        limiter.configure(1.0, 0)


@pytest.mark.parametrize(("retry_after", "header"), [(0.0, "1"), (0.05, "1"), (1.0, "1"), (1.2, "2"), (7.9, "8")])
def test_retry_after_header_is_whole_seconds_rounded_up_at_least_one(retry_after: float, header: str) -> None:
    assert Admission(allowed=False, retry_after=retry_after).retry_after_header == header


# --- busiest one-second window ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        ([], 0),
        ([5.0], 1),
        ([0.0, 0.5, 0.99], 3),
        ([0.0, 0.5, 1.0], 2),  # half-open: 0.0 and 1.0 are a full second apart
        ([3.0, 0.1, 0.2, 2.5, 2.6, 2.7, 2.8], 5),  # unsorted input; 2.5..3.0 is 0.5 s wide
        ([i / 8 for i in range(160)], 8),  # 8/s for 20 s (eighths are exact in binary)
    ],
)
def test_max_in_window(times: list[float], expected: int) -> None:
    assert max_in_window(times) == expected


def test_max_in_window_other_width() -> None:
    assert max_in_window([0.0, 0.1, 0.2, 0.3], window=0.25) == 3


# --- fault draws ------------------------------------------------------------------------------------------


def test_no_faults_configured_draws_nothing() -> None:
    config = FaultConfig()
    assert not config.active
    injector = FaultInjector(config)
    assert all(injector.draw() is None for _ in range(100))


@pytest.mark.parametrize(
    ("config", "kind", "status", "delay"),
    [
        (FaultConfig(error_rate=1.0, error_statuses=(502,)), "error", 502, 0.0),
        (FaultConfig(rate_429=1.0), "rate_429", 429, 0.0),
        (FaultConfig(hang_rate=1.0, hang_seconds=0.3), "hang", 504, 0.3),
        (FaultConfig(slow_rate=1.0, slow_seconds=0.4), "slow", None, 0.4),
    ],
)
def test_each_fault_kind_at_rate_one(config: FaultConfig, kind: str, status: int | None, delay: float) -> None:
    fault = FaultInjector(config).draw()
    assert fault is not None
    assert (fault.kind, fault.status, fault.delay) == (kind, status, delay)


def test_fault_order_error_wins_over_later_kinds() -> None:
    fault = FaultInjector(FaultConfig(error_rate=1.0, rate_429=1.0, hang_rate=1.0)).draw()
    assert fault is not None
    assert fault.kind == "error"


def test_seeded_draws_repeat_and_match_the_rate() -> None:
    config = FaultConfig(error_rate=0.3, seed=42)
    first = [FaultInjector(config).draw() for _ in range(1)]
    injector_a, injector_b = FaultInjector(config), FaultInjector(config)
    draws_a = [injector_a.draw() for _ in range(2000)]
    draws_b = [injector_b.draw() for _ in range(2000)]
    assert draws_a == draws_b
    assert first[0] == draws_a[0]
    errors = sum(draw is not None for draw in draws_a)
    assert 500 < errors < 700  # 30 % of 2000, with room for chance
    assert {draw.status for draw in draws_a if draw is not None} == {500, 502, 503}


def test_reseeding_restarts_the_sequence() -> None:
    config = FaultConfig(error_rate=0.5, seed=7)
    injector = FaultInjector(config)
    before = [injector.draw() for _ in range(20)]
    injector.replace(config, reseed=True)
    assert [injector.draw() for _ in range(20)] == before


@pytest.mark.parametrize(
    "changes",
    [
        {"error_rate": 1.5},
        {"rate_429": -0.1},
        {"hang_seconds": -1.0},
        {"error_statuses": [404]},
        {"error_statuses": []},
        {"no_such_fault": 1.0},
    ],
)
def test_fault_config_rejects_invalid_values(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        FaultConfig.model_validate(changes)


# --- recorder ---------------------------------------------------------------------------------------------


def _record(time: float, outcome: Outcome = "delivered", key: str | None = None, path: str = "/api/x") -> RequestRecord:
    return RequestRecord(
        seq=0,
        time=time,
        method="POST",
        path=path,
        status=200 if outcome in {"delivered", "ok"} else 500,
        outcome=outcome,
        request_id="req_test",
        key_valid=True,
        idempotency_key=key,
    )


def test_recorder_stats_count_deliveries_per_key_and_duplicates() -> None:
    recorder = Recorder(max_records=100)
    for record in [
        _record(0.0, key="k1"),
        _record(0.1, key="k1"),
        _record(0.2, key="k2"),
        _record(0.3, outcome="fault", key="k3"),
        _record(5.0, outcome="delivered"),
    ]:
        recorder.append(record)

    stats = recorder.stats()

    assert stats["total"] == 5
    assert stats["by_status"] == {"200": 4, "500": 1}
    assert stats["by_outcome"] == {"delivered": 4, "fault": 1}
    assert stats["delivered_by_idempotency_key"] == {"k1": 2, "k2": 1}
    assert stats["duplicates"] == ["k1"]
    assert stats["max_in_any_1s_window"] == 4


def test_recorder_is_bounded_and_seqs_keep_counting_after_clear() -> None:
    recorder = Recorder(max_records=3)
    for i in range(5):
        recorder.append(_record(float(i)))
    assert [record.seq for record in recorder] == [3, 4, 5]
    recorder.clear()
    recorder.append(_record(9.0))
    assert [record.seq for record in recorder] == [6]


def test_recorder_query_filters_and_pages() -> None:
    recorder = Recorder(max_records=100)
    for i in range(10):
        recorder.append(_record(float(i), outcome="delivered" if i % 2 else "fault", path=f"/api/{i % 3}"))

    assert [r.seq for r in recorder.query(since_seq=7)] == [8, 9, 10]
    assert [r.seq for r in recorder.query(outcome="fault")] == [1, 3, 5, 7, 9]
    assert [r.seq for r in recorder.query(path="/api/0", limit=2)] == [1, 4]
    assert [r.seq for r in recorder.query(since_seq=4, outcome="delivered", limit=2)] == [6, 8]
    assert recorder.query(since_seq=10) == []
    assert Recorder(max_records=1).query() == []


# --- stores -----------------------------------------------------------------------------------------------


def test_account_store_upsert_create_page_delete() -> None:
    store = AccountStore()
    account, created = store.upsert("a1", None, {"plan": "pro"}, now=100.0)
    assert created
    assert account.name == "a1"
    assert len(account.object_id) == 24

    account, created = store.upsert("a1", "Acme", None, now=200.0)
    assert not created
    assert (account.name, account.udf, account.created_at, account.updated_at) == (
        "Acme",
        {"plan": "pro"},
        100.0,
        200.0,
    )
    # A given udf replaces the whole set: the last upsert applied is what the account holds.
    account, _ = store.upsert("a1", None, {"tier": "b"}, now=300.0)
    assert account.udf == {"tier": "b"}

    assert store.create("a1", None, None, now=1.0) is None
    assert store.seed(["a1", "a2", "a3"], now=1.0) == 2
    assert [a.account_id for a in store.page(1, 2)] == ["a1", "a2"]
    assert [a.account_id for a in store.page(2, 2)] == ["a3"]
    assert store.page(3, 2) == []
    assert store.delete("a2")
    assert not store.delete("a2")
    assert "a2" not in store
    assert len(store) == 2


def test_account_json_matches_refold_shape() -> None:
    store = AccountStore()
    account, _ = store.upsert("a1", "Acme", {"k": "v"}, now=0.0)
    body = account.to_json("org1", "production")
    assert body == {
        "_id": account.object_id,
        "associated_org": "org1",
        "account_id": "a1",
        "environment": "production",
        "name": "Acme",
        "udf": [{"key_name": "k", "key_value": "v"}],
        "createdAt": "1970-01-01T00:00:00.000Z",
        "updatedAt": "1970-01-01T00:00:00.000Z",
    }
    assert iso_timestamp(1.5) == "1970-01-01T00:00:01.500Z"


def test_token_store_reuses_until_expiry_or_force() -> None:
    tokens = TokenStore()
    first = tokens.issue("a1", now=0.0, ttl=100, refresh_ttl=1000, force_refresh=False)
    assert tokens.issue("a1", now=50.0, ttl=100, refresh_ttl=1000, force_refresh=False) == first
    assert first.to_json(now=50.0)["expires_in"] == 50
    assert first.to_json(now=50.0)["refresh_expires_in"] == 950

    forced = tokens.issue("a1", now=50.0, ttl=100, refresh_ttl=1000, force_refresh=True)
    assert forced.token != first.token

    expired = tokens.issue("a1", now=150.0, ttl=100, refresh_ttl=1000, force_refresh=False)
    assert expired.token != forced.token

    tokens.revoke("a1")
    assert tokens.issue("a1", now=150.0, ttl=100, refresh_ttl=1000, force_refresh=False) != expired


# --- configuration and runtime ----------------------------------------------------------------------------


def test_config_defaults_and_environment() -> None:
    config = SandboxConfig()
    assert config.api_key == "tk_sandbox_key"
    assert config.environment == "test"
    assert (config.rate_limit, config.rate_burst) == (20.0, 5)
    assert config.accepts_event("order.created")
    assert not config.accepts_event("nope")
    assert SandboxConfig(api_key="pk_live").environment == "production"
    assert SandboxConfig(known_events=frozenset({"*"})).accepts_event("anything")
    assert "tk_sandbox_key" not in repr(config)


@pytest.mark.parametrize(
    "changes", [{"rate_limit": 0}, {"rate_burst": 0}, {"api_key": ""}, {"max_recorded": 0}, {"bogus": 1}]
)
def test_config_rejects_invalid_values(changes: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SandboxConfig.model_validate(changes)


def test_runtime_update_config_only_runtime_settings() -> None:
    runtime = SandboxRuntime(SandboxConfig(), monotonic_ns=FakeClock())
    updated = runtime.update_config({"rate_limit": 1.0, "rate_burst": 2, "known_events": ["x"]})
    assert (updated.rate_limit, updated.rate_burst, updated.known_events) == (1.0, 2, frozenset({"x"}))
    assert runtime.limiter.burst == 2
    with pytest.raises(ValueError, match="api_key"):
        runtime.update_config({"api_key": "tk_other"})
    with pytest.raises(ValidationError):
        runtime.update_config({"rate_burst": -1})
    assert runtime.config.rate_burst == 2

    runtime.update_faults({"error_rate": 0.5})
    runtime.reset(restore_config=True)
    assert runtime.config == SandboxConfig()


def test_cli_flags_map_onto_config() -> None:
    args = build_parser().parse_args(
        [
            "--api-key",
            "pk_cli",
            "--events",
            "a.b, c.d",
            "--allow-unknown-accounts",
            "--rate-limit",
            "5",
            "--rate-burst",
            "2",
            "--no-retry-after",
            "--error-rate",
            "0.1",
            "--hang-rate",
            "0.2",
            "--hang-seconds",
            "3",
            "--retry-after-429",
            "4",
            "--seed",
            "9",
        ]
    )
    config = config_from_args(args)
    assert config.api_key == "pk_cli"
    assert config.known_events == frozenset({"a.b", "c.d"})
    assert not config.require_known_accounts
    assert (config.rate_limit, config.rate_burst, config.rate_limit_enabled) == (5.0, 2, True)
    assert not config.retry_after_header
    assert config.faults == FaultConfig(error_rate=0.1, hang_rate=0.2, hang_seconds=3.0, retry_after_429=4.0, seed=9)
    assert config_from_args(build_parser().parse_args([])) == SandboxConfig()
