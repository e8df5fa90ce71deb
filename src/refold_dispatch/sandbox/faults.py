"""Fault injection: which failures the sandbox plays, how often, and the per-request draw.

The draw (:meth:`FaultInjector.draw`) is a pure decision from a seedable RNG; the waiting it asks for is done
by the caller with ``asyncio.sleep``, so this module never touches the event loop and tests can assert exact
sequences. Each kind is drawn independently, in a fixed order, and the first hit wins::

    error (5xx, not processed) -> spurious 429 (not processed) -> hang then 504 (not processed)
    -> slow (processed late)

so with ``error_rate=0.1`` and ``rate_429=0.1`` about 10 % of requests fail with 5xx and 9 % with 429.
``latency_ms`` is not drawn: it is added to every API request.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Seconds = Annotated[float, Field(ge=0.0, le=3600.0)]

# The 5xx statuses a flaky upstream or its load balancer typically returns.
DEFAULT_ERROR_STATUSES: tuple[int, ...] = (500, 502, 503)
# Longer than a typical client read timeout (ours is 15 s), so by default a hang looks like a timeout.
DEFAULT_HANG_SECONDS = 30.0
# Slow enough to notice in a dashboard, short enough to stay under every client timeout.
DEFAULT_SLOW_SECONDS = 2.0

FaultKind = Literal["error", "rate_429", "hang", "slow"]


class FaultConfig(BaseModel):
    """How often each fault fires. All probabilities are 0..1; everything defaults to off."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    error_rate: Probability = 0.0
    error_statuses: tuple[int, ...] = DEFAULT_ERROR_STATUSES
    rate_429: Probability = 0.0
    # Refold is not known to send Retry-After, so the spurious 429 carries none unless asked to.
    retry_after_429: Seconds | None = None
    hang_rate: Probability = 0.0
    hang_seconds: Seconds = DEFAULT_HANG_SECONDS
    slow_rate: Probability = 0.0
    slow_seconds: Seconds = DEFAULT_SLOW_SECONDS
    latency_ms: Annotated[float, Field(ge=0.0, le=60_000.0)] = 0.0
    seed: int | None = None

    @field_validator("error_statuses")
    @classmethod
    def _statuses_are_5xx(cls, statuses: tuple[int, ...]) -> tuple[int, ...]:
        if not statuses or any(not 500 <= status <= 599 for status in statuses):
            raise ValueError("error_statuses must be a non-empty list of 5xx status codes")
        return statuses

    @property
    def active(self) -> bool:
        """Whether any fault or latency can apply; lets the hot path skip the draw entirely."""
        return (
            self.error_rate > 0 or self.rate_429 > 0 or self.hang_rate > 0 or self.slow_rate > 0 or self.latency_ms > 0
        )


@dataclass(frozen=True, slots=True)
class Fault:
    """One drawn fault: its kind, the status to answer (``None`` for slow: processed normally), the delay."""

    kind: FaultKind
    status: int | None = None
    delay: float = 0.0


class FaultInjector:
    """Draws faults for requests from a :class:`FaultConfig` and a seedable RNG."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)  # noqa: S311 - chaos, not cryptography

    def replace(self, config: FaultConfig, *, reseed: bool) -> None:
        """Swap the configuration at runtime; reseeding restarts the fault sequence."""
        self.config = config
        if reseed:
            self._rng.seed(config.seed)

    def draw(self) -> Fault | None:
        """The fault for the next request, or ``None``. Kinds with a zero rate consume no randomness."""
        config = self.config
        rng = self._rng
        if config.error_rate > 0 and rng.random() < config.error_rate:
            return Fault("error", status=rng.choice(config.error_statuses))
        if config.rate_429 > 0 and rng.random() < config.rate_429:
            return Fault("rate_429", status=429)
        if config.hang_rate > 0 and rng.random() < config.hang_rate:
            return Fault("hang", status=504, delay=config.hang_seconds)
        if config.slow_rate > 0 and rng.random() < config.slow_rate:
            return Fault("slow", delay=config.slow_seconds)
        return None
