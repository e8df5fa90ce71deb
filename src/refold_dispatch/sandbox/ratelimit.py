"""A GCRA (generic cell rate algorithm) limiter, one bucket per key.

GCRA keeps a single number per key, the theoretical arrival time (TAT) of the next request if requests came
exactly at the configured rate. A request arriving at ``now`` is admitted when ``TAT - now <= tolerance``,
after which the TAT moves on by one emission interval. With ``tolerance = (burst - 1) * interval``, ``burst``
requests arriving at the same instant are all admitted, and the steady rate never exceeds ``rate``.

Time is integer nanoseconds from an injected monotonic clock: integer arithmetic keeps ``burst`` exact (with
floats, ``4 * 0.05`` exceeds ``0.2`` and the fifth request of a burst of five would be refused).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

NANOS_PER_SECOND = 1_000_000_000


@dataclass(frozen=True, slots=True)
class Admission:
    """The limiter's answer for one request: admitted, or how long until it would be."""

    allowed: bool
    retry_after: float = 0.0

    @property
    def retry_after_header(self) -> str:
        """``Retry-After`` as HTTP wants it: whole seconds, rounded up, never below one."""
        return str(max(1, math.ceil(self.retry_after)))


ADMITTED = Admission(allowed=True)


class Gcra:
    """Per-key GCRA limiter. Not thread-safe: the sandbox calls it from its single event-loop thread."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], int] = time.monotonic_ns) -> None:
        self._clock = clock
        self._tat: dict[str, int] = {}
        self._interval = 0
        self._tolerance = 0
        self.configure(rate, burst)

    @property
    def rate(self) -> float:
        """Requests per second allowed in the long run."""
        return NANOS_PER_SECOND / self._interval

    @property
    def burst(self) -> int:
        """Requests that may arrive at the same instant."""
        return self._tolerance // self._interval + 1

    def configure(self, rate: float, burst: int) -> None:
        """Change rate and burst; every key starts afresh, as after a deploy of new limits."""
        if rate <= 0 or not math.isfinite(rate):
            raise ValueError(f"rate must be a positive number, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst!r}")
        self._interval = max(1, round(NANOS_PER_SECOND / rate))
        self._tolerance = (burst - 1) * self._interval
        self._tat.clear()

    def reset(self) -> None:
        """Forget every key's history."""
        self._tat.clear()

    def acquire(self, key: str) -> Admission:
        """Admit one request for ``key`` now, or say how long until one would be admitted."""
        now = self._clock()
        tat = max(self._tat.get(key, now), now)
        ahead = tat - now
        if ahead > self._tolerance:
            return Admission(allowed=False, retry_after=(ahead - self._tolerance) / NANOS_PER_SECOND)
        self._tat[key] = tat + self._interval
        return ADMITTED
