"""Enqueue latency and bulk throughput: ``Dispatcher.trigger_event`` vs Celery's ``apply_async`` vs a bare LPUSH.

What is measured, against a private redis-server (AOF on) with no worker running:

* **ours**: ``Dispatcher.trigger_event(event, account, payload)``: validation, job and message building, and the
  ``enqueue`` script (idempotency claim + job record + fairness gate + publish + Flower's task-sent event) in
  one round trip; also measured with ``send_sent_events`` off;
* **apply_async**: a plain task of a throwaway Celery app on the same Redis (JSON serializer, default options)
  called with the same arguments: Celery's own cost of publishing a message;
* **LPUSH**: redis-py pushing a string the size of our message (the exact bytes our script pushes): the floor;
* **async**: ``AsyncDispatcher.trigger_event`` on one event loop (each call awaited in turn);
* the two halves of ours on their own: job building (validation, pydantic) and message building.

Each call is timed alone (``perf_counter_ns``). The methods run interleaved in rounds (rotating order) so
drift of a noisy machine hits them equally; p50/p99 are over all calls. Every call uses a new linked account,
so the enqueue script takes its common path (publish), not the fair-share backlog.

Bulk: ``Dispatcher.enqueue_many`` with batches of 500 (jobs built and validated inside the timing, by a
generator, as a backfill over database rows would pass them, so building overlaps Redis storing) vs a loop of
500 ``apply_async`` calls, interleaved; the medians of the per-batch rates and their ratio. The same batch
passed as a prebuilt list is also timed (building the list inside the timing): no overlap.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from bench.common import (
    EVENT,
    Section,
    fmt,
    median,
    payload,
    percentile,
    private_redis,
    script_main,
    settings_for,
)
from refold_dispatch.dispatcher import AsyncDispatcher, Dispatcher
from refold_dispatch.message import build_message, message_values

THROWAWAY_QUEUE = "bench-throwaway"
FLOOR_LIST = "bench:floor"
BULK_BATCH = 500


def throwaway_app(redis_url: str) -> Any:
    app = Celery("bench_throwaway", broker=redis_url)
    app.conf.update(
        task_serializer="json", accept_content=["json"], task_ignore_result=True, task_default_queue=THROWAWAY_QUEUE
    )

    @app.task(name="bench.plain")
    def plain(event: str, linked_account_id: str, data: dict[str, Any]) -> None:
        return None

    return plain


def run(quick: bool) -> Section:
    rounds, per_round = (8, 60) if quick else (30, 125)
    bulk_rounds = 3 if quick else 10
    counter = itertools.count()
    samples: dict[str, list[float]] = {
        name: [] for name in ("ours", "ours_no_event", "apply_async", "lpush", "async", "build_job", "build_message")
    }
    bulk: dict[str, list[float]] = {"enqueue_many": [], "enqueue_many_list": [], "apply_async_loop": []}

    with private_redis() as server:
        settings = settings_for(server.url, "http://127.0.0.1:9")
        dispatcher = Dispatcher(settings)
        quiet_dispatcher = Dispatcher(settings.model_copy(update={"send_sent_events": False}))
        plain = throwaway_app(server.url)
        raw = redis.Redis.from_url(server.url)
        sample_job = dispatcher.event_job(EVENT, "acct_sample", payload(0))
        floor_message = build_message(sample_job, settings.queue)
        loop = asyncio.new_event_loop()
        adispatcher = loop.run_until_complete(_make_async(settings))

        def account() -> str:
            return f"acct_{next(counter):07d}"

        def ours() -> None:
            i = next(counter)
            dispatcher.trigger_event(EVENT, f"acct_{i:07d}", payload(i))

        def ours_no_event() -> None:
            i = next(counter)
            quiet_dispatcher.trigger_event(EVENT, f"acct_{i:07d}", payload(i))

        def apply_async() -> None:
            i = next(counter)
            plain.apply_async((EVENT, f"acct_{i:07d}", payload(i)))

        def lpush() -> None:
            raw.lpush(FLOOR_LIST, floor_message)

        def build_job() -> None:
            dispatcher.event_job(EVENT, account(), payload(1))

        def build_msg() -> None:
            message_values(sample_job)

        async def async_batch(n: int) -> list[float]:
            out = []
            for _ in range(n):
                i = next(counter)
                t0 = time.perf_counter_ns()
                await adispatcher.trigger_event(EVENT, f"acct_{i:07d}", payload(i))
                out.append((time.perf_counter_ns() - t0) / 1000)
            return out

        sync_methods: dict[str, Callable[[], None]] = {
            "ours": ours,
            "ours_no_event": ours_no_event,
            "apply_async": apply_async,
            "lpush": lpush,
            "build_job": build_job,
            "build_message": build_msg,
        }
        # Warm up: connections, script loading, kombu's queue declaration, imports on first use.
        for fn in sync_methods.values():
            for _ in range(100):
                fn()
        loop.run_until_complete(async_batch(100))

        order = [*sync_methods, "async"]
        for r in range(rounds):
            rotated = order[r % len(order) :] + order[: r % len(order)]
            for name in rotated:
                if name == "async":
                    samples["async"].extend(loop.run_until_complete(async_batch(per_round)))
                    continue
                fn = sync_methods[name]
                out = samples[name]
                for _ in range(per_round):
                    t0 = time.perf_counter_ns()
                    fn()
                    out.append((time.perf_counter_ns() - t0) / 1000)
            raw.delete(settings.queue, THROWAWAY_QUEUE, FLOOR_LIST)  # keep Redis small; bindings stay

        bulk_methods: dict[str, Callable[[], None]] = {
            # A generator, as a backfill over rows would pass: jobs are built while Redis stores earlier ones.
            "enqueue_many": lambda: dispatcher.enqueue_many(
                dispatcher.event_job(EVENT, account(), payload(i)) for i in range(BULK_BATCH)
            ),
            # All jobs built first, then one call: building and storing add up.
            "enqueue_many_list": lambda: dispatcher.enqueue_many(
                [dispatcher.event_job(EVENT, account(), payload(i)) for i in range(BULK_BATCH)]
            ),
            "apply_async_loop": lambda: [plain.apply_async((EVENT, account(), payload(i))) for i in range(BULK_BATCH)],
        }
        bulk_order = list(bulk_methods)
        for r in range(bulk_rounds):
            shift = r % len(bulk_order)
            for name in bulk_order[shift:] + bulk_order[:shift]:
                t0 = time.perf_counter()
                bulk_methods[name]()
                bulk[name].append(BULK_BATCH / (time.perf_counter() - t0))
            raw.delete(settings.queue, THROWAWAY_QUEUE)

        loop.run_until_complete(adispatcher.aclose())
        loop.close()
        dispatcher.close()
        quiet_dispatcher.close()
        raw.close()

    return report(samples, bulk, rounds=rounds, per_round=per_round)


async def _make_async(settings: Any) -> AsyncDispatcher:
    return AsyncDispatcher(settings)


def report(samples: dict[str, list[float]], bulk: dict[str, list[float]], *, rounds: int, per_round: int) -> Section:
    section = Section("enqueue", "Enqueue: latency per call and bulk throughput")
    stats = {
        name: {"p50_us": percentile(v, 50), "p99_us": percentile(v, 99), "n": len(v)} for name, v in samples.items()
    }
    base = stats["apply_async"]
    labels = {
        "ours": "Dispatcher.trigger_event (ours)",
        "ours_no_event": "  same, REFOLD_SEND_SENT_EVENTS=false (no Flower task-sent event)",
        "async": "AsyncDispatcher.trigger_event (ours, asyncio)",
        "apply_async": "Celery apply_async, plain task (baseline)",
        "lpush": "redis-py LPUSH of our message (floor)",
        "build_job": "  part of ours: build + validate the job",
        "build_message": "  part of ours: the job's values in its message (the script fills the template)",
    }
    rows = [
        [
            labels[name],
            fmt(stats[name]["p50_us"]),
            fmt(stats[name]["p99_us"]),
            f"{stats[name]['p50_us'] / base['p50_us']:.2f}",
            str(stats[name]["n"]),
        ]
        for name in ("ours", "ours_no_event", "async", "apply_async", "lpush", "build_job", "build_message")
    ]
    section.table(["call", "p50 µs", "p99 µs", "p50 / apply_async", "calls"], rows)
    ratio = stats["ours"]["p50_us"] / base["p50_us"]
    ratio99 = stats["ours"]["p99_us"] / base["p99_us"]
    bulk_med = {name: median(v) for name, v in bulk.items()}
    bulk_ratio = bulk_med["enqueue_many"] / bulk_med["apply_async_loop"]
    list_ratio = bulk_med["enqueue_many_list"] / bulk_med["apply_async_loop"]
    bulk_labels = {
        "enqueue_many": "Dispatcher.enqueue_many(generator of jobs) (ours, building included)",
        "enqueue_many_list": "  same, a list built first (building included, not overlapped)",
        "apply_async_loop": "loop of apply_async (baseline)",
    }
    section.table(
        ["bulk (batches of 500)", "jobs/s (median)", "/ apply_async loop", "batches"],
        [
            [
                label,
                fmt(bulk_med[name], 0),
                f"{bulk_med[name] / bulk_med['apply_async_loop']:.1f}x",
                str(len(bulk[name])),
            ]
            for name, label in bulk_labels.items()
        ],
    )
    section.note(
        f"**ours / apply_async p50 = {ratio:.2f}** (target <= 0.5: {'met' if ratio <= 0.5 else 'NOT met'}); "
        f"p99 ratio {ratio99:.2f}. **enqueue_many / apply_async loop = {bulk_ratio:.1f}x** (target >= 10x: "
        f"{'met' if bulk_ratio >= 10 else 'NOT met'}). {rounds} interleaved rounds of {per_round} calls per method."
    )
    section.data = {
        "latency": stats,
        "ratio_p50": ratio,
        "ratio_p99": ratio99,
        "bulk_jobs_per_s": bulk_med,
        "bulk_ratio": bulk_ratio,
        "bulk_ratio_list": list_ratio,
        "bulk_samples": bulk,
    }
    return section


if __name__ == "__main__":
    script_main("enqueue", run)
