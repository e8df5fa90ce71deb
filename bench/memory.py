"""Memory: worker RSS after a delivery run, and Redis bytes per job so an operator can size Redis.

What is measured, on a private redis-server (AOF on) and the sandbox (no rate limit):

1. ``INFO memory used_memory`` before and after enqueueing N trigger events (5,000; 500 with ``--quick``) with
   no worker running: bytes per *queued* job (job record with its pre-built message, idempotency claim,
   queue entry, per-account bookkeeping).
2. One ``celery -A refold_dispatch.worker worker`` (prefork, concurrency 4) drains them; then ``used_memory``
   again (bytes per *delivered* job kept in the ledger for the idempotency window) and ``MEMORY USAGE``
   (exact, ``SAMPLES 0``) of ``refold:idem:<key>``, ``refold:job:<id>`` and ``refold:job:<id>:hist`` over a
   sample of 200 jobs. RSS of the worker's main process and each pool process is read from ``/proc``.
3. The sandbox is told to stop accepting the benchmark's event name, and N/5 events with it are enqueued: each
   is answered 404 (permanent) and dead-lettered. ``MEMORY USAGE`` of ``refold:dlq:entries`` (hash) and
   ``refold:dlq`` (sorted set) divided by the count gives bytes per dead-letter entry (the dead job's ledger
   keys stay too, until their TTL).

Sizing: the ledger keeps every job for ``REFOLD_IDEMPOTENCY_TTL_SECONDS`` (72 h by default), so N jobs/day hold
about 3 N ledger entries; dead letters stay for ``REFOLD_DLQ_RETENTION_SECONDS`` (14 days).
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    EVENT,
    RecordTail,
    Section,
    fmt,
    median,
    private_redis,
    script_main,
    stop_all,
    wait_delivered,
)
from bench.delivery import Stack, enqueue_ours, start_workers, unlimited_sandbox

DEAD_EVENT = "bench.rejected_event"
SAMPLE = 200


def used_memory(stack: Stack) -> int:
    return int(stack.redis.info("memory")["used_memory"])


def dataset_bytes(stack: Stack) -> int:
    """MEMORY STATS dataset.bytes: the keys and values, without client buffers, Lua caches and server overhead."""
    return int(stack.redis.memory_stats()["dataset.bytes"])


def memory_usage(stack: Stack, key: str) -> int:
    value = stack.redis.memory_usage(key, samples=0)
    return int(value or 0)


def job_hash_shape(stack: Stack, keys: list[str]) -> dict[str, Any]:
    """Encoding and biggest fields of delivered job hashes, and their size without the stored Celery message."""
    encodings: dict[str, int] = {}
    fields: dict[str, list[int]] = {}
    without: list[int] = []
    for key in keys[:50]:
        job_key = f"refold:job:{stack.redis.get(f'refold:idem:{key}').decode()}"  # type: ignore[union-attr]
        encoding = stack.redis.object("encoding", job_key)
        name = encoding.decode() if isinstance(encoding, bytes) else str(encoding)
        encodings[name] = encodings.get(name, 0) + 1
        for field_name, value in stack.redis.hgetall(job_key).items():
            fields.setdefault(field_name.decode(), []).append(len(value))
        copy = f"bench:copy:{key}"
        stack.redis.restore(copy, 0, stack.redis.dump(job_key), replace=True)
        stack.redis.hdel(copy, "b64", "kw")
        without.append(memory_usage(stack, copy))
        stack.redis.delete(copy)
    biggest = sorted(((median(v), k) for k, v in fields.items()), reverse=True)[:4]
    return {
        "encodings": encodings,
        "fields": len(fields),
        "biggest_fields": {k: v for v, k in biggest},
        "bytes_without_message": median(without),
    }


def run(quick: bool) -> Section:
    jobs = 500 if quick else 5000
    dead = jobs // 5
    with private_redis() as server:
        sandbox = unlimited_sandbox()
        try:
            stack = Stack(server, sandbox)
            stack.reset()
            base = used_memory(stack)
            base_dataset = dataset_bytes(stack)
            enqueue_ours(stack, jobs)
            queued = used_memory(stack)
            workers = start_workers(stack, "ours", pool="prefork", concurrency=4, instances=1)
            try:
                tail = RecordTail(stack.sandbox.admin)
                wait_delivered(tail, jobs, timeout=max(180.0, jobs / 20))
                time.sleep(1.0)
                rss = workers[0].rss()
                delivered_mem = used_memory(stack)
                delivered_dataset = dataset_bytes(stack)
                keys = [r["idempotency_key"] for r in tail.delivered()[:SAMPLE]]
                sizes: dict[str, list[int]] = {"idem": [], "job": [], "hist": []}
                for key in keys:
                    job_id = stack.redis.get(f"refold:idem:{key}")
                    assert job_id is not None
                    job_id = job_id.decode()
                    sizes["idem"].append(memory_usage(stack, f"refold:idem:{key}"))
                    sizes["job"].append(memory_usage(stack, f"refold:job:{job_id}"))
                    sizes["hist"].append(memory_usage(stack, f"refold:job:{job_id}:hist"))

                shape = job_hash_shape(stack, keys)

                stack.sandbox.admin.set_config(known_events=[EVENT])
                before_dead = used_memory(stack)
                enqueue_ours(stack, dead, event=DEAD_EVENT)
                deadline = time.monotonic() + max(120.0, dead / 10)
                while int(stack.redis.zcard("refold:dlq")) < dead:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"only {stack.redis.zcard('refold:dlq')} of {dead} dead letters")
                    time.sleep(0.25)
                time.sleep(1.0)
                after_dead = used_memory(stack)
                dlq_bytes = memory_usage(stack, "refold:dlq:entries") + memory_usage(stack, "refold:dlq")
                dlq_rss = workers[0].rss()
            finally:
                stop_all(workers)
        finally:
            sandbox.stop()

    per_queued = (queued - base) / jobs
    per_delivered = (delivered_mem - base) / jobs
    per_delivered_dataset = (delivered_dataset - base_dataset) / jobs
    per_key = {name: median(values) for name, values in sizes.items()}
    ledger_per_job = sum(per_key.values())
    per_dead_entry = dlq_bytes / dead
    per_dead_total = (after_dead - before_dead) / dead
    data: dict[str, Any] = {
        "jobs": jobs,
        "dead": dead,
        "rss_bytes_after_delivery": rss,
        "rss_bytes_after_dead_letters": dlq_rss,
        "used_memory_per_queued_job": per_queued,
        "used_memory_per_delivered_job": per_delivered,
        "dataset_bytes_per_delivered_job": per_delivered_dataset,
        "memory_usage_median": per_key,
        "ledger_bytes_per_job": ledger_per_job,
        "dlq_bytes_per_entry": per_dead_entry,
        "used_memory_per_dead_job": per_dead_total,
        "job_hash": shape,
    }
    section = Section("memory", "Memory: worker RSS and Redis bytes per job")
    mib = 2**20
    section.table(
        ["worker process (prefork -c 4)", f"RSS MiB after {jobs:,} deliveries", f"after +{dead:,} dead letters"],
        [
            [("main" if i == 0 else f"pool child {i}"), fmt(a / mib, 1), fmt(b / mib, 1)]
            for i, (a, b) in enumerate(zip(rss, dlq_rss, strict=False))
        ]
        + [["**total**", fmt(sum(rss) / mib, 1), fmt(sum(dlq_rss) / mib, 1)]],
    )
    section.table(
        ["Redis, per job", "bytes", "how"],
        [
            ["queued job (all keys + queue message)", fmt(per_queued, 0), f"used_memory delta / {jobs:,}"],
            ["delivered job, whole ledger", fmt(per_delivered, 0), f"used_memory delta / {jobs:,}"],
            ["delivered job, keys and values only", fmt(per_delivered_dataset, 0), f"dataset.bytes delta / {jobs:,}"],
            ["  refold:idem:<key>", fmt(per_key["idem"], 0), f"MEMORY USAGE, median of {len(keys)}"],
            ["  refold:job:<id> (hash)", fmt(per_key["job"], 0), f"MEMORY USAGE, median of {len(keys)}"],
            ["  refold:job:<id>:hist (list)", fmt(per_key["hist"], 0), f"MEMORY USAGE, median of {len(keys)}"],
            [
                "  refold:job:<id> without b64/kw (its message values)",
                fmt(shape["bytes_without_message"], 0),
                "DUMP/RESTORE copy, HDEL, MEMORY USAGE",
            ],
            ["dead-letter entry (dlq:entries + dlq index)", fmt(per_dead_entry, 0), f"MEMORY USAGE / {dead:,}"],
            ["dead job, everything it leaves", fmt(per_dead_total, 0), f"used_memory delta / {dead:,}"],
        ],
    )
    biggest = ", ".join(f"{k} {v:,.0f} B" for k, v in shape["biggest_fields"].items())
    section.note(
        f"Delivered job hash: {shape['fields']} fields, encoding {shape['encodings']}; biggest values: {biggest}. "
        "The per-job delta includes the 1,000 accounts' bookkeeping keys, shared by the jobs."
    )
    per_day = 1_000_000
    section.note(
        f"Sizing: with the default 72 h idempotency window, {per_day:,} delivered jobs/day keep about "
        f"{3 * per_day * per_delivered / 2**30:.1f} GiB of ledger in Redis (3 x N x {per_delivered:,.0f} B); each "
        f"1,000 dead letters/day add about {14 * 1000 * per_dead_total / 2**20:.1f} MiB over the 14-day DLQ "
        f"retention (the dead job's own ledger keys expire after 72 h, so this overstates it slightly). Payload "
        "here is about 200 bytes of JSON; the job record grows with it (stored once in the job hash)."
    )
    section.data = data
    return section


if __name__ == "__main__":
    script_main("memory", run)
