"""The Celery message for a job, built once at enqueue without importing Celery.

The message follows Celery's task protocol 2 in kombu's Redis envelope, exactly what ``apply_async`` would
LPUSH, so ``celery worker`` consumes it as any task. It carries only the job id: the job itself lives in Redis,
so a message can be replayed, deferred and redelivered without copying the payload. ``argsrepr`` and
``kwargsrepr`` (what Flower shows) name the event, account, key and payload size, never the payload unless
``REFOLD_SHOW_PAYLOAD_IN_FLOWER`` asks for it, and never the API key, which no message contains.

Only the delivery tag changes between publishes (kombu tracks unacked messages by it), so the message is
stored as a head and a tail around the tag, and the Lua scripts splice a fresh tag in.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from functools import cache

from refold_dispatch.events import event_dict, multi_envelope_parts
from refold_dispatch.events import events_channel as _events_channel
from refold_dispatch.jobs import Job, TriggerEventParams, UpsertLinkedAccountParams

TRIGGER_EVENT_TASK = "refold.trigger_event"
UPSERT_LINKED_ACCOUNT_TASK = "refold.upsert_linked_account"
TASK_FOR_KIND = {"event": TRIGGER_EVENT_TASK, "upsert": UPSERT_LINKED_ACCOUNT_TASK}

# Flower shows argsrepr/kwargsrepr verbatim; a shown payload is cut here so one job cannot flood the UI.
MAX_SHOWN_PAYLOAD_CHARS = 1024
_TAG_PLACEHOLDER = "@@refold-delivery-tag@@"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


@cache
def _origin() -> str:
    return f"refold-dispatch@{socket.gethostname()}:{os.getpid()}"


def describe(job: Job, *, show_payload: bool = False) -> dict[str, object]:
    """What Flower and logs may show about a job."""
    params = job.params
    shown: dict[str, object] = {"account": params.linked_account_id, "idempotency_key": job.idempotency_key}
    if isinstance(params, TriggerEventParams):
        shown["event"] = params.event
        shown["payload_bytes"] = job.payload_size()
        if show_payload:
            shown["payload"] = json.dumps(params.payload)[:MAX_SHOWN_PAYLOAD_CHARS]
    else:
        shown["name"] = params.name
        shown["udf_keys"] = sorted(params.udf or {})
    return shown


def build_message(job: Job, queue: str, *, show_payload: bool = False) -> tuple[str, str]:
    """The job's Celery message as (head, tail): ``head + delivery_tag + tail`` is the message to LPUSH."""
    return _split(_job_message(job, queue, json.dumps(repr(describe(job, show_payload=show_payload)))))


def build_publication(job: Job, queue: str, *, show_payload: bool = False) -> tuple[str, str, str]:
    """The message (head, tail) and the ``task-sent`` event announcing it to Flower, sharing one description."""
    kwargs_json = json.dumps(repr(describe(job, show_payload=show_payload)))
    head, tail = _split(_job_message(job, queue, kwargs_json))
    return head, tail, _sent_event(job, queue, kwargs_json, time.time())


# Stand-ins in the cached message template; each is replaced once per job (see _job_message).
_ID_MARK = "00000000-0000-4000-8000-0000000000ff"
_KWARGS_MARK = "@refold-kwargs@"
_BODY_MARK = "@refold-body@"
_EMBED_JSON = json.dumps(_EMBED)
_KWARGS_MARK_JSON = json.dumps(_KWARGS_MARK)


@cache
def _job_template(task: str, queue: str) -> str:
    """A job message with stand-ins for its own values. Enqueue runs on the web request path, and filling in
    a template is several times cheaper than building and serialising the envelope per job; ``task_message``
    stays the reference, and a test pins the two equal."""
    reference = task_message(
        task,
        _ID_MARK,
        [_ID_MARK],
        exchange="",
        routing_key=queue,
        kwargs_repr=_KWARGS_MARK,
        delivery_tag=_TAG_PLACEHOLDER,
    )
    return reference.replace(json.loads(reference)["body"], _BODY_MARK, 1)


def _job_message(job: Job, queue: str, kwargs_json: str) -> str:
    """The message filled in; ``kwargs_json`` is the description as a JSON string literal."""
    body = base64.b64encode(f'[["{job.id}"], {{}}, {_EMBED_JSON}]'.encode()).decode()
    # The caller-influenced text (kwargs_json) goes in last, so nothing in it is ever substituted.
    text = _job_template(TASK_FOR_KIND[job.kind], queue).replace(_BODY_MARK, body, 1).replace(_ID_MARK, job.id)
    return text.replace(_KWARGS_MARK_JSON, kwargs_json, 1)


def _split(text: str) -> tuple[str, str]:
    head, _, tail = text.rpartition(_TAG_PLACEHOLDER)
    return head, tail


def events_channel(redis_db: int) -> str:
    """Where the enqueue script publishes task-sent events: kombu's fanout topic for grouped task events."""
    return _events_channel(redis_db, "task-multi")


def sent_event(job: Job, queue: str, kwargs_repr: str, *, timestamp: float | None = None) -> str:
    """A Celery ``task-sent`` event (the event's JSON object), so Flower shows a job from the moment it is
    enqueued, as ``apply_async`` with ``task_send_sent_event`` would. Filled into a cached template; the
    enqueue script publishes the events of the jobs it stored together (see :func:`sent_events_envelope`)."""
    return _sent_event(job, queue, json.dumps(kwargs_repr), time.time() if timestamp is None else timestamp)


def _sent_event(job: Job, queue: str, kwargs_json: str, timestamp: float) -> str:
    return (
        _event_template(TASK_FOR_KIND[job.kind], queue)
        .replace(_ID_MARK, job.id)
        .replace(_TIMESTAMP_MARK_JSON, repr(timestamp), 1)
        .replace(_KWARGS_MARK_JSON, kwargs_json, 1)
    )


@cache
def sent_events_envelope() -> tuple[str, str]:
    """The kombu envelope the enqueue script wraps a list of task-sent events in: ``head + body + tail``,
    the body being the list as a JSON string (see :func:`refold_dispatch.events.multi_envelope`)."""
    return multi_envelope_parts(_origin())


_TIMESTAMP_MARK = "@refold-timestamp@"
_TIMESTAMP_MARK_JSON = json.dumps(_TIMESTAMP_MARK)
# A timestamp no hostname or queue name will contain, marking where the real one goes in the template.
_TIMESTAMP_REF = 987654321.1234567


def sent_event_reference(job: Job, queue: str, kwargs_repr: str, *, timestamp: float) -> str:
    """The ``task-sent`` event built field by field: the reference the template must equal."""
    fields: dict[str, object] = {
        "uuid": job.id,
        "root_id": job.id,
        "parent_id": None,
        "name": TASK_FOR_KIND[job.kind],
        "args": repr([job.id]),
        "kwargs": kwargs_repr,
        "retries": 0,
        "eta": None,
        "expires": None,
        "queue": queue,
        "exchange": "",
        "routing_key": queue,
    }
    return json.dumps(event_dict("task-sent", _origin(), fields, timestamp=timestamp))


@cache
def _event_template(task: str, queue: str) -> str:
    params: TriggerEventParams | UpsertLinkedAccountParams = (
        TriggerEventParams(event="e", linked_account_id="a")
        if task == TRIGGER_EVENT_TASK
        else UpsertLinkedAccountParams(linked_account_id="a")
    )
    marked = Job(id=_ID_MARK, idempotency_key="k", created_at=0.0, params=params)
    reference = sent_event_reference(marked, queue, _KWARGS_MARK, timestamp=_TIMESTAMP_REF)
    return reference.replace(repr(_TIMESTAMP_REF), _TIMESTAMP_MARK_JSON, 1)


def task_message(
    task: str,
    task_id: str,
    args: list[object],
    *,
    exchange: str,
    routing_key: str,
    kwargs_repr: str = "{}",
    delivery_tag: str,
) -> str:
    """A Celery protocol-2 task message in kombu's Redis envelope (what ``apply_async`` would LPUSH)."""
    body = json.dumps([args, {}, _EMBED]).encode()
    envelope = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": task,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr(tuple(args)),
            "kwargsrepr": kwargs_repr,
            "origin": _origin(),
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        # The delivery tag must stay the very last value so the split below finds our placeholder, not text
        # that a caller put in an id.
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": exchange, "routing_key": routing_key},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": delivery_tag,
        },
    }
    return json.dumps(envelope)
