"""The baseline: the least a Celery app can do to deliver an event, one httpx POST per message.

``celery -A bench.minimal_app worker`` with Celery's defaults (early acks, prefetch 4, no task events, no
result backend) except JSON, the queue name and ignored results. No ledger, no lease, no retries, no flow
control, no structured log line: what is left is the cost of Celery + kombu + httpx, which the benchmarks
compare refold-dispatch's full pipeline with.

Settings come from the environment: ``BENCH_REDIS_URL``, ``BENCH_BASE_URL``, ``BENCH_API_KEY``, and
``BENCH_RATE_LIMIT`` (Celery's own per-worker ``rate_limit``, e.g. ``20/s``; unset means none).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import httpx
from celery import Celery

QUEUE = "bench-minimal"
TASK = "bench.post_event"
TRIGGER_PATH = "/api/v2/public/event/trigger"


@cache
def _client() -> httpx.Client:
    """One pooled client per process, made after the fork."""
    return httpx.Client(
        base_url=os.environ["BENCH_BASE_URL"],
        headers={"x-api-key": os.environ["BENCH_API_KEY"], "Content-Type": "application/json"},
        timeout=15.0,
    )


def post_event(event: str, linked_account_id: str, payload: dict[str, Any], idempotency_key: str) -> int:
    response = _client().post(
        TRIGGER_PATH,
        json={"event": event, "payload": payload},
        headers={"linked_account_id": linked_account_id, "Idempotency-Key": idempotency_key},
    )
    return response.status_code


def make_app(broker_url: str, rate_limit: str | None = None) -> Celery:
    """The baseline app; the benchmark also builds one in its own process to publish the backlog."""
    celery = Celery("bench_minimal", broker=broker_url)
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_default_queue=QUEUE,
        broker_connection_retry_on_startup=True,
    )
    celery.task(name=TASK, ignore_result=True, rate_limit=rate_limit)(post_event)
    return celery


app = make_app(os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:1/0"), os.environ.get("BENCH_RATE_LIMIT") or None)
