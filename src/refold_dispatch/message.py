"""The Celery message for a job, built once at enqueue without importing Celery.

The message follows Celery's task protocol 2 in kombu's Redis envelope, exactly what ``apply_async`` would
LPUSH, so ``celery worker`` consumes it as any task. It carries only the job id: the job itself lives in Redis,
so a message can be replayed, deferred and redelivered without copying the payload. ``argsrepr`` and
``kwargsrepr`` (what Flower shows) name the event, account, key and payload size, never the payload unless
``REFOLD_SHOW_PAYLOAD_IN_FLOWER`` asks for it, and never the API key, which no message contains.

Messages differ only in a few values: the job id, the description, the body (the id, base64-encoded) and the
delivery tag, fresh on every publish (kombu tracks unacked messages by it). So the message is a template of
pieces around those slots, one per task and queue, sent with each enqueue call and kept in Redis for later
publishes (``{prefix}:tpl:v2:{queue}:{kind}``, see keys.py); a job record keeps only its own values (``b64``,
``kw``). The Lua scripts fill the slots (``fill`` in lua/lib.lua; :func:`fill` here is the reference, and a
test pins both, and the result, to :func:`task_message`). Flower's task-sent event is filled the same way.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from collections.abc import Callable, Mapping
from functools import cache

from refold_dispatch.events import event_dict, multi_envelope, multi_envelope_parts
from refold_dispatch.events import events_channel as _events_channel
from refold_dispatch.jobs import EVENT, UPSERT, Job, TriggerEventParams, UpsertLinkedAccountParams

TRIGGER_EVENT_TASK = "refold.trigger_event"
UPSERT_LINKED_ACCOUNT_TASK = "refold.upsert_linked_account"
TASK_FOR_KIND = {"event": TRIGGER_EVENT_TASK, "upsert": UPSERT_LINKED_ACCOUNT_TASK}

# Flower shows argsrepr/kwargsrepr verbatim; a shown payload is cut here so one job cannot flood the UI.
MAX_SHOWN_PAYLOAD_CHARS = 1024
_TAG_PLACEHOLDER = "@@refold-delivery-tag@@"
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


# Celery's ``origin`` header names the process that sent a message. One template serves every process that
# enqueues (it is stored in Redis and shared), so it names the library.
MESSAGE_ORIGIN = "refold-dispatch"


@cache
def _origin() -> str:
    """The sender of task-sent events (Flower lists it as the event's host)."""
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


def message_values(job: Job, *, show_payload: bool = False) -> tuple[str, str]:
    """The job's own values in its message: the body (base64) and the description (a JSON string literal)."""
    body = base64.b64encode(f'[["{job.id}"], {{}}, {_EMBED_JSON}]'.encode()).decode()
    params = job.params
    if isinstance(params, TriggerEventParams) and not show_payload:
        # repr(describe(job)) written out, without the dict (this runs per job at enqueue; a test pins the two).
        described = (
            f"{{'account': {params.linked_account_id!r}, 'idempotency_key': {job.idempotency_key!r}, "
            f"'event': {params.event!r}, 'payload_bytes': {job.payload_size()!r}}}"
        )
    else:
        described = repr(describe(job, show_payload=show_payload))
    return body, _json_string(described)


def build_message(job: Job, queue: str, *, show_payload: bool = False) -> str:
    """The job's Celery message with delivery tag ``{id}.1`` (what the first publish pushes)."""
    body, kwargs_json = message_values(job, show_payload=show_payload)
    pieces, slots = _message_template(TASK_FOR_KIND[job.kind], queue)
    return fill(pieces, slots, {"b": body, "i": job.id, "k": kwargs_json, "t": f"{job.id}.1"})


# json.dumps of a str, without dumps' per-call option handling (this runs per job at enqueue).
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii

# Stand-ins in the cached templates, one per slot letter (see fill).
_ID_MARK = "00000000-0000-4000-8000-0000000000ff"
_KWARGS_MARK = "@refold-kwargs@"
_BODY_MARK = "@refold-body@"
_EMBED_JSON = json.dumps(_EMBED)
_KWARGS_MARK_JSON = json.dumps(_KWARGS_MARK)
_TIMESTAMP_MARK = "@refold-timestamp@"
_TIMESTAMP_MARK_JSON = json.dumps(_TIMESTAMP_MARK)
# A timestamp no hostname or queue name will contain, marking where the real one goes in the template.
_TIMESTAMP_REF = 987654321.1234567
_SLOT_FOR_MARK = {
    _BODY_MARK: "b",
    _ID_MARK: "i",
    _KWARGS_MARK_JSON: "k",
    _TAG_PLACEHOLDER: "t",
    _TIMESTAMP_MARK_JSON: "s",
}
_MARKS = re.compile("|".join(re.escape(mark) for mark in _SLOT_FOR_MARK))


def _split_template(text: str) -> tuple[list[str], str]:
    """Text with stand-ins -> the pieces between them and the slot letters, in order."""
    pieces: list[str] = []
    slots: list[str] = []
    position = 0
    for found in _MARKS.finditer(text):
        pieces.append(text[position : found.start()])
        slots.append(_SLOT_FOR_MARK[found.group()])
        position = found.end()
    pieces.append(text[position:])
    return pieces, "".join(slots)


def fill(pieces: list[str], slots: str, values: Mapping[str, str]) -> str:
    """A template filled in: ``pieces[0] + values[slots[0]] + pieces[1] + ...`` (lua/lib.lua's ``fill``)."""
    out = [pieces[0]]
    for piece, slot in zip(pieces[1:], slots, strict=True):
        out.append(values[slot])
        out.append(piece)
    return "".join(out)


@cache
def _message_template(task: str, queue: str) -> tuple[list[str], str]:
    """The message of ``task`` on ``queue`` as pieces around its slots: b (body), i (id), k (description),
    t (delivery tag). ``task_message`` is the reference; a test pins the two equal."""
    reference = task_message(
        task,
        _ID_MARK,
        [_ID_MARK],
        exchange="",
        routing_key=queue,
        kwargs_repr=_KWARGS_MARK,
        delivery_tag=_TAG_PLACEHOLDER,
    )
    return _split_template(reference.replace(json.loads(reference)["body"], _BODY_MARK, 1))


# The job kinds in the order the scripts take their templates (enqueue.lua and promote.lua: event, upsert).
TEMPLATE_KINDS = (EVENT, UPSERT)


@cache
def message_templates(queue: str) -> Mapping[str, str]:
    """The message template of each job kind on ``queue``, as the scripts take it (:func:`template_text`). The
    same text in every process (it names no host), so the copy stored in Redis for later publishes is written
    once, not by each process in turn."""
    return {kind: template_text(*_message_template(TASK_FOR_KIND[kind], queue)) for kind in TEMPLATE_KINDS}


@cache
def event_templates(queue: str) -> Mapping[str, str]:
    """The task-sent event template of each job kind, as the scripts take it, its pieces escaped for the JSON
    string the events travel in (see :func:`sent_events_envelope`): the script joins filled events into that
    string as they are, encoding nothing. Only ever filled at enqueue, never stored."""
    templates = {}
    for kind in TEMPLATE_KINDS:
        pieces, slots = _event_template(TASK_FOR_KIND[kind], queue)
        templates[kind] = template_text([_in_json_string(piece) for piece in pieces], slots)
    return templates


def template_text(pieces: list[str], slots: str) -> str:
    """A template as one string the Lua scripts split without a JSON decoder (``compile_template`` in
    lua/lib.lua): the slot letters, then each piece, NUL-separated. JSON text never holds a raw NUL (JSON
    escapes control characters), so the separator cannot occur in a piece."""
    if any("\0" in piece for piece in pieces):
        raise ValueError("a template piece contains NUL, which separates the pieces")
    return "\0".join([slots, *pieces])


def _in_json_string(text: str) -> str:
    """``text`` as it appears inside a JSON string literal (``json.dumps(text)`` without its quotes). Escaping is
    character by character, so escaped pieces and escaped values concatenate to the escaped whole."""
    return _json_string(text)[1:-1]


def lua_timestamp(now_ms: int) -> str:
    """How the enqueue script writes an event's timestamp (seconds, from its millisecond clock)."""
    return f"{now_ms / 1000:.3f}"


def events_channel(redis_db: int) -> str:
    """Where the enqueue script publishes task-sent events: kombu's fanout topic for grouped task events."""
    return _events_channel(redis_db, "task-multi")


def sent_event(job: Job, queue: str, kwargs_repr: str, *, timestamp_ms: int) -> str:
    """A Celery ``task-sent`` event (the event's JSON object), so Flower shows a job from the moment it is
    enqueued, as ``apply_async`` with ``task_send_sent_event`` would. The enqueue script fills the same
    template (see :func:`event_templates`) and publishes the events of the jobs it stored together (see
    :func:`sent_events_envelope`)."""
    pieces, slots = _event_template(TASK_FOR_KIND[job.kind], queue)
    return fill(pieces, slots, {"i": job.id, "k": json.dumps(kwargs_repr), "s": lua_timestamp(timestamp_ms)})


@cache
def sent_events_envelope() -> tuple[str, str]:
    """The kombu envelope the enqueue script wraps a list of task-sent events in: ``head + events + tail``,
    the events joined by commas; the envelope's body is the JSON list as a JSON string (see
    :func:`refold_dispatch.events.multi_envelope`), so head and tail carry the string's quotes and the list's
    brackets, and the events arrive escaped (:func:`event_templates`)."""
    head, tail = multi_envelope_parts(_origin())
    return head + '"[', ']"' + tail


def sent_events_reference(events: list[str]) -> str:
    """The envelope of ``events`` (each an event's JSON) built by the reference builders: what the script's
    ``head + events + tail`` must equal byte for byte."""
    return multi_envelope(_origin(), "[" + ",".join(events) + "]")


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
def _event_template(task: str, queue: str) -> tuple[list[str], str]:
    params: TriggerEventParams | UpsertLinkedAccountParams = (
        TriggerEventParams(event="e", linked_account_id="a")
        if task == TRIGGER_EVENT_TASK
        else UpsertLinkedAccountParams(linked_account_id="a")
    )
    marked = Job(id=_ID_MARK, idempotency_key="k", created_at=0.0, params=params)
    reference = sent_event_reference(marked, queue, _KWARGS_MARK, timestamp=_TIMESTAMP_REF)
    return _split_template(reference.replace(repr(_TIMESTAMP_REF), _TIMESTAMP_MARK_JSON, 1))


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
            "origin": MESSAGE_ORIGIN,
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
