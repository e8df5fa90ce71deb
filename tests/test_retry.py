"""The retry decision and waits are pure functions: tested by a table, with the randomness injected."""

from __future__ import annotations

import pytest

from refold_dispatch.errors import AuthError, PermanentError, RateLimitedError, RefoldError, TransientError
from refold_dispatch.retry import (
    GiveUp,
    RetryLater,
    RetryPolicy,
    decide,
    is_quick_retryable,
    jittered,
    quick_retry_wait,
)

POLICY = RetryPolicy(schedule=(10, 60, 300), jitter=0.2, max_age_seconds=3600, max_retry_after_seconds=600)


def half() -> float:
    return 0.5


@pytest.mark.parametrize(
    ("error", "attempts", "age", "expected"),
    [
        (AuthError("no", status_code=401), 1, 0, GiveUp("auth", "")),
        (PermanentError("bad", status_code=404), 1, 0, GiveUp("permanent", "")),
        (TransientError("boom", status_code=500), 1, 0, RetryLater(10, "")),
        (TransientError("boom", status_code=500), 3, 0, RetryLater(300, "")),
        (TransientError("boom", status_code=500), 4, 0, GiveUp("exhausted", "")),
        (TransientError("boom", status_code=503, retry_after=120), 1, 0, RetryLater(120, "")),
        (TransientError("boom", status_code=503, retry_after=5), 1, 0, RetryLater(10, "")),
        (RateLimitedError("slow", status_code=429, retry_after=9999), 1, 0, RetryLater(600, "")),
        (TransientError("boom", status_code=500), 3, 3400, GiveUp("expired", "")),
    ],
)
def test_decide(error: RefoldError, attempts: int, age: float, expected: RetryLater | GiveUp) -> None:
    decision = decide(error, attempts=attempts, age_seconds=age, policy=POLICY, random=half)
    assert type(decision) is type(expected)
    if isinstance(expected, RetryLater):
        assert isinstance(decision, RetryLater)
        assert decision.delay == pytest.approx(expected.delay)
    else:
        assert isinstance(decision, GiveUp)
        assert decision.reason == expected.reason


@pytest.mark.parametrize(("draw", "delay"), [(0.0, 8.0), (0.5, 10.0), (0.999999, 12.0)])
def test_jitter_spreads_plus_minus(draw: float, delay: float) -> None:
    assert jittered(10, 0.2, lambda: draw) == pytest.approx(delay, abs=1e-4)


def test_quick_retries_only_for_blips_that_fit_the_budget() -> None:
    assert is_quick_retryable(TransientError("x", status_code=502), 5)
    assert not is_quick_retryable(PermanentError("x", status_code=400), 5)
    assert not is_quick_retryable(TransientError("x", status_code=503, retry_after=60), 5)
    assert is_quick_retryable(RateLimitedError("x", status_code=429), 5)
    assert not is_quick_retryable(ValueError("not ours"), 5)


def test_quick_wait_is_capped_full_jitter() -> None:
    assert [quick_retry_wait(n, lambda: 1.0) for n in (1, 2, 3, 4, 10)] == [0.2, 0.4, 0.8, 1.6, 2.0]
    assert quick_retry_wait(3, lambda: 0.0) == 0.0
