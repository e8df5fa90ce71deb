"""Typed settings for refold-dispatch, read from the environment (prefix ``REFOLD_``) or a ``.env`` file.

Nothing here is read at import time: callers build a :class:`Settings` explicitly, or ask the cached
:func:`get_settings` factory once per process. Every default is a named constant with the reason for its value.
The API key is a :class:`~pydantic.SecretStr` with no default, so it can only come from the environment and it
never shows in ``repr``, logs or serialised settings.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from refold_dispatch.errors import ConfigurationError

DEFAULT_BASE_URL = "https://app.refold.ai"
# Local Redis on the standard port; hosted add-ons set REDIS_URL, which we honour as a fallback.
DEFAULT_REDIS_URL = "redis://localhost:6379/0"
# Every key we write starts with this, so an operator can find (and size) all of our state with one SCAN.
DEFAULT_KEY_PREFIX = "refold"
# A dedicated queue lets refold-dispatch share a broker with the web app's own Celery tasks.
DEFAULT_QUEUE = "refold"

# Refold answers in well under a second; 5 s to connect and 15 s to read covers a slow day without letting a
# hung connection hold a worker for long (the task's hard time limit is the backstop).
DEFAULT_CONNECT_TIMEOUT = 5.0
DEFAULT_READ_TIMEOUT = 15.0
DEFAULT_WRITE_TIMEOUT = 10.0
DEFAULT_POOL_TIMEOUT = 5.0

# Enqueue runs inside a web request: if Redis does not answer in about a second, fail fast and say so.
DEFAULT_REDIS_SOCKET_TIMEOUT = 1.0
DEFAULT_REDIS_CONNECT_TIMEOUT = 1.0

# Refold's payloads are workflow inputs, not file transfers; 256 KiB keeps Redis memory per job predictable.
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
# How long an idempotency key (and the job record behind it) is remembered: three days covers the 24 h job
# age plus a weekend of "why did this send twice?" questions.
DEFAULT_IDEMPOTENCY_TTL_SECONDS = 72 * 3600
# Dead letters wait two weeks for an operator to look at them before they are purged.
DEFAULT_DLQ_RETENTION_SECONDS = 14 * 24 * 3600
# A hard bound on the dead-letter queue so a permanent outage cannot fill Redis; the oldest go first.
DEFAULT_DLQ_MAX_ENTRIES = 1_000_000

# Job-level retry schedule across attempts, in seconds: quick at first, then spread over a day.
DEFAULT_RETRY_SCHEDULE: tuple[float, ...] = (10, 60, 300, 1800, 7200, 21600, 43200)
# +/-20 % spreads a burst of failed jobs so they do not come back in lockstep.
DEFAULT_RETRY_JITTER = 0.2
# After a day an event is usually stale; it goes to the dead-letter queue for a human decision.
DEFAULT_MAX_JOB_AGE_SECONDS = 24 * 3600
# Quick retries inside one attempt: a few tries within a few seconds absorb blips without a job-level retry.
DEFAULT_QUICK_RETRY_ATTEMPTS = 3
DEFAULT_QUICK_RETRY_BUDGET_SECONDS = 8.0
# A Retry-After longer than this is treated as this: a server asking for a week is not obeyed blindly.
DEFAULT_MAX_RETRY_AFTER_SECONDS = 6 * 3600.0

# The hard time limit bounds how long a worker can hold one job; the visibility timeout must exceed it, and is
# what bounds how long a killed worker's job waits before another worker takes it (target: under 2 minutes).
DEFAULT_TASK_TIME_LIMIT_SECONDS = 45
DEFAULT_PREFETCH_MULTIPLIER = 4
DEFAULT_VISIBILITY_TIMEOUT_SECONDS = 75
# Celery's Redis transport checks for expired unacked messages on its own timer; margin between the time limit
# and the visibility timeout must cover clock skew and a task finishing right at its limit.
MIN_VISIBILITY_MARGIN_SECONDS = 15

# Refold's documented limit: 20 requests per second with a burst of 5, per API key.
DEFAULT_RATE_LIMIT = 20.0
DEFAULT_RATE_BURST = 5
# A worker that would wait longer than this for a rate-limit slot defers the job instead of holding a process.
DEFAULT_RATE_MAX_WAIT_SECONDS = 1.0
# Circuit breaker: this many transient failures in a row open it for the cool-down, which doubles up to the cap.
DEFAULT_BREAKER_THRESHOLD = 10
DEFAULT_BREAKER_COOLDOWN_SECONDS = 15.0
DEFAULT_BREAKER_MAX_COOLDOWN_SECONDS = 300.0
# Fairness: at most this many jobs of one linked account sit in the Celery queue at once; the rest wait in the
# account's own backlog, so one noisy account cannot put thousands of jobs ahead of everyone else.
DEFAULT_ACCOUNT_QUEUE_SHARE = 20
# The mover publishes due delayed jobs this often; it bounds how late a retry can run.
DEFAULT_MOVER_INTERVAL_SECONDS = 0.5

PLACEHOLDER_KEYS = frozenset({"", "changeme", "change-me", "your-api-key", "xxx", "tk_xxx", "pk_xxx", "replace-me"})

Environment = Literal["test", "production", "unknown"]


class Settings(BaseSettings):
    """Every knob of refold-dispatch. See the README's settings table for the operator's view."""

    model_config = SettingsConfigDict(
        env_prefix="REFOLD_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
        populate_by_name=True,
    )

    api_key: SecretStr | None = Field(default=None, description="Refold API key (tk… test, pk… production).")
    base_url: str = DEFAULT_BASE_URL
    trigger_event_path: str = "/api/v2/public/event/trigger"
    linked_account_path: str = "/api/v2/public/linked-account"
    session_token_path: str = "/api/v2/public/session-token"  # noqa: S105 - a URL path, not a secret

    redis_url: str = Field(
        default=DEFAULT_REDIS_URL,
        validation_alias=AliasChoices("REFOLD_REDIS_URL", "REDIS_URL", "redis_url"),
    )
    redis_socket_timeout: float = Field(default=DEFAULT_REDIS_SOCKET_TIMEOUT, gt=0)
    redis_connect_timeout: float = Field(default=DEFAULT_REDIS_CONNECT_TIMEOUT, gt=0)
    key_prefix: str = Field(default=DEFAULT_KEY_PREFIX, min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    queue: str = Field(default=DEFAULT_QUEUE, min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")

    connect_timeout: float = Field(default=DEFAULT_CONNECT_TIMEOUT, gt=0)
    read_timeout: float = Field(default=DEFAULT_READ_TIMEOUT, gt=0)
    write_timeout: float = Field(default=DEFAULT_WRITE_TIMEOUT, gt=0)
    pool_timeout: float = Field(default=DEFAULT_POOL_TIMEOUT, gt=0)

    max_payload_bytes: int = Field(default=DEFAULT_MAX_PAYLOAD_BYTES, gt=0)
    idempotency_ttl_seconds: int = Field(default=DEFAULT_IDEMPOTENCY_TTL_SECONDS, gt=0)
    dlq_retention_seconds: int = Field(default=DEFAULT_DLQ_RETENTION_SECONDS, gt=0)
    dlq_max_entries: int = Field(default=DEFAULT_DLQ_MAX_ENTRIES, gt=0)

    retry_schedule: Annotated[tuple[float, ...], NoDecode] = DEFAULT_RETRY_SCHEDULE
    retry_jitter: float = Field(default=DEFAULT_RETRY_JITTER, ge=0, lt=1)
    max_job_age_seconds: float = Field(default=DEFAULT_MAX_JOB_AGE_SECONDS, gt=0)
    quick_retry_attempts: int = Field(default=DEFAULT_QUICK_RETRY_ATTEMPTS, ge=1)
    quick_retry_budget_seconds: float = Field(default=DEFAULT_QUICK_RETRY_BUDGET_SECONDS, ge=0)
    max_retry_after_seconds: float = Field(default=DEFAULT_MAX_RETRY_AFTER_SECONDS, gt=0)

    task_time_limit_seconds: int = Field(default=DEFAULT_TASK_TIME_LIMIT_SECONDS, gt=0)
    visibility_timeout_seconds: int = Field(default=DEFAULT_VISIBILITY_TIMEOUT_SECONDS, gt=0)
    # prefork: the fastest pool for the full pipeline in bench/ (README, Performance), and the only one on which
    # Celery enforces the hard time limit per task that the lease relies on.
    worker_pool: Literal["prefork", "threads", "solo", "gevent", "eventlet"] = "prefork"
    # Messages each pool process reserves ahead (Celery's worker_prefetch_multiplier). 4 measured a quarter
    # less worker CPU per job than 1 (README, Performance). A reserved message that waits past the visibility
    # timeout may be handed to another worker as well; the ledger (begin.lua) lets only one copy deliver.
    # 1 suits slow endpoints: nothing waits behind a slow call that an idle worker elsewhere could take.
    prefetch_multiplier: int = Field(default=DEFAULT_PREFETCH_MULTIPLIER, ge=1, le=64)

    rate_limit: float = Field(default=DEFAULT_RATE_LIMIT, gt=0)
    rate_burst: int = Field(default=DEFAULT_RATE_BURST, ge=1)
    rate_max_wait_seconds: float = Field(default=DEFAULT_RATE_MAX_WAIT_SECONDS, ge=0)
    breaker_threshold: int = Field(default=DEFAULT_BREAKER_THRESHOLD, ge=1)
    breaker_cooldown_seconds: float = Field(default=DEFAULT_BREAKER_COOLDOWN_SECONDS, gt=0)
    breaker_max_cooldown_seconds: float = Field(default=DEFAULT_BREAKER_MAX_COOLDOWN_SECONDS, gt=0)
    account_queue_share: int = Field(default=DEFAULT_ACCOUNT_QUEUE_SHARE, ge=1)
    mover_interval_seconds: float = Field(default=DEFAULT_MOVER_INTERVAL_SECONDS, gt=0)

    show_payload_in_flower: bool = False
    # Announce each enqueued job to Flower (a task-sent event, one PUBLISH in the enqueue script).
    send_sent_events: bool = True
    log_format: Literal["console", "json"] = "console"
    log_level: str = "INFO"

    @field_validator("base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"REFOLD_BASE_URL must start with http:// or https://, got {value!r}")
        return value.rstrip("/")

    @field_validator("retry_schedule", mode="before")
    @classmethod
    def _parse_schedule(cls, value: object) -> object:
        # "10,60,300" from the environment reads as naturally as a JSON list "[10, 60, 300]".
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return value

    @field_validator("retry_schedule")
    @classmethod
    def _schedule_positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if not value or any(step <= 0 for step in value):
            raise ValueError(f"REFOLD_RETRY_SCHEDULE needs at least one positive delay, got {value!r}")
        return value

    @model_validator(mode="after")
    def _visibility_covers_time_limit(self) -> Settings:
        needed = self.task_time_limit_seconds + MIN_VISIBILITY_MARGIN_SECONDS
        if self.visibility_timeout_seconds < needed:
            raise ValueError(
                f"REFOLD_VISIBILITY_TIMEOUT_SECONDS={self.visibility_timeout_seconds} must be at least the task "
                f"time limit ({self.task_time_limit_seconds}) + {MIN_VISIBILITY_MARGIN_SECONDS} s, or Redis "
                "would hand a running job to a second worker"
            )
        return self

    @property
    def environment(self) -> Environment:
        """Which Refold environment the key selects, told without revealing the key."""
        return key_environment(self.api_key)

    @property
    def api_key_fingerprint(self) -> str:
        """A short, stable, non-reversible name for the key: names per-key Redis state, safe to log."""
        secret = self.api_key.get_secret_value() if self.api_key else ""
        return hashlib.sha256(secret.encode()).hexdigest()[:12]

    def require_api_key(self) -> SecretStr:
        """The API key, or a clear startup error when it is missing or a placeholder."""
        if self.api_key is None:
            raise ConfigurationError("REFOLD_API_KEY is not set: the worker cannot call Refold without it")
        secret = self.api_key.get_secret_value().strip()
        if secret.lower() in PLACEHOLDER_KEYS or secret.lower().startswith(("<", "your")):
            raise ConfigurationError(
                "REFOLD_API_KEY holds a placeholder, not a key: set it to a Refold test (tk…) or production (pk…) key"
            )
        return self.api_key


def key_environment(api_key: SecretStr | None) -> Environment:
    """``test`` for tk… keys, ``production`` for pk… keys, ``unknown`` otherwise (never the key itself)."""
    if api_key is None:
        return "unknown"
    secret = api_key.get_secret_value()
    if secret.startswith("tk"):
        return "test"
    if secret.startswith("pk"):
        return "production"
    return "unknown"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use and cached."""
    return Settings()
