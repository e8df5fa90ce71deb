"""Retry decisions as pure functions: what to do after a failed attempt, and how long to wait.

Two layers, each with its budget written once:

* quick retries *inside* one attempt (tenacity, seconds): :func:`is_quick_retryable` and
  :func:`quick_retry_wait` decide; ``REFOLD_QUICK_RETRY_ATTEMPTS`` / ``REFOLD_QUICK_RETRY_BUDGET_SECONDS`` bound;
* the job-level schedule *across* attempts (minutes to hours): :func:`decide` picks the next due time from
  ``REFOLD_RETRY_SCHEDULE``, or the dead-letter reason once the schedule or the job's age is spent.

The randomness (jitter) is an argument, so tests assert exact delays.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from refold_dispatch.config import Settings
from refold_dispatch.errors import AuthError, PermanentError, RateLimitedError, RefoldError, TransientError

DeadReason = Literal["permanent", "auth", "exhausted", "expired", "invalid", "dependency"]
DEAD_REASONS: tuple[DeadReason, ...] = ("permanent", "auth", "exhausted", "expired", "invalid", "dependency")


@dataclass(frozen=True)
class RetryPolicy:
    """The job-level schedule and its bounds (see the config module for the defaults and why)."""

    schedule: tuple[float, ...]
    jitter: float
    max_age_seconds: float
    max_retry_after_seconds: float

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            schedule=settings.retry_schedule,
            jitter=settings.retry_jitter,
            max_age_seconds=settings.max_job_age_seconds,
            max_retry_after_seconds=settings.max_retry_after_seconds,
        )


@dataclass(frozen=True)
class RetryLater:
    """Try again after ``delay`` seconds."""

    delay: float
    why: str


@dataclass(frozen=True)
class GiveUp:
    """Move the job to the dead-letter queue for ``reason``."""

    reason: DeadReason
    why: str


Decision = RetryLater | GiveUp


def jittered(delay: float, jitter: float, random: Callable[[], float]) -> float:
    """``delay`` spread uniformly over +/- ``jitter`` (a fraction); ``random`` returns a float in [0, 1)."""
    return delay * (1 - jitter + 2 * jitter * random())


def decide(
    error: RefoldError, *, attempts: int, age_seconds: float, policy: RetryPolicy, random: Callable[[], float]
) -> Decision:
    """What to do after attempt number ``attempts`` (1-based) failed with ``error``.

    Order: never-retry classes first (auth, other permanent errors), then the schedule (exhausted?), the
    server's Retry-After hint when it asks for longer, and last the job's age budget (expired?).
    """
    if isinstance(error, AuthError):
        return GiveUp("auth", f"Refold refused the API key (status {error.status_code})")
    if isinstance(error, PermanentError) or not isinstance(error, TransientError):
        return GiveUp("permanent", f"Refold rejected the request (status {error.status_code})")
    if attempts > len(policy.schedule):
        return GiveUp("exhausted", f"all {len(policy.schedule) + 1} attempts failed")
    delay = jittered(policy.schedule[attempts - 1], policy.jitter, random)
    hint = error.retry_after
    if hint is not None and hint > delay:
        delay = min(hint, policy.max_retry_after_seconds)
    if age_seconds + delay > policy.max_age_seconds:
        return GiveUp("expired", f"the next attempt would be past the job's maximum age ({policy.max_age_seconds:g} s)")
    return RetryLater(delay, f"{type(error).__name__}: retry {attempts} of {len(policy.schedule)}")


def is_quick_retryable(error: BaseException, remaining_seconds: float) -> bool:
    """Quick retries are for blips: transient errors whose server hint (if any) fits the remaining budget."""
    if not isinstance(error, TransientError):
        return False
    if isinstance(error, RateLimitedError) and error.retry_after is None:
        # The shared pause (flow control) decides how long every worker waits; the next try asks it.
        return True
    return error.retry_after is None or error.retry_after <= remaining_seconds


def quick_retry_wait(try_number: int, random: Callable[[], float]) -> float:
    """Full-jitter exponential wait between quick tries: up to 0.2 s, 0.4 s, 0.8 s ... capped at 2 s."""
    return float(min(0.2 * 2 ** (try_number - 1), 2.0) * random())
