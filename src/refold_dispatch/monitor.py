"""What ``refold-dispatch status`` reports: one consistent-enough snapshot of the pipeline, read from Redis.

:func:`take_snapshot` only reads (LLEN, LINDEX, ZCARD, ZCOUNT, HGETALL, SCAN): it is safe against a
production Redis and never changes a job. The result is a plain :class:`Snapshot` that the CLI renders as
tables or JSON; the rendering lives in :mod:`refold_dispatch.cli`, the reading here, so both are tested apart.

Where the numbers come from (key names in :mod:`refold_dispatch.keys`):

======================  =========================================================================================
queue depth             ``LLEN`` of the Celery queue list (``REFOLD_QUEUE``)
oldest waiting job      kombu pops from the right, so index -1 is next out: its ``headers.id`` names the job,
                        whose ``created`` field (Redis clock, ms) gives the age
delayed / due now       ``ZCARD`` / ``ZCOUNT -inf..now`` of ``{p}:delayed``
backlogged accounts     ``ZCARD {p}:backlogs``
dead letters            ``ZCARD {p}:dlq``; by reason from the newest entries (bounded, see below)
workers                 the ``{p}:worker:*`` heartbeat hashes (``beat_at``, ``canary_at``, ``stalled``)
flow control            :meth:`~refold_dispatch.flow.FlowControl.snapshot` for the configured API key
======================  =========================================================================================
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from refold_dispatch.config import Settings
from refold_dispatch.dispatcher import redis_location
from refold_dispatch.dlq import DeadLetterQueue
from refold_dispatch.flow import FlowControl
from refold_dispatch.keys import Keys
from refold_dispatch.scheduler import HEARTBEAT_SECONDS
from refold_dispatch.scripts import ScriptContext, Scripts

# Counting dead letters by reason reads entries; beyond this many (newest first) the breakdown is a sample,
# so `status` stays quick even when a long outage left a million dead letters behind.
DLQ_REASON_SCAN_LIMIT = 10_000
# A heartbeat older than three beats means the worker is gone or wedged (its key expires at six).
LATE_BEAT_SECONDS = 3 * HEARTBEAT_SECONDS


@dataclass(frozen=True)
class WorkerStatus:
    """One worker's heartbeat, as ages in seconds (None when the worker has not reported that yet)."""

    hostname: str
    pid: int | None
    beat_age_seconds: float | None
    canary_age_seconds: float | None
    stalled: bool

    @property
    def late(self) -> bool:
        return self.beat_age_seconds is None or self.beat_age_seconds > LATE_BEAT_SECONDS


@dataclass(frozen=True)
class FlowStatus:
    """The shared flow-control state for the configured API key (names as in ``lua/report.lua``)."""

    breaker: str
    open_for_seconds: float | None
    paused_for_seconds: float | None
    rate_factor: float
    consecutive_failures: int
    raw: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Snapshot:
    """Everything ``status`` shows. ``flow`` is None when no API key is configured (the state is per key)."""

    taken_at: float
    redis: str
    queue: str
    queue_depth: int
    oldest_waiting_seconds: float | None
    oldest_waiting_job: str | None
    delayed: int
    delayed_due: int
    backlog_accounts: int
    dead_letters: int
    dead_by_reason: dict[str, int]
    dead_by_reason_partial: bool
    workers: list[WorkerStatus]
    flow: FlowStatus | None
    environment: str

    @property
    def warnings(self) -> list[str]:
        """Things an operator should look at now, in plain words."""
        found: list[str] = []
        if self.queue_depth and not any(not worker.late for worker in self.workers):
            found.append(f"{self.queue_depth} job(s) queued but no live worker is beating")
        for worker in self.workers:
            if worker.stalled:
                found.append(f"worker {worker.hostname} stopped consuming (canary unanswered) and is restarting")
            elif worker.late:
                found.append(f"worker {worker.hostname} has not beaten for over {LATE_BEAT_SECONDS:g} s")
        if self.flow is not None and self.flow.breaker != "closed":
            found.append(f"circuit breaker is {self.flow.breaker.replace('_', '-')}: Refold is failing")
        if self.flow is not None and self.flow.paused_for_seconds:
            found.append(f"every worker is paused for {self.flow.paused_for_seconds:.0f} s after a 429")
        return found

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["workers"] = [{**asdict(worker), "late": worker.late} for worker in self.workers]
        data["warnings"] = self.warnings
        return data

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)


def take_snapshot(settings: Settings, redis_client: redis.Redis, *, now: float | None = None) -> Snapshot:
    """Read the pipeline's state. ``now`` (epoch seconds) defaults to the Redis server's clock, the clock every
    script stamps jobs with, so ages are right even when this machine's clock is off."""
    keys = Keys(settings.key_prefix)
    if now is None:
        seconds, micros = redis_client.time()
        now = seconds + micros / 1_000_000
    now_ms = int(now * 1000)

    with redis_client.pipeline(transaction=False) as pipe:
        pipe.llen(settings.queue)
        pipe.lindex(settings.queue, -1)
        pipe.zcard(keys.delayed)
        pipe.zcount(keys.delayed, "-inf", now_ms)
        pipe.zcard(keys.backlogs)
        depth, oldest_message, delayed, delayed_due, backlogs = pipe.execute()

    oldest_job = job_id_of_message(oldest_message)
    oldest_age: float | None = None
    if oldest_job is not None:
        created = redis_client.hget(keys.job(oldest_job), "created")
        if created is not None:
            oldest_age = max(now - float(created) / 1000, 0.0)

    dead_total, by_reason, partial = _dead_letters_by_reason(settings, redis_client)
    return Snapshot(
        taken_at=now,
        redis=redis_location(settings.redis_url),
        queue=settings.queue,
        queue_depth=int(depth),
        oldest_waiting_seconds=oldest_age,
        oldest_waiting_job=oldest_job,
        delayed=int(delayed),
        delayed_due=int(delayed_due),
        backlog_accounts=int(backlogs),
        dead_letters=dead_total,
        dead_by_reason=by_reason,
        dead_by_reason_partial=partial,
        workers=read_workers(keys, redis_client, now=time.time()),
        flow=read_flow(settings, redis_client, now=now),
        environment=settings.environment,
    )


def job_id_of_message(raw: bytes | str | None) -> str | None:
    """The task id (our job id) in a kombu Redis envelope, or None for anything unreadable."""
    if raw is None:
        return None
    try:
        envelope = json.loads(raw)
    except ValueError:
        return None
    headers = envelope.get("headers") if isinstance(envelope, dict) else None
    job_id = headers.get("id") if isinstance(headers, dict) else None
    return job_id if isinstance(job_id, str) and job_id else None


def read_workers(keys: Keys, redis_client: redis.Redis, *, now: float) -> list[WorkerStatus]:
    """Every worker heartbeat hash, sorted by hostname. Ages use this machine's clock, as the workers do."""
    prefix = keys.worker("")
    names = sorted(_text(name) for name in redis_client.scan_iter(match=keys.worker_pattern, count=500))
    if not names:
        return []
    with redis_client.pipeline(transaction=False) as pipe:
        for name in names:
            pipe.hgetall(name)
        hashes = pipe.execute()
    workers = []
    for name, raw in zip(names, hashes, strict=True):
        fields = {_text(key): _text(value) for key, value in raw.items()}
        if not fields:  # expired between SCAN and HGETALL
            continue
        workers.append(
            WorkerStatus(
                hostname=name.removeprefix(prefix),
                pid=_int_or_none(fields.get("pid")),
                beat_age_seconds=_age(fields.get("beat_at"), now),
                canary_age_seconds=_age(fields.get("canary_at"), now),
                stalled="stalled" in fields,
            )
        )
    return workers


def read_flow(settings: Settings, redis_client: redis.Redis, *, now: float) -> FlowStatus | None:
    """The breaker, pause and rate factor for the configured key; None without a key (unknown, not closed)."""
    if settings.api_key is None or not settings.api_key.get_secret_value().strip():
        return None
    scripts = Scripts(redis_client, ScriptContext.from_settings(settings))
    state = FlowControl(scripts, settings).snapshot()
    breaker = state.get("state", "closed")
    return FlowStatus(
        breaker=breaker,
        # open_until outlives the breaker (a closed breaker keeps its last value), so it counts only while open.
        open_for_seconds=_remaining(state.get("open_until"), now) if breaker != "closed" else None,
        paused_for_seconds=_remaining(state.get("pause_until"), now),
        rate_factor=_float_or_none(state.get("factor")) or 1.0,
        consecutive_failures=_int_or_none(state.get("fails")) or 0,
        # The limiter's schedule (tat) means nothing to an operator.
        raw={key: value for key, value in state.items() if key != "tat"},
    )


def _remaining(until_ms: str | None, now: float) -> float | None:
    """Seconds until a Redis-clock deadline in ms, or None when there is none or it has passed."""
    until = _float_or_none(until_ms)
    if until is None or until <= now * 1000:
        return None
    return (until - now * 1000) / 1000


def _dead_letters_by_reason(settings: Settings, redis_client: redis.Redis) -> tuple[int, dict[str, int], bool]:
    dlq = DeadLetterQueue(settings, redis_client)
    total = dlq.count()
    reasons: Counter[str] = Counter()
    scanned = 0
    for entry in dlq.iter():
        reasons[entry.reason] += 1
        scanned += 1
        if scanned >= DLQ_REASON_SCAN_LIMIT:
            break
    return total, dict(reasons.most_common()), scanned < total


def _age(stamp: str | None, now: float) -> float | None:
    value = _float_or_none(stamp)
    return None if value is None else max(now - value, 0.0)


def _float_or_none(value: str | None) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _int_or_none(value: str | None) -> int | None:
    number = _float_or_none(value)
    return None if number is None else int(number)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
