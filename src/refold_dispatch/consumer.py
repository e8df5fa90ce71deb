"""A Celery consumer that dead-letters what it cannot run, instead of dropping it.

Celery logs and discards a message it cannot decode, one for an unknown task, and one that is not a task at
all. Each of those may be a job someone meant to send, so before Celery discards it we keep it in the
dead-letter queue as ``invalid`` with its raw body (truncated) as evidence. The worker keeps consuming.

One layer further down, kombu's Redis transport parses what it pops off the queue before Celery sees it: an
item that is not JSON, or JSON that is not a kombu envelope, raises inside the event loop and stops the worker
("Unrecoverable error"), losing the popped item. :class:`RedisTransport` (the worker's ``broker_transport``)
checks each popped item first and dead-letters garbage the same way, so one bad LPUSH cannot stop consumption,
and survives the teardown of a lost connection while a task is in flight (see :class:`DeadLetteringChannel`).
"""

from __future__ import annotations

import uuid
from functools import cache
from queue import Empty
from typing import Any

import redis
import structlog
from celery.worker.consumer import Consumer
from celery.worker.control import control_command
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

from refold_dispatch.config import get_settings
from refold_dispatch.dlq import store_invalid
from refold_dispatch.scripts import ScriptContext, Scripts

log = structlog.get_logger("refold_dispatch.consumer")


@cache
def _scripts() -> Scripts:
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
    return Scripts(client, ScriptContext.from_settings(settings))


def _raw(message: Any) -> bytes:
    body = getattr(message, "body", b"")
    if isinstance(body, str):
        return body.encode("utf-8", "replace")
    return bytes(body) if body is not None else b""


def dead_letter_message(message: Any, why: str) -> None:
    """Keep an undeliverable message as an ``invalid`` dead letter; never raises."""
    headers = getattr(message, "headers", None) or {}
    task = headers.get("task") if isinstance(headers, dict) else None
    dead_id = f"invalid-{uuid.uuid4()}"
    try:
        store_invalid(_scripts(), dead_id, why, _raw(message), task=str(task) if task else None)
    except Exception:  # dead-lettering garbage must never take the consumer down
        log.exception("dead_letter_invalid_failed", detail=why)


class DeadLetteringConsumer(Consumer):
    """Celery's consumer, dead-lettering what it cannot run, with Celery's task events off (see ``events``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # Task events come from our scripts, in the same round trip as each step (refold_dispatch.events);
        # Celery's would reach Flower twice. Even with -E: worker events (heartbeats) stay Celery's.
        kwargs["task_events"] = False
        super().__init__(*args, **kwargs)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        dead_letter_message(message, f"cannot decode message: {type(exc).__name__}: {exc}")
        super().on_decode_error(message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        dead_letter_message(message, "not a Celery task message")
        super().on_unknown_message(body, message)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter_message(message, f"unknown task: {exc}")
        super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        dead_letter_message(message, f"invalid task message: {exc}")
        super().on_invalid_task(body, message, exc)


@control_command()  # replaces Celery's command of the same name in this worker
def enable_events(state: Any) -> dict[str, str]:
    """Flower sends ``enable_events`` every few seconds. Task events are always on here, published by our
    scripts; switching Celery's on as well would show every step twice."""
    return {"ok": "task events are always on (refold-dispatch publishes them with each step)"}


def envelope_problem(payload: Any, channel: Any) -> str | None:
    """Why ``payload`` (a popped, JSON-decoded item) is not a kombu envelope the transport can handle, or None."""
    if not isinstance(payload, dict):
        return f"not a kombu message envelope: a JSON {type(payload).__name__}"
    properties = payload.get("properties")
    props = properties if isinstance(properties, dict) else {}
    info = props.get("delivery_info")
    headers = payload.get("headers")
    checks = (
        (isinstance(properties, dict), "no properties object"),
        (isinstance(props.get("delivery_tag"), str), "no delivery_tag"),
        (isinstance(info, dict) and "exchange" in info and "routing_key" in info, "no delivery_info routing"),
        (headers is None or isinstance(headers, dict), "headers is not an object"),
    )
    for passed, problem in checks:
        if not passed:
            return f"not a kombu message envelope: {problem}"
    try:
        channel.Message(payload, channel=channel)
    except Exception as exc:  # what kombu would raise in the event loop
        return f"cannot decode message envelope: {type(exc).__name__}: {exc}"
    return None


def checked_item(item: bytes | str, channel: Any) -> dict[str, Any] | None:
    """The popped item as an envelope, or None after dead-lettering it as ``invalid`` (never raises)."""
    raw = item.encode("utf-8", "replace") if isinstance(item, str) else bytes(item)
    try:
        payload = loads(bytes_to_str(item))
    except Exception as exc:  # not JSON (or not UTF-8)
        _store_raw(raw, f"cannot decode message: not JSON: {type(exc).__name__}: {exc}")
        return None
    why = envelope_problem(payload, channel)
    if why is not None:
        _store_raw(raw, why)
        return None
    checked: dict[str, Any] = payload
    return checked


def _store_raw(raw: bytes, why: str) -> None:
    try:
        store_invalid(_scripts(), f"invalid-{uuid.uuid4()}", why, raw)
    except Exception:  # dead-lettering garbage must never take the consumer down
        log.exception("dead_letter_invalid_failed", detail=why)


_KOMBU_CHANNEL: Any = kombu_redis.Channel  # kombu's stubs do not describe the Redis channel's internals


class DeadLetteringChannel(kombu_redis.Channel):
    """kombu's Redis channel, checking every popped item before it is parsed into a message (see module doc).

    It also keeps working after a lost connection is torn down. On a broker connection error Celery first
    ``collect()``s the connection (which detaches the transport from its client), then ``close()``s it; closing
    the channel restores unacked messages, and acks of tasks still running arrive later on this channel. Both
    need a new connection pool, whose parameters kombu reads from the detached client: an ``AttributeError``
    that is not a connection error, so it escaped Celery's reconnect and stopped the worker whenever a task
    was in flight when Redis went away. The channel remembers its connection parameters instead.
    """

    _sync_connparams: dict[str, Any] | None = None
    _sync_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        # kombu builds a new redis-py client for every publish, ack and Flower event; its constructor was a tenth
        # of a busy worker's CPU (bench/profile_delivery --mode pyspy). A client is only a handle on the
        # connection pool, and thread-safe, so one per pool serves them all; a reconnect makes a new pool.
        if asynchronous:
            return _KOMBU_CHANNEL._create_client(self, asynchronous=True)
        this: Any = self
        client = self._sync_client
        if client is None or client.connection_pool is not this.pool:
            client = self._sync_client = _KOMBU_CHANNEL._create_client(self)
        return client

    def _connparams(self, asynchronous: bool = False) -> Any:
        this: Any = self
        if not asynchronous and this.connection.client is None and self._sync_connparams is not None:
            return dict(self._sync_connparams)
        params = _KOMBU_CHANNEL._connparams(self, asynchronous=asynchronous)
        if not asynchronous:
            self._sync_connparams = dict(params)
        return params

    def _brpop_read(self, **options: Any) -> bool:
        # kombu 5.x's _brpop_read, with the item checked instead of ``loads`` raising in the event loop.
        this: Any = self  # kombu's stubs do not describe the Redis channel's internals
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except this.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            this._queue_cycle.rotate(dest)
            payload = checked_item(item, self)
            if payload is not None:
                self.connection._deliver(payload, dest)
            return True
        finally:
            self._in_poll = None
            flush = getattr(self, "_flush_brpop_reauth", None)
            if flush is not None:
                flush()

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        # The polling path (basic_get and loops without an event hub): skip garbage, return the next envelope.
        this: Any = self
        while True:
            item = None
            with self.conn_or_acquire() as client:
                for pri in self.priority_steps:
                    item = client.rpop(this._q_for_pri(queue, pri))
                    if item:
                        break
                expire = getattr(self, "_maybe_update_queues_expire", None)
                if expire is not None:
                    expire(client, queue)
            if not item:
                raise Empty()
            payload = checked_item(item, self)
            if payload is not None:
                return payload


class RedisTransport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`DeadLetteringChannel` (``broker_transport`` of the worker app)."""

    Channel = DeadLetteringChannel
