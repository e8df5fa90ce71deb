"""A Celery consumer that dead-letters what it cannot run, instead of dropping it.

Celery logs and discards a message it cannot decode, one for an unknown task, and one that is not a task at
all. Each of those may be a job someone meant to send, so before Celery discards it we keep it in the
dead-letter queue as ``invalid`` with its raw body (truncated) as evidence. The worker keeps consuming.
"""

from __future__ import annotations

import uuid
from functools import cache
from typing import Any

import redis
import structlog
from celery.worker.consumer import Consumer

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
