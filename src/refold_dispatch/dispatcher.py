"""The enqueue API web apps call: validate, claim the idempotency key, store and publish, in one round trip.

``Dispatcher`` (threads) and ``AsyncDispatcher`` (asyncio) share job building (:mod:`refold_dispatch.jobs`),
message building (:mod:`refold_dispatch.message`) and the ``enqueue`` script; they differ only in the Redis
client. Neither imports Celery, so a web process pays nothing for the worker side.

Guarantees: a :class:`Receipt` is returned only after Redis has stored the job and its message; invalid input
raises :class:`~refold_dispatch.errors.ValidationError` before Redis is touched; the same idempotency key again
returns the first job's receipt with ``duplicate=True`` (or raises
:class:`~refold_dispatch.errors.IdempotencyConflictError` if the job differs); an unreachable Redis raises
:class:`~refold_dispatch.errors.EnqueueError` within about ``2 x REFOLD_REDIS_SOCKET_TIMEOUT``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio
from redis.backoff import NoBackoff
from redis.retry import Retry

from refold_dispatch.config import Settings, get_settings
from refold_dispatch.errors import EnqueueError, IdempotencyConflictError, PartialEnqueueError
from refold_dispatch.jobs import Job, trigger_event_job, upsert_linked_account_job
from refold_dispatch.message import (
    TEMPLATE_KINDS,
    event_templates,
    events_channel,
    message_templates,
    message_values,
    sent_events_envelope,
)
from refold_dispatch.scripts import AsyncScripts, ScriptArg, ScriptContext, Scripts

# One retry on a dropped connection: the enqueue script is idempotent (same job id, same key), so a retry
# after a timeout that did store the job answers "duplicate" with the same job id rather than storing twice.
_REDIS_RETRIES = 1
_NEW, _DUPLICATE, _CONFLICT = 0, 1, 2
# Jobs per call of the enqueue script in enqueue_many. Redis runs one script at a time, so a call stays short
# (about 3 ms) for other clients; a batch of any size still takes one round trip (see Scripts.run_many).
ENQUEUE_BATCH = 50


@dataclass(frozen=True)
class Receipt:
    """Proof that a job is stored. ``duplicate`` is True when the key was already enqueued."""

    job_id: str
    idempotency_key: str
    duplicate: bool = False


def redis_location(url: str) -> str:
    """host:port/db of a Redis URL, without the password, for error messages."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}{parts.path or '/0'}"


def redis_client_options(settings: Settings) -> dict[str, Any]:
    """Connection options for the web-request path: bounded waits, one retry, checked connections."""
    return {
        "socket_timeout": settings.redis_socket_timeout,
        "socket_connect_timeout": settings.redis_connect_timeout,
        "retry": Retry(NoBackoff(), _REDIS_RETRIES),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        "health_check_interval": 30,
    }


def _job_args(job: Job, show_payload: bool) -> list[ScriptArg]:
    """One job's eight arguments to the ``enqueue`` script: the record, and its own values in the message."""
    body, described = message_values(job, show_payload=show_payload)
    return [
        job.id,
        job.idempotency_key,
        job.fingerprint(),
        job.kind,
        job.linked_account_id,
        job.to_json(),
        body,
        described,
    ]


def _checked_job(job: object) -> Job:
    if not isinstance(job, Job):
        raise TypeError(f"enqueue takes Job objects (from event_job / account_job), not {type(job).__name__}")
    return job


def _checked_jobs(jobs: Iterable[Job]) -> Iterable[Job]:
    """A list's items checked before anything is sent; a generator's as they are taken (a bad one stops the
    stream like a row that does not validate)."""
    if isinstance(jobs, Sequence):
        for job in jobs:
            _checked_job(job)
        return jobs
    return map(_checked_job, jobs)


class _EnqueueStream:
    """The ``enqueue`` script calls for a stream of checked jobs, ``ENQUEUE_BATCH`` jobs per call, built one call at a
    time: the first call is on its way to Redis while the next is built, and when ``jobs`` is lazy (a generator
    building jobs from rows) so is the building of its jobs. If taking a job raises, the jobs before it still go
    out and the stream ends there; ``stopped`` keeps the position and the exception."""

    def __init__(self, jobs: Iterable[Job], settings: Settings, events_to: str) -> None:
        self._jobs = iter(jobs)
        self._settings = settings
        self._events_to = events_to
        self.taken: list[Job] = []
        self.stopped: tuple[int, Exception] | None = None

    def calls(self) -> Iterator[list[ScriptArg]]:
        events_to = self._events_to
        envelope_head, envelope_tail = sent_events_envelope() if events_to else ("", "")
        message_texts = message_templates(self._settings.queue)
        event_texts = event_templates(self._settings.queue) if events_to else {}
        show_payload = self._settings.show_payload_in_flower
        while self.stopped is None:
            batch = self._next_batch()
            if not batch:
                return
            self.taken += batch
            kinds = {job.kind for job in batch}
            args: list[ScriptArg] = [events_to, envelope_head, envelope_tail]
            # Only the templates this call's jobs use ('' for the others), in the order the script takes them.
            args += [message_texts[kind] if kind in kinds else "" for kind in TEMPLATE_KINDS]
            args += [event_texts.get(kind, "") if kind in kinds else "" for kind in TEMPLATE_KINDS]
            for job in batch:
                args += _job_args(job, show_payload)
            yield args

    def _next_batch(self) -> list[Job]:
        batch: list[Job] = []
        try:
            for job in self._jobs:
                batch.append(job)
                if len(batch) == ENQUEUE_BATCH:
                    break
        except Exception as exc:  # the caller's iterable failed: what came before it is still enqueued
            self.stopped = (len(self.taken) + len(batch), exc)
        return batch

    def receipts(self, replies: Sequence[Any]) -> list[Receipt]:
        """Receipts from the script's replies; raises for a stop or a conflict once every reply is read."""
        receipts, conflict = _receipts(self.taken, replies)
        if self.stopped is not None:
            position, cause = self.stopped
            raise PartialEnqueueError(receipts, position, cause, conflict) from cause
        if conflict is not None:
            raise conflict
        return receipts


def redis_db(client: redis.Redis | redis.asyncio.Redis) -> int:
    """The database number a client talks to (kombu's event channels are named after it)."""
    return int(str(client.connection_pool.connection_kwargs.get("db", 0) or 0))


def _events_to(settings: Settings, client: redis.Redis | redis.asyncio.Redis) -> str:
    """The channel for Flower's ``task-sent`` events, or "" when they are switched off."""
    return events_channel(redis_db(client)) if settings.send_sent_events else ""


def _receipts(jobs: Sequence[Job], replies: Sequence[Any]) -> tuple[list[Receipt], IdempotencyConflictError | None]:
    """Receipts from the script's replies (a flat status, job id pair per job, ``ENQUEUE_BATCH`` jobs per
    reply), and the first conflict among them. An error reply raises."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    answers = [answer for reply in replies for answer in reply]
    receipts: list[Receipt] = []
    conflict: IdempotencyConflictError | None = None
    for n, job in enumerate(jobs):
        status, first_id = int(answers[2 * n]), answers[2 * n + 1]
        job_id = first_id.decode() if isinstance(first_id, bytes) else str(first_id)
        if status == _CONFLICT:
            conflict = conflict or IdempotencyConflictError(job.idempotency_key, job_id)
        receipts.append(Receipt(job_id=job_id, idempotency_key=job.idempotency_key, duplicate=status == _DUPLICATE))
    return receipts, conflict


def _enqueue_error(settings: Settings, exc: Exception, jobs: Sequence[Job]) -> EnqueueError:
    where = redis_location(settings.redis_url)
    keys = [job.idempotency_key for job in jobs]
    if isinstance(exc, redis.ConnectionError) and "connecting" in str(exc):
        outcome = "nothing was enqueued"  # the command never left this process
    else:
        # A timeout or a connection dropped mid-command: Redis may have run the script. Enqueueing again with
        # the same idempotency key is safe either way: a stored job answers duplicate=True.
        outcome = "the job may or may not be stored: enqueue it again with the same idempotency key"
    return EnqueueError(f"Redis at {where} failed: {type(exc).__name__}: {exc}; {outcome}", idempotency_keys=keys)


class _JobBuilding:
    """Job building shared by both dispatchers: validation happens here, before any I/O."""

    settings: Settings

    def event_job(
        self,
        event: str,
        linked_account_id: str,
        payload: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        config_id: str | None = None,
        slug: str | None = None,
        instance_tag: str | None = None,
    ) -> Job:
        return trigger_event_job(
            event,
            linked_account_id,
            payload,
            idempotency_key=idempotency_key,
            config_id=config_id,
            slug=slug,
            instance_tag=instance_tag,
            max_payload_bytes=self.settings.max_payload_bytes,
        )

    def account_job(
        self,
        linked_account_id: str,
        *,
        name: str | None = None,
        udf: dict[str, Any] | None = None,
        your_app: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Job:
        return upsert_linked_account_job(
            linked_account_id, name=name, udf=udf, your_app=your_app, idempotency_key=idempotency_key
        )


class Dispatcher(_JobBuilding):
    """Enqueue jobs from synchronous code (Django, Flask, scripts). Safe to share across threads."""

    def __init__(self, settings: Settings | None = None, *, redis_client: redis.Redis | None = None) -> None:
        self.settings = settings or get_settings()
        self._owns_client = redis_client is None
        self.redis = redis_client or redis.Redis.from_url(
            self.settings.redis_url, **redis_client_options(self.settings)
        )
        self.scripts = Scripts(self.redis, ScriptContext.from_settings(self.settings))
        self._events_to = _events_to(self.settings, self.redis)

    @classmethod
    def from_env(cls) -> Dispatcher:
        return cls(get_settings())

    def trigger_event(
        self,
        event: str,
        linked_account_id: str,
        payload: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        config_id: str | None = None,
        slug: str | None = None,
        instance_tag: str | None = None,
    ) -> Receipt:
        """Enqueue ``POST /event/trigger`` for one linked account."""
        job = self.event_job(
            event,
            linked_account_id,
            payload,
            idempotency_key=idempotency_key,
            config_id=config_id,
            slug=slug,
            instance_tag=instance_tag,
        )
        return self.enqueue(job)

    def upsert_linked_account(
        self,
        linked_account_id: str,
        *,
        name: str | None = None,
        udf: dict[str, Any] | None = None,
        your_app: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Receipt:
        """Enqueue ``PUT /linked-account`` (create or update)."""
        job = self.account_job(
            linked_account_id, name=name, udf=udf, your_app=your_app, idempotency_key=idempotency_key
        )
        return self.enqueue(job)

    def enqueue(self, job: Job) -> Receipt:
        """Store and publish a built job (see :meth:`event_job` / :meth:`account_job`)."""
        stream = _EnqueueStream([_checked_job(job)], self.settings, self._events_to)
        try:
            return stream.receipts([self.scripts.run("enqueue", next(stream.calls()))])[0]
        except redis.RedisError as exc:
            raise _enqueue_error(self.settings, exc, [job]) from exc

    def enqueue_many(self, jobs: Iterable[Job]) -> list[Receipt]:
        """Store and publish many jobs, ``ENQUEUE_BATCH`` per script call, all calls streamed in one round trip,
        with the same per-job guarantees; the receipts in the jobs' order.

        ``jobs`` may be a list or a generator (``dispatcher.event_job(...) for row in rows``): a generator's jobs
        are built while Redis stores the ones before them. Each job is claimed and stored atomically on its own;
        the batch is not all-or-nothing. A conflicting key raises :class:`IdempotencyConflictError` after the
        other jobs are stored; a generator that raises (a row that does not validate) raises
        :class:`PartialEnqueueError`, whose receipts are the jobs before that row, all stored. A list is
        checked whole first: an item that is not a job raises ``TypeError`` before Redis is touched.
        """
        if isinstance(jobs, Sequence) and not jobs:
            return []  # nothing to store: Redis is not touched
        stream = _EnqueueStream(_checked_jobs(jobs), self.settings, self._events_to)
        try:
            return stream.receipts(self.scripts.run_many("enqueue", stream.calls()))
        except redis.RedisError as exc:  # also an error reply of a script call (raised by receipts)
            raise _enqueue_error(self.settings, exc, stream.taken) from exc

    def close(self) -> None:
        if self._owns_client:
            self.redis.close()

    def __enter__(self) -> Dispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncDispatcher(_JobBuilding):
    """Enqueue jobs from asyncio code (FastAPI, Starlette). One instance per event loop."""

    def __init__(self, settings: Settings | None = None, *, redis_client: redis.asyncio.Redis | None = None) -> None:
        self.settings = settings or get_settings()
        self._owns_client = redis_client is None
        self.redis = redis_client or redis.asyncio.Redis.from_url(
            self.settings.redis_url, **redis_client_options(self.settings)
        )
        self.scripts = AsyncScripts(self.redis, ScriptContext.from_settings(self.settings))
        self._events_to = _events_to(self.settings, self.redis)

    @classmethod
    def from_env(cls) -> AsyncDispatcher:
        return cls(get_settings())

    async def trigger_event(
        self,
        event: str,
        linked_account_id: str,
        payload: dict[str, Any] | None = None,
        *,
        idempotency_key: str | None = None,
        config_id: str | None = None,
        slug: str | None = None,
        instance_tag: str | None = None,
    ) -> Receipt:
        job = self.event_job(
            event,
            linked_account_id,
            payload,
            idempotency_key=idempotency_key,
            config_id=config_id,
            slug=slug,
            instance_tag=instance_tag,
        )
        return await self.enqueue(job)

    async def upsert_linked_account(
        self,
        linked_account_id: str,
        *,
        name: str | None = None,
        udf: dict[str, Any] | None = None,
        your_app: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> Receipt:
        job = self.account_job(
            linked_account_id, name=name, udf=udf, your_app=your_app, idempotency_key=idempotency_key
        )
        return await self.enqueue(job)

    async def enqueue(self, job: Job) -> Receipt:
        stream = _EnqueueStream([_checked_job(job)], self.settings, self._events_to)
        try:
            return stream.receipts([await self.scripts.run("enqueue", next(stream.calls()))])[0]
        except redis.RedisError as exc:
            raise _enqueue_error(self.settings, exc, [job]) from exc

    async def enqueue_many(self, jobs: Iterable[Job]) -> list[Receipt]:
        """:meth:`Dispatcher.enqueue_many` on asyncio."""
        if isinstance(jobs, Sequence) and not jobs:
            return []  # nothing to store: Redis is not touched
        stream = _EnqueueStream(_checked_jobs(jobs), self.settings, self._events_to)
        try:
            return stream.receipts(await self.scripts.run_many("enqueue", stream.calls()))
        except redis.RedisError as exc:  # also an error reply of a script call (raised by receipts)
            raise _enqueue_error(self.settings, exc, stream.taken) from exc

    async def aclose(self) -> None:
        if self._owns_client:
            await self.redis.aclose()

    async def __aenter__(self) -> AsyncDispatcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
