"""Delivery throughput and CPU per job: refold-dispatch's full pipeline vs a one-POST Celery task.

What is measured. A backlog of trigger-event jobs (10,000 for prefork and 5,000 for the other pools; 1,000 and
500 with ``--quick``) over 1,000 linked accounts
is drained by real ``celery worker`` processes against the sandbox (a separate process, ``--no-rate-limit
--events '*' --allow-unknown-accounts``) and a private redis-server (AOF on, as in production):

* **ours**: ``celery -A refold_dispatch.worker worker`` with everything on and its defaults: ledger, lease and
  ordering (``begin``), flow control (folded into ``begin``/``finish``, with ``REFOLD_RATE_LIMIT=100000`` so
  the limit itself never waits), retries armed, the HTTP POST, ``finish``, the structured log line, Flower's
  task events (published by the scripts), late acks, prefetch multiplier 4, the mover thread;
* **minimal**: ``celery -A bench.minimal_app worker``, a task that does one httpx POST (``bench/minimal_app.py``),
  same broker, same pool and concurrency, JSON.

How. The backlog is enqueued while no worker runs and parked under another key (``RENAME``); the workers are
started, waited for, and their CPU counters read; then the backlog is renamed back onto the queue. Throughput is
(deliveries - 1) / (last - first receive time) as the sandbox recorded them. CPU is utime + stime of each
worker's whole process tree (main process and pool children, from ``/proc``) between the release and a moment
after the last delivery; Redis's and the sandbox's CPU are read the same way. Both variants run in the same
invocation, one after the other for each pool (prefork, threads, and gevent when installed: it is in the dev
group) at concurrency 4;
besides first-to-last throughput the table shows the median rate over ten slices of each run (steadier on a
shared machine), and the ratios. ``run(quick, reps=N)`` repeats the cells and takes medians. RSS of each worker
process is read after each run.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from tests.support import RedisServer

from bench.common import (
    EVENT,
    RecordTail,
    Sandbox,
    Section,
    Worker,
    cpu_seconds,
    fmt,
    median,
    minimal_env,
    ours_env,
    ours_ready,
    payload,
    private_redis,
    redis_client,
    script_main,
    settings_for,
    stop_all,
    wait_delivered,
)
from bench.minimal_app import QUEUE as MINIMAL_QUEUE
from bench.minimal_app import TASK as MINIMAL_TASK
from bench.minimal_app import make_app
from refold_dispatch.dispatcher import Dispatcher

Variant = Literal["ours", "minimal"]
OURS_QUEUE = "refold"
HOLD = "bench:hold"
ACCOUNTS = 1000
BATCH = 500
# The full pipeline with a limit high enough that flow control never makes a worker wait.
UNLIMITED = {"REFOLD_RATE_LIMIT": "100000", "REFOLD_RATE_BURST": "1000"}


@dataclass
class Drain:
    """One drained backlog."""

    variant: str
    pool: str
    concurrency: int
    instances: int
    jobs: int
    delivered: int
    seconds: float
    rate: float
    slice_rate: float
    worker_cpu: float
    redis_cpu: float
    sandbox_cpu: float
    duplicates: int
    non_2xx: int
    rss: list[list[int]] = field(default_factory=list)

    @property
    def cpu_per_1k(self) -> float:
        return self.worker_cpu / self.delivered * 1000

    @property
    def redis_cpu_per_1k(self) -> float:
        return self.redis_cpu / self.delivered * 1000

    @property
    def sandbox_cpu_per_1k(self) -> float:
        return self.sandbox_cpu / self.delivered * 1000

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            cpu_per_1k=self.cpu_per_1k,
            redis_cpu_per_1k=self.redis_cpu_per_1k,
            sandbox_cpu_per_1k=self.sandbox_cpu_per_1k,
        )
        return data


class Stack:
    """A private Redis and the sandbox, shared by the runs of one scenario."""

    def __init__(self, redis_server: RedisServer, sandbox: Sandbox) -> None:
        self.redis_server = redis_server
        self.sandbox = sandbox
        self.redis = redis_client(redis_server)
        self.settings = settings_for(redis_server.url, sandbox.url)

    def reset(self) -> None:
        self.redis.flushall()
        self.sandbox.admin.reset()

    def redis_cpu(self) -> float:
        assert self.redis_server.process is not None
        return cpu_seconds(self.redis_server.process.pid)


def unlimited_sandbox() -> Sandbox:
    return Sandbox("--no-rate-limit", "--events", "*", "--allow-unknown-accounts")


def enqueue_ours(stack: Stack, jobs: int, *, accounts: int = ACCOUNTS, event: str = EVENT) -> None:
    with Dispatcher(stack.settings, redis_client=stack.redis) as dispatcher:
        for start in range(0, jobs, BATCH):
            batch = [
                dispatcher.event_job(event, f"acct_{i % accounts:04d}", payload(i))
                for i in range(start, min(start + BATCH, jobs))
            ]
            dispatcher.enqueue_many(batch)


def park_backlog(stack: Stack, variant: Variant, jobs: int) -> str:
    """Empty the stack, enqueue ``jobs`` for ``variant`` and park them under ``HOLD`` until workers are up;
    returns the queue to release them onto."""
    stack.reset()
    if variant == "ours":
        enqueue_ours(stack, jobs)
    else:
        enqueue_minimal(stack, jobs)
    queue = OURS_QUEUE if variant == "ours" else MINIMAL_QUEUE
    stack.redis.rename(queue, HOLD)
    return queue


def enqueue_minimal(stack: Stack, jobs: int, *, accounts: int = ACCOUNTS) -> None:
    task = make_app(stack.redis_server.url).tasks[MINIMAL_TASK]
    for i in range(jobs):
        task.apply_async((EVENT, f"acct_{i % accounts:04d}", payload(i), f"bench-min-{i}"))


def start_workers(
    stack: Stack,
    variant: Variant,
    *,
    pool: str,
    concurrency: int,
    instances: int,
    env: dict[str, str] | None = None,
    tag: str = "",
    app: str | None = None,
) -> list[Worker]:
    url, base = stack.redis_server.url, stack.sandbox.url
    workers = []
    for n in range(instances):
        name = f"bench-{variant}{tag}-{pool}-{n}"
        if variant == "ours":
            worker_env = ours_env(url, base, **{**UNLIMITED, **(env or {})})
            workers.append(Worker(app or "refold_dispatch.worker", name, worker_env, pool, concurrency))
        else:
            worker_env = minimal_env(url, base, **(env or {}))
            workers.append(Worker("bench.minimal_app", name, worker_env, pool, concurrency))
    for worker in workers:
        worker.start()
    try:
        for worker in workers:
            worker.wait_ready(ours_ready(stack.redis, worker) if variant == "ours" else None)
    except BaseException:
        stop_all(workers)
        raise
    return workers


def drain(
    stack: Stack,
    variant: Variant,
    *,
    jobs: int,
    pool: str = "prefork",
    concurrency: int = 4,
    instances: int = 1,
    env: dict[str, str] | None = None,
    app: str | None = None,
    label: str | None = None,
    keep_workers: list[Worker] | None = None,
) -> Drain:
    """Enqueue a parked backlog, start the workers, release the backlog and time its delivery."""
    queue = park_backlog(stack, variant, jobs)
    workers = start_workers(stack, variant, pool=pool, concurrency=concurrency, instances=instances, env=env, app=app)
    try:
        time.sleep(1.0)  # let the pools settle after "ready."
        tail = RecordTail(stack.sandbox.admin)
        cpu0 = sum(w.cpu() for w in workers)
        redis0, sandbox0 = stack.redis_cpu(), stack.sandbox.cpu()
        stack.redis.rename(HOLD, queue)
        released = time.monotonic()
        delivered = wait_delivered(tail, jobs, timeout=max(180.0, jobs / 25))
        seconds = time.monotonic() - released
        time.sleep(0.5)  # the last jobs' bookkeeping after their POST
        worker_cpu = sum(w.cpu() for w in workers) - cpu0
        redis_cpu, sandbox_cpu = stack.redis_cpu() - redis0, stack.sandbox.cpu() - sandbox0
        rss = [w.rss() for w in workers]
    finally:
        if keep_workers is None:
            stop_all(workers)
        else:
            keep_workers.extend(workers)
    times = sorted(r["time"] for r in delivered)
    by_key: dict[str, int] = {}
    for record in delivered:
        by_key[record["idempotency_key"]] = by_key.get(record["idempotency_key"], 0) + 1
    return Drain(
        variant=label or variant,
        pool=pool,
        concurrency=concurrency,
        instances=instances,
        jobs=jobs,
        delivered=len(delivered),
        seconds=seconds,
        rate=(len(times) - 1) / (times[-1] - times[0]),
        slice_rate=slice_rate(times),
        worker_cpu=worker_cpu,
        redis_cpu=redis_cpu,
        sandbox_cpu=sandbox_cpu,
        duplicates=sum(1 for n in by_key.values() if n > 1),
        non_2xx=sum(1 for r in tail.records if not 200 <= r["status"] < 300),
        rss=rss,
    )


def slice_rate(times: list[float], slices: int = 10) -> float:
    """The median of the rates over ten equal slices of the deliveries: steadier than the overall rate when a
    neighbour on a shared machine steals the CPU for part of the run."""
    size = max(2, len(times) // slices)
    rates = [
        (size - 1) / (times[start + size - 1] - times[start])
        for start in range(0, len(times) - size + 1, size)
        if times[start + size - 1] > times[start]
    ]
    return median(rates)


def pools() -> list[str]:
    found = ["prefork", "threads"]
    if importlib.util.find_spec("gevent") is not None:
        found.append("gevent")
    return found


def run(quick: bool, reps: int | None = None) -> Section:
    jobs = 1000 if quick else 10_000
    reps = reps or 1
    concurrency = 4
    runs: list[Drain] = []
    with private_redis() as server:
        sandbox = unlimited_sandbox()
        try:
            stack = Stack(server, sandbox)
            for _ in range(reps):
                for pool in pools():
                    # Only prefork carries the 10,000-job comparison; the other pools run half as many to fit the
                    # suite's time budget (one process on one core is much slower).
                    size = jobs if pool == "prefork" else jobs // 2
                    for variant in ("ours", "minimal"):
                        result = drain(stack, variant, jobs=size, pool=pool, concurrency=concurrency)  # type: ignore[arg-type]
                        runs.append(result)
                        print(
                            f"  delivery {variant:7} {pool:8} {result.rate:7.1f} jobs/s "
                            f"{result.cpu_per_1k:6.2f} CPU-s/1k jobs",
                            flush=True,
                        )
        finally:
            sandbox.stop()
    return report(runs, jobs=jobs, reps=reps, concurrency=concurrency)


def report(runs: list[Drain], *, jobs: int, reps: int, concurrency: int) -> Section:
    section = Section("delivery", "Delivery: throughput and CPU per job (full pipeline vs one-POST task)")
    rows = []
    summary: dict[str, Any] = {}
    for pool in pools():
        ours = [r for r in runs if r.pool == pool and r.variant == "ours"]
        base = [r for r in runs if r.pool == pool and r.variant == "minimal"]
        if not ours or not base:
            continue
        med = {
            name: {
                "rate": median([r.rate for r in group]),
                "slice_rate": median([r.slice_rate for r in group]),
                "cpu": median([r.cpu_per_1k for r in group]),
                "redis": median([r.redis_cpu_per_1k for r in group]),
                "sandbox": median([r.sandbox_cpu_per_1k for r in group]),
                "rss_mib": median([sum(sum(w) for w in r.rss) / 2**20 for r in group]),
                "duplicates": sum(r.duplicates for r in group),
                "non_2xx": sum(r.non_2xx for r in group),
            }
            for name, group in (("ours", ours), ("minimal", base))
        }
        summary[pool] = {
            **med,
            "throughput_ratio": med["ours"]["rate"] / med["minimal"]["rate"],
            "slice_ratio": med["ours"]["slice_rate"] / med["minimal"]["slice_rate"],
            "cpu_ratio": med["ours"]["cpu"] / med["minimal"]["cpu"],
            "redis_ratio": med["ours"]["redis"] / med["minimal"]["redis"],
        }
        for name in ("ours", "minimal"):
            m = med[name]
            rows.append(
                [
                    pool,
                    name,
                    fmt(m["rate"]),
                    fmt(m["slice_rate"]),
                    fmt(m["cpu"], 2),
                    fmt(m["redis"], 2),
                    fmt(m["sandbox"], 2),
                    fmt(m["rss_mib"], 0),
                    str(m["duplicates"]),
                    str(m["non_2xx"]),
                ]
            )
        rows.append(
            [
                pool,
                "**ours / minimal**",
                f"**{summary[pool]['throughput_ratio']:.2f}x**",
                f"**{summary[pool]['slice_ratio']:.2f}x**",
                f"**{summary[pool]['cpu_ratio']:.2f}x**",
                f"**{summary[pool]['redis_ratio']:.2f}x**",
                "",
                "",
                "",
                "",
            ]
        )
    section.table(
        [
            f"pool (-c {concurrency})",
            "variant",
            "jobs/s (first to last)",
            "jobs/s (median of 10 slices)",
            "worker CPU-s / 1k jobs",
            "redis CPU-s / 1k",
            "sandbox CPU-s / 1k",
            "worker RSS MiB (all procs)",
            "dup keys",
            "non-2xx",
        ],
        rows,
    )
    ours_rates = {pool: summary[pool]["ours"]["rate"] for pool in summary}
    if ours_rates:
        best = max(ours_rates, key=lambda p: ours_rates[p])
        section.note(
            f"Fastest pool for the full pipeline: **{best}** "
            + ", ".join(f"{p} {fmt(r)} jobs/s" for p, r in ours_rates.items())
            + f". {jobs:,} jobs per prefork run, {jobs // 2:,} per threads run, {reps} run(s) per cell; gevent "
            + ("measured." if "gevent" in ours_rates else "not installed, not measured.")
        )
        summary["fastest_pool"] = best
    section.data = {"jobs": jobs, "reps": reps, "summary": summary, "runs": [r.to_json() for r in runs]}
    return section


if __name__ == "__main__":
    script_main("delivery", run)
