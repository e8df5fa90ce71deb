"""Flow control shared by every worker: the global rate limit, the shared 429 pause and the circuit breaker.

Celery's ``rate_limit`` is per worker process (celery#5732): N workers would send N times Refold's limit. Here
every request first asks Redis (one script, ``lua/acquire.lua``) for a slot on a GCRA schedule shared by all
workers on all machines, per API key (named by a fingerprint, never the key). A worker sleeps for a short wait
(at most ``REFOLD_RATE_MAX_WAIT_SECONDS``) and otherwise defers the job without spending an attempt. After
each request it reports the outcome (``lua/report.lua``): a 429 pauses everyone and slows the rate, successes
win it back gradually, and sustained transient failures open the breaker for a cool-down during which jobs
wait in the delayed set, their attempts and age budget untouched.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from refold_dispatch.config import Settings
from refold_dispatch.errors import RateLimitedError, RefoldError
from refold_dispatch.scripts import Scripts

HoldKind = Literal["breaker", "paused", "rate"]
Outcome = Literal["ok", "transient", "rate_limited", "unavailable"]


@dataclass(frozen=True)
class Permit:
    """Send after sleeping ``wait_seconds``. ``probe`` marks the half-open breaker's single trial request."""

    wait_seconds: float
    probe: bool


@dataclass(frozen=True)
class Hold:
    """Do not send before ``until_ms`` (Redis clock): the breaker is open, everyone is paused, or no slot."""

    kind: HoldKind
    until_ms: int


def outcome_of(error: RefoldError | None) -> Outcome | None:
    """How a request's result feeds flow control; None for errors that say nothing about Refold's health."""
    if error is None:
        return "ok"
    if isinstance(error, RateLimitedError):
        return "rate_limited"
    if error.status_code == 503:
        return "unavailable"
    if error.retryable:
        return "transient"
    # A 4xx is about this request, not about Refold being up: it neither trips nor heals the breaker.
    return None


class FlowControl:
    """Client of the shared flow state for one API key."""

    def __init__(self, scripts: Scripts, settings: Settings) -> None:
        self._scripts = scripts
        self._settings = settings
        self._fingerprint = settings.api_key_fingerprint
        self._probe_ttl_ms = int((settings.task_time_limit_seconds + 5) * 1000)

    def acquire_args(self, probe_token: str) -> list[str | int | float]:
        """The acquire script's arguments (also folded into the begin script: one round trip, not two)."""
        s = self._settings
        return [
            self._fingerprint,
            s.rate_limit,
            s.rate_burst,
            int(s.rate_max_wait_seconds * 1000),
            probe_token,
            self._probe_ttl_ms,
        ]

    def acquire(self) -> Permit | Hold:
        return permit_from(self._scripts.run("acquire", self.acquire_args(uuid.uuid4().hex)))

    def success_args(self, *, probe: bool) -> list[str | int | float]:
        """A success report's arguments, for the finish script that records the delivery in the same trip."""
        s = self._settings
        return [
            self._fingerprint,
            1 if probe else 0,
            s.breaker_threshold,
            int(s.breaker_cooldown_seconds * 1000),
            int(s.breaker_max_cooldown_seconds * 1000),
        ]

    def report(self, outcome: Outcome, *, retry_after: float | None = None, probe: bool = False) -> str:
        fingerprint, probe_flag, *breaker = self.success_args(probe=probe)
        retry_after_ms = "" if retry_after is None else int(retry_after * 1000)
        result = self._scripts.run("report", [fingerprint, outcome, retry_after_ms, probe_flag, *breaker])
        return _text(result)

    def snapshot(self) -> dict[str, Any]:
        """The shared state as stored (for ``refold-dispatch status``)."""
        raw = self._scripts.client.hgetall(f"{self._settings.key_prefix}:rl:{self._fingerprint}")
        state = {_text(k): _text(v) for k, v in raw.items()}
        state.setdefault("state", "closed")
        return state


def permit_from(result: Any) -> Permit | Hold:
    """Read an acquire answer: ``['ok', wait_ms, probe]`` or ``[kind, until_ms]``."""
    kind = _text(result[0])
    if kind == "ok":
        return Permit(wait_seconds=float(_text(result[1])) / 1000, probe=int(result[2]) == 1)
    if kind not in ("breaker", "paused", "rate"):
        raise RuntimeError(f"acquire script answered {result!r}")
    return Hold(kind=kind, until_ms=int(float(_text(result[1]))))  # type: ignore[arg-type]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
