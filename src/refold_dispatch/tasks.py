"""The Celery tasks: a thin map from a delivery :class:`~refold_dispatch.delivery.Outcome` to a Celery state.

A job reads as one task in Flower (its task id is the job id):

* delivered, or skipped as a duplicate copy -> SUCCESS
* deferred (retry, rate limit, open breaker, ordering) -> RETRY with the reason and next due time; the job
  was put in our delayed set first, and the next attempt comes back under the same task id
* dead-lettered -> FAILURE with the reason (``DeadLetteredError``, expected, so no traceback)

A Redis outage that outlasts the in-attempt retries gives the message back (``Reject(requeue=True)``); if
Redis cannot even take it back, kombu restores it after the visibility timeout. Nothing is acked unhandled.
"""

from __future__ import annotations

import re
import time
import uuid
from datetime import UTC, datetime
from functools import cache
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject, Retry

from refold_dispatch.client import RefoldClient
from refold_dispatch.config import get_settings
from refold_dispatch.delivery import Deliverer, Outcome
from refold_dispatch.dispatcher import redis_db, redis_location
from refold_dispatch.errors import DeadLetteredError
from refold_dispatch.events import TaskEvents
from refold_dispatch.keys import Keys
from refold_dispatch.message import TRIGGER_EVENT_TASK, UPSERT_LINKED_ACCOUNT_TASK
from refold_dispatch.scheduler import CANARY_TASK
from refold_dispatch.scripts import ScriptContext, Scripts
from refold_dispatch.worker import app

_JOB_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


@cache
def deliverer() -> Deliverer:
    """One per worker process, built on first use (after the fork): one httpx pool, one Redis pool."""
    settings = get_settings()
    client = redis.Redis.from_url(
        settings.redis_url, socket_connect_timeout=5, socket_timeout=10, health_check_interval=10
    )
    return Deliverer(settings, client, RefoldClient(settings), Scripts(client, ScriptContext.from_settings(settings)))


def _job_id_from(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    if len(args) == 1 and not kwargs and isinstance(args[0], str) and _JOB_ID.match(args[0]):
        return args[0]
    return None


def run_delivery(task: Task[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    job_id = _job_id_from(task, args, kwargs)
    if job_id is None:
        dead_id = f"invalid-{task.request.id or uuid.uuid4()}"
        why = f"task {task.name} got arguments that are not a single job id: args={args!r:.200} kwargs={kwargs!r:.200}"
        deliverer().dead_letter_invalid(dead_id, why, repr((args, kwargs)).encode(), task=task.name)
        error = DeadLetteredError(dead_id, "invalid", why)
        events = _task_events(task, dead_id)
        deliverer().publish_events([*events.started(), *events.failed(repr(error))])
        raise error
    try:
        outcome = deliverer().deliver(job_id, _task_events(task, job_id))
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        where = redis_location(get_settings().redis_url)
        raise Reject(f"Redis at {where} unavailable: {type(exc).__name__}", requeue=True) from exc
    return _celery_result(outcome)


def _task_events(task: Task[Any, Any], job_id: str) -> TaskEvents:
    """This execution's events for Flower, named as Celery would name them (see ``events``)."""
    request = task.request
    return TaskEvents(
        redis_db=redis_db(deliverer().redis),
        hostname=str(request.hostname or ""),
        task=task.name,
        task_id=str(request.id or job_id),
        args_repr=str(getattr(request, "argsrepr", None) or repr((job_id,))),
        kwargs_repr=str(getattr(request, "kwargsrepr", None) or "{}"),
        retries=int(request.retries or 0),
    )


def _celery_result(outcome: Outcome) -> dict[str, Any]:
    if outcome.kind == "deferred":
        when = datetime.fromtimestamp(outcome.due_at, UTC) if outcome.due_at is not None else None
        raise Retry(message=outcome.reason, when=when)
    if outcome.kind == "dead":
        raise DeadLetteredError(outcome.job_id, outcome.reason, outcome.detail)
    return outcome.summary()


@app.task(
    name=TRIGGER_EVENT_TASK,
    bind=True,
    typing=False,
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    throws=(DeadLetteredError,),
)
def trigger_event(self: Task[Any, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Deliver one trigger-event job (the only argument is its job id)."""
    return run_delivery(self, args, kwargs)


@app.task(
    name=UPSERT_LINKED_ACCOUNT_TASK,
    bind=True,
    typing=False,
    ignore_result=True,
    acks_late=True,
    reject_on_worker_lost=True,
    throws=(DeadLetteredError,),
)
def upsert_linked_account(self: Task[Any, Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Deliver one upsert-linked-account job (the only argument is its job id)."""
    return run_delivery(self, args, kwargs)


@app.task(name=CANARY_TASK, bind=True, typing=False, ignore_result=True)
def canary(self: Task[Any, Any], hostname: Any = None, sent_at: Any = None) -> None:
    """Proof of consumption: the mover sends one to this worker's own queue and checks it arrives."""
    if not isinstance(hostname, str):
        return
    settings = get_settings()
    deliverer().redis.hset(Keys(settings.key_prefix).worker(hostname), "canary_at", time.time())
