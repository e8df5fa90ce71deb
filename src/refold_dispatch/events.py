"""Celery's task events for Flower, published by our own scripts instead of Celery's event dispatcher.

Flower follows a task through the events a worker publishes: ``task-received``, ``task-started``, then
``task-succeeded``, ``task-retried`` or ``task-failed``. Celery's dispatcher publishes each one separately from
the worker's main process, building a Redis client for each (kombu); in bench/ that was a quarter of a prefork
worker's CPU and the main process was the bottleneck. So the worker runs with Celery's task events off, and
the scripts that record each step publish the events of that step in the same round trip (``begin``: received
and started; ``finish``: succeeded; ``reschedule``: retried; ``deadletter``: failed). The events are exactly
what Celery would publish (a test feeds them to ``celery.events.state.State``, which Flower uses), so Flower,
``celery events`` and any other monitor see no difference. The API key is in no event: tasks carry a job id.

``task-sent`` at enqueue is :func:`refold_dispatch.message.sent_event` (templated: it is on the web request path),
published by the enqueue script as one :func:`multi_envelope` per script call.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass, field

# Flower shows a result or an error verbatim; a long one is cut here.
MAX_SHOWN_CHARS = 1024


def utcoffset() -> int:
    """Celery's definition (``celery.utils.time.utcoffset``), without importing Celery on the web path."""
    return (time.altzone if time.daylight else time.timezone) // 3600


def events_channel(redis_db: int, event_type: str) -> str:
    """Where kombu's Redis transport publishes an event: the ``celeryev`` fanout exchange, one topic per type."""
    return f"/{redis_db}.celeryev/{event_type.replace('-', '.')}"


def event_dict(event_type: str, hostname: str, fields: dict[str, object], *, timestamp: float) -> dict[str, object]:
    """One Celery event's fields, as ``celery.events.Event`` makes them."""
    return {
        "hostname": hostname,
        "utcoffset": utcoffset(),
        "pid": os.getpid(),
        "clock": 0,  # Celery's Lamport clock orders events of one worker; timestamps do it just as well here
        **fields,
        "timestamp": timestamp,
        "type": event_type,
    }


def _envelope(body: str, hostname: str, routing_key: str, delivery_tag: str, *, base64_body: bool) -> str:
    properties: dict[str, object] = {
        "delivery_mode": 1,
        "delivery_info": {"exchange": "celeryev", "routing_key": routing_key},
        "priority": 0,
    }
    if base64_body:
        properties["body_encoding"] = "base64"
    properties["delivery_tag"] = delivery_tag
    envelope = {
        "body": body,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"hostname": hostname},
        "properties": properties,
    }
    return json.dumps(envelope)


def event_envelope(event_type: str, hostname: str, fields: dict[str, object], *, timestamp: float) -> str:
    """One Celery event in kombu's Redis envelope, as ``EventDispatcher.send`` would publish it."""
    event = event_dict(event_type, hostname, fields, timestamp=timestamp)
    body = base64.b64encode(json.dumps(event).encode()).decode()
    tag = f"{fields.get('uuid', '')}.{event_type}"
    return _envelope(body, hostname, event_type.replace("-", "."), tag, base64_body=True)


_BODY_MARK = "@refold-events-body@"


def multi_envelope(hostname: str, events_json: str) -> str:
    """Many events in one message, as Celery's dispatcher flushes a buffered group (routing key
    ``task.multi``, the body a JSON list: ``EventReceiver`` and Flower read each event of it). The body is
    kept as text (no base64; kombu decodes a body only when ``body_encoding`` says so), so the enqueue script
    can join the events of the jobs it stored into one list and publish them with one PUBLISH."""
    return _envelope(events_json, hostname, "task.multi", "refold-dispatch.task-multi", base64_body=False)


def multi_envelope_parts(hostname: str) -> tuple[str, str]:
    """:func:`multi_envelope` split around its body: ``head + <JSON string of the list> + tail``."""
    head, _, tail = multi_envelope(hostname, _BODY_MARK).partition(json.dumps(_BODY_MARK))
    return head, tail


@dataclass(frozen=True)
class TaskEvents:
    """The events of one task execution, as (channel, message) pairs ready for the scripts' trailing arguments.

    Built by ``tasks.py`` from Celery's request (hostname, task name, argument reprs); the delivery code only
    asks for the events of the step it records, so it stays free of Celery.
    """

    redis_db: int
    hostname: str
    task: str
    task_id: str
    args_repr: str
    kwargs_repr: str
    retries: int = 0
    began: float = field(default_factory=time.monotonic)  # for the runtime Flower shows

    def _pair(self, event_type: str, fields: dict[str, object]) -> list[str]:
        message = event_envelope(event_type, self.hostname, {"uuid": self.task_id, **fields}, timestamp=time.time())
        return [events_channel(self.redis_db, event_type), message]

    def started(self) -> list[str]:
        """``task-received`` and ``task-started``: the task reached a worker process, which started it."""
        received: dict[str, object] = {
            "name": self.task,
            "args": self.args_repr,
            "kwargs": self.kwargs_repr,
            "root_id": self.task_id,
            "parent_id": None,
            "retries": self.retries,
            "eta": None,
            "expires": None,
        }
        return [*self._pair("task-received", received), *self._pair("task-started", {})]

    def succeeded(self, result: object) -> list[str]:
        runtime = time.monotonic() - self.began
        return self._pair("task-succeeded", {"result": repr(result)[:MAX_SHOWN_CHARS], "runtime": runtime})

    def retried(self, reason: str) -> list[str]:
        return self._pair("task-retried", {"exception": f"Retry({reason[:MAX_SHOWN_CHARS]!r})", "traceback": ""})

    def failed(self, exception: str) -> list[str]:
        return self._pair("task-failed", {"exception": exception[:MAX_SHOWN_CHARS], "traceback": ""})
