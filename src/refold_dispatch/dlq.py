"""The dead-letter queue: every job that could not be delivered, with its evidence, ready to replay.

Entries are written by the worker's scripts (``lua/lib.lua: dead_letter``) and read here. Each keeps the whole
job, the reason (``permanent``, ``auth``, ``exhausted``, ``expired``, ``invalid``, ``dependency``), the last
error (status, error code, message, request id), the attempt count, a short attempt history and timestamps.
Retention (``REFOLD_DLQ_RETENTION_SECONDS``) and a size bound (``REFOLD_DLQ_MAX_ENTRIES``) are enforced on
every write and by :meth:`DeadLetterQueue.purge`.

Replay re-enqueues the same job id with the same idempotency key, attempts and age reset; a job the ledger
shows as delivered is never sent again.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import structlog
from pydantic import BaseModel, ConfigDict

from refold_dispatch.config import Settings
from refold_dispatch.errors import DeadLetterNotFoundError
from refold_dispatch.jobs import Job
from refold_dispatch.keys import Keys
from refold_dispatch.message import message_templates, message_values
from refold_dispatch.scripts import ScriptContext, Scripts

# Entries are read from Redis in pages of this many, so listing a large queue never loads it all at once.
_PAGE = 500
# A dead letter for garbage keeps this much of the raw message: enough to identify it, bounded in Redis.
RAW_EVIDENCE_BYTES = 4096

log = structlog.get_logger("refold_dispatch.dlq")


class DeadLetter(BaseModel):
    """One dead letter, as stored."""

    model_config = ConfigDict(extra="allow", frozen=True)

    id: str
    reason: str
    detail: str = ""
    kind: str | None = None
    linked_account_id: str | None = None
    idempotency_key: str | None = None
    attempts: int = 0
    created_at_ms: int | None = None
    dead_at_ms: int
    last_error: dict[str, Any] | None = None
    history: list[dict[str, Any]] = []
    job: dict[str, Any] | None = None
    raw: str | None = None

    @property
    def event(self) -> str | None:
        params = (self.job or {}).get("params") or {}
        value = params.get("event")
        return value if isinstance(value, str) else None

    @property
    def dead_at(self) -> float:
        return self.dead_at_ms / 1000


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which entries an operation applies to; every field left None matches everything."""

    reason: str | None = None
    event: str | None = None
    account: str | None = None
    since: float | None = None  # epoch seconds: dead at or after
    before: float | None = None  # epoch seconds: dead before

    def matches(self, entry: DeadLetter) -> bool:
        return (
            (self.reason is None or entry.reason == self.reason)
            and (self.event is None or entry.event == self.event)
            and (self.account is None or entry.linked_account_id == self.account)
            and (self.since is None or entry.dead_at >= self.since)
            and (self.before is None or entry.dead_at < self.before)
        )


@dataclass(frozen=True)
class ReplayResult:
    """Per id: ``replayed``, ``delivered`` (skipped: already delivered), ``active``, ``conflict``,
    ``not_found`` or ``invalid`` (no job to replay: garbage from the queue)."""

    outcomes: dict[str, str]

    @property
    def replayed(self) -> list[str]:
        return [dead_id for dead_id, outcome in self.outcomes.items() if outcome == "replayed"]


class DeadLetterQueue:
    """Inspect, replay and purge dead letters."""

    def __init__(self, settings: Settings, redis_client: redis.Redis, scripts: Scripts | None = None) -> None:
        self.settings = settings
        self.redis = redis_client
        self.keys = Keys(settings.key_prefix)
        self.scripts = scripts or Scripts(redis_client, ScriptContext.from_settings(settings))

    def count(self) -> int:
        return int(self.redis.zcard(self.keys.dlq_index))

    def iter(self, where: DeadLetterFilter | None = None, *, newest_first: bool = True) -> Iterator[DeadLetter]:
        where = where or DeadLetterFilter()
        low = "-inf" if where.since is None else where.since * 1000
        high = "+inf" if where.before is None else f"({where.before * 1000}"
        offset = 0
        while True:
            if newest_first:
                ids = self.redis.zrevrangebyscore(self.keys.dlq_index, high, low, start=offset, num=_PAGE)
            else:
                ids = self.redis.zrangebyscore(self.keys.dlq_index, low, high, start=offset, num=_PAGE)
            if not ids:
                return
            offset += len(ids)
            for raw in self.redis.hmget(self.keys.dlq_entries, list(ids)):  # type: ignore[arg-type]
                if raw is None:
                    continue
                entry = DeadLetter.model_validate_json(raw)
                if where.matches(entry):
                    yield entry

    def list(self, where: DeadLetterFilter | None = None, *, limit: int | None = 100) -> list[DeadLetter]:
        entries: list[DeadLetter] = []
        for entry in self.iter(where):
            entries.append(entry)
            if limit is not None and len(entries) >= limit:
                break
        return entries

    def get(self, dead_id: str) -> DeadLetter:
        raw = self.redis.hget(self.keys.dlq_entries, dead_id)
        if raw is None:
            raise DeadLetterNotFoundError(f"no dead letter with id {dead_id!r}")
        return DeadLetter.model_validate_json(raw)

    def stats(self) -> dict[str, Any]:
        by_reason: Counter[str] = Counter()
        by_event: Counter[str] = Counter()
        oldest: float | None = None
        for entry in self.iter(newest_first=False):
            by_reason[entry.reason] += 1
            by_event[entry.event or entry.kind or "?"] += 1
            oldest = entry.dead_at if oldest is None else min(oldest, entry.dead_at)
        return {
            "total": sum(by_reason.values()),
            "by_reason": dict(by_reason),
            "by_event": dict(by_event),
            "oldest_dead_at": oldest,
        }

    def replay(self, ids: Sequence[str]) -> ReplayResult:
        outcomes: dict[str, str] = {}
        entries: list[DeadLetter] = []
        for dead_id in ids:
            try:
                entries.append(self.get(dead_id))
            except DeadLetterNotFoundError:
                outcomes[dead_id] = "not_found"
        # Upserts first, each kind in the given order: an event replayed before the dead upsert it follows would
        # find that upsert still dead and go straight back here (``dependency``). Its events die in the same
        # script as the upsert, with the same timestamp, so "oldest first" alone does not order them.
        for entry in sorted(entries, key=lambda entry: entry.kind != "upsert"):
            outcomes[entry.id] = self._replay_one(entry)
        return ReplayResult({dead_id: outcomes[dead_id] for dead_id in ids})

    def replay_matching(self, where: DeadLetterFilter) -> ReplayResult:
        # Oldest first (upserts before events, see replay): upserts of one account keep their order.
        ids = [entry.id for entry in self.iter(where, newest_first=False)]
        return self.replay(ids)

    def _replay_one(self, entry: DeadLetter) -> str:
        if entry.job is None:
            return "invalid"
        job = Job.model_validate(entry.job)
        stored = self.redis.hmget(self.keys.job(job.id), "seq", "after", "after_job")
        seq, after, after_job = (_text(value) for value in stored)
        body, described = message_values(job, show_payload=self.settings.show_payload_in_flower)
        result = self.scripts.run(
            "replay",
            [
                job.id,
                job.idempotency_key,
                job.fingerprint(),
                job.kind,
                job.linked_account_id,
                job.to_json(),
                body,
                described,
                seq,
                after,
                after_job,
                message_templates(self.settings.queue)[job.kind],
            ],
        )
        outcome = _text(result)
        if outcome == "delivered":
            # Never send twice: the ledger shows it was delivered, so the dead letter has served its purpose.
            self._remove([entry.id])
        return outcome

    def purge(self, ids: Sequence[str] | None = None, *, where: DeadLetterFilter | None = None) -> int:
        """Delete the given ids, or every entry matching ``where`` (all, when both are None)."""
        if ids is None:
            ids = [entry.id for entry in self.iter(where)]
        return self._remove(ids)

    def _remove(self, ids: Sequence[str]) -> int:
        removed = 0
        for start in range(0, len(ids), _PAGE):
            chunk = list(ids[start : start + _PAGE])
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.zrem(self.keys.dlq_index, *chunk)
                pipe.hdel(self.keys.dlq_entries, *chunk)
                removed += int(pipe.execute()[0])
        return removed


def describe_entry(entry: DeadLetter) -> dict[str, Any]:
    """A dead letter for display: the job without credential values (``your_app.auth_credentials``)."""
    shown = entry.model_dump(mode="json")
    params = (shown.get("job") or {}).get("params") or {}
    your_app = params.get("your_app")
    if isinstance(your_app, dict) and isinstance(your_app.get("auth_credentials"), dict):
        your_app["auth_credentials"] = dict.fromkeys(your_app["auth_credentials"], "***")
    return shown


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)


def store_invalid(
    scripts: Scripts, dead_id: str, why: str, raw: bytes, *, task: str | None = None, now: float | None = None
) -> None:
    """Dead-letter a message that is not a job we can deliver, keeping its (truncated) raw body as evidence."""
    entry: dict[str, Any] = {
        "id": dead_id,
        "reason": "invalid",
        "detail": why,
        "kind": None,
        "task": task,
        "attempts": 0,
        "dead_at_ms": int((time.time() if now is None else now) * 1000),
        "raw": raw[:RAW_EVIDENCE_BYTES].decode("utf-8", "replace"),
        "raw_bytes": len(raw),
        "history": [],
        "last_error": None,
        "job": None,
    }
    scripts.run("invalid", [dead_id, json.dumps(entry)])
    log.warning("dead_lettered_invalid", dead_letter_id=dead_id, detail=why, task=task, raw_bytes=len(raw))
