"""Task events published by our scripts: the same fields, names and envelope as Celery's own dispatcher."""

from __future__ import annotations

import base64
import json
from typing import Any

from celery.events import Event

from refold_dispatch.delivery import Outcome, closing_events
from refold_dispatch.events import TaskEvents, event_envelope, events_channel


def decode(message: str) -> tuple[dict[str, Any], dict[str, Any]]:
    envelope = json.loads(message)
    return envelope, json.loads(base64.b64decode(envelope["body"]))


def make_events() -> TaskEvents:
    return TaskEvents(
        redis_db=3,
        hostname="w1@host",
        task="refold.trigger_event",
        task_id="9f1c0c62-1b53-4bd6-9a5f-0c1f1c3d2e4f",
        args_repr="('9f1c0c62-1b53-4bd6-9a5f-0c1f1c3d2e4f',)",
        kwargs_repr="{'account': 'acme'}",
    )


def test_events_carry_the_fields_celery_sends_for_each_type() -> None:
    events = make_events()
    messages = {
        "task-received": events.started()[1],
        "task-started": events.started()[3],
        "task-succeeded": events.succeeded({"outcome": "delivered"})[1],
        "task-retried": events.retried("retry: 503")[1],
        "task-failed": events.failed("DeadLetteredError('x')")[1],
    }
    # What celery.worker (strategy.py, request.py) passes for each type, on top of Event()'s own fields.
    celery_fields = {
        "task-received": {"uuid", "name", "args", "kwargs", "root_id", "parent_id", "retries", "eta", "expires"},
        "task-started": {"uuid"},
        "task-succeeded": {"uuid", "result", "runtime"},
        "task-retried": {"uuid", "exception", "traceback"},
        "task-failed": {"uuid", "exception", "traceback"},
    }
    base = set(Event("task-started", hostname="h", utcoffset=0, pid=1, clock=0))
    for event_type, message in messages.items():
        envelope, event = decode(message)
        assert event["type"] == event_type
        assert set(event) == base | celery_fields[event_type], event_type
        assert (event["uuid"], event["hostname"]) == (events.task_id, "w1@host")
        assert envelope["headers"] == {"hostname": "w1@host"}
        assert envelope["properties"]["delivery_info"] == {
            "exchange": "celeryev",
            "routing_key": event_type.replace("-", "."),
        }
    assert events.started()[0] == "/3.celeryev/task.received" == events_channel(3, "task-received")


def test_each_outcome_ends_the_task_as_celery_would_show_it() -> None:
    events = make_events()
    ending = {
        "delivered": "task-succeeded",
        "skipped": "task-succeeded",
        "deferred": "task-retried",
        "dead": "task-failed",
    }
    for kind, event_type in ending.items():
        [channel, message] = closing_events(events, Outcome(kind, "why", events.task_id))  # type: ignore[arg-type]
        assert channel == events_channel(3, event_type)
        assert decode(message)[1]["type"] == event_type
    assert closing_events(None, Outcome("delivered", "ok", "j")) == []
    _, failed = decode(closing_events(events, Outcome("dead", "permanent", events.task_id, detail="404"))[1])
    assert "DeadLetteredError" in failed["exception"] and "permanent" in failed["exception"]


def test_long_results_and_errors_are_cut_for_flower() -> None:
    events = make_events()
    _, event = decode(events.failed("x" * 5000)[1])
    assert len(event["exception"]) == 1024
    assert len(event_envelope("task-started", "h", {"uuid": "u"}, timestamp=1.0)) < 1000
