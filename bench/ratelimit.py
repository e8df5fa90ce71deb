"""Flow control: the global rate limit under a backlog, and fairness between a noisy account and quiet ones.

**Limit.** The sandbox (a separate process) enforces Refold's limit, 20 requests/s with a burst of 5, and
answers 429 beyond it. Four ``celery worker`` processes (prefork, concurrency 1 each) drain a parked backlog of
1,000 trigger events (100 with ``--quick``):

* **ours**: ``refold_dispatch.worker`` with ``REFOLD_RATE_LIMIT=20 REFOLD_RATE_BURST=5`` (the GCRA in Redis
  shared by all workers); every job is eventually delivered, so the run ends when all are;
* **celery rate_limit**: the one-POST baseline task (``bench/minimal_app.py``) with Celery's own
  ``rate_limit="20/s"``, which is per worker (celery#5732); the run ends when every message has produced one
  request, or after (backlog / 20 + 60) s if Celery has not got through it by then. The baseline does not
  retry, so its 429s are lost jobs.

From the sandbox's request log: the most requests in any 1-second window (limit + burst = 25 is the most a
correct client can see), the mean delivery rate while backlogged ((deliveries - 1) / (last - first)), and the
number of 429s.

**Fairness.** With four workers running, one noisy account enqueues 2,000 events (``enqueue_many``), then ten
quiet accounts enqueue 10 events each. The quiet events' latency (enqueue call -> sandbox receive time) and the
noisy account's drain time (its first enqueue -> its last delivery) are reported. To keep the run short the
limit here is 50/s (sandbox and ``REFOLD_RATE_LIMIT``) rather than 20/s. The comparison is the same pipeline
with the per-account share set so high that it never holds a job back (plain FIFO), under the same global
limit: it isolates what the fairness gate buys. (Celery's own rate_limit cannot carry this load, see above.)
"""

from __future__ import annotations

import time
from typing import Any

from bench.common import (
    EVENT,
    RecordTail,
    Sandbox,
    Section,
    Worker,
    fmt,
    max_in_window,
    median,
    payload,
    private_redis,
    script_main,
    stop_all,
)
from bench.delivery import (
    HOLD,
    Stack,
    Variant,
    park_backlog,
    start_workers,
)
from refold_dispatch.dispatcher import Dispatcher

LIMIT, BURST = 20, 5
FAIR_LIMIT = 50
INSTANCES = 4


def _env(variant: Variant, rate: float, per_worker: float) -> dict[str, str]:
    if variant == "ours":
        return {"REFOLD_RATE_LIMIT": f"{rate:g}", "REFOLD_RATE_BURST": str(BURST)}
    return {"BENCH_RATE_LIMIT": f"{per_worker:g}/s"}


def _workers(stack: Stack, variant: Variant, env: dict[str, str], tag: str) -> list[Worker]:
    return start_workers(stack, variant, pool="prefork", concurrency=1, instances=INSTANCES, env=env, tag=tag)


def _wait(tail: RecordTail, done: Any, timeout: float) -> bool:
    """Poll the sandbox's log until ``done(records)``; False if ``timeout`` passed first (results stay usable)."""
    deadline = time.monotonic() + timeout
    while not done(tail.poll()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def limit_run(stack: Stack, variant: Variant, jobs: int) -> dict[str, Any]:
    queue = park_backlog(stack, variant, jobs)  # resets the sandbox too, so its limit is set after
    stack.sandbox.admin.set_config(rate_limit=LIMIT, rate_burst=BURST, rate_limit_enabled=True)
    workers = _workers(stack, variant, _env(variant, LIMIT, LIMIT), "-rl")
    try:
        time.sleep(1.0)
        tail = RecordTail(stack.sandbox.admin)
        stack.redis.rename(HOLD, queue)
        started = time.monotonic()
        if variant == "ours":
            complete = _wait(
                tail, lambda recs: sum(r["outcome"] == "delivered" for r in recs) >= jobs, jobs / LIMIT * 3
            )
        else:
            # Celery's rate_limit can fall far below its setting with a large backlog; cut the run off rather
            # than let it eat the suite's time, and say so.
            complete = _wait(tail, lambda recs: len(recs) >= jobs, jobs / LIMIT + 60)
        elapsed = time.monotonic() - started
    finally:
        stop_all(workers)
    records = tail.records
    delivered = sorted(r["time"] for r in records if r["outcome"] == "delivered")
    every = sorted(r["time"] for r in records)
    span = every[-1] - every[0]
    return {
        "variant": variant,
        "jobs": jobs,
        "requests": len(records),
        "delivered": len(delivered),
        "status_429": sum(r["status"] == 429 for r in records),
        "max_in_1s_all": max_in_window(every),
        "max_in_1s_delivered": max_in_window(delivered),
        "sandbox_stats_max_in_1s": stack.sandbox.admin.stats()["max_in_any_1s_window"],
        "mean_delivered_per_s": (len(delivered) - 1) / (delivered[-1] - delivered[0]) if len(delivered) > 1 else 0.0,
        "mean_sent_per_s": (len(every) - 1) / span if span > 0 else 0.0,
        "lost": jobs - len(delivered),
        "complete": complete,
        "elapsed_s": elapsed,
    }


def fairness_run(stack: Stack, label: str, *, noisy: int, quiet_accounts: int, quiet_each: int) -> dict[str, Any]:
    """``label`` is "fair" (the default per-account share) or "fifo" (the share set so high it never applies)."""
    stack.reset()
    stack.sandbox.admin.set_config(rate_limit=FAIR_LIMIT, rate_burst=BURST, rate_limit_enabled=True)
    env = _env("ours", FAIR_LIMIT, FAIR_LIMIT)
    if label == "fifo":
        env["REFOLD_ACCOUNT_QUEUE_SHARE"] = "1000000"
    settings = stack.settings.model_copy(update={"account_queue_share": int(env.get("REFOLD_ACCOUNT_QUEUE_SHARE", 20))})
    workers = _workers(stack, "ours", env, f"-{label}")
    total = noisy + quiet_accounts * quiet_each
    enqueued_at: dict[str, float] = {}
    try:
        tail = RecordTail(stack.sandbox.admin)
        with Dispatcher(settings, redis_client=stack.redis) as dispatcher:
            for start in range(0, noisy, 500):
                keys = [f"noisy-{i}" for i in range(start, min(start + 500, noisy))]
                batch = [
                    dispatcher.event_job(EVENT, "acct_noisy", payload(i), idempotency_key=key)
                    for i, key in enumerate(keys, start)
                ]
                now = time.time()
                dispatcher.enqueue_many(batch)
                enqueued_at.update(dict.fromkeys(keys, now))
            for e in range(quiet_each):
                for a in range(quiet_accounts):
                    key = f"quiet-{a}-{e}"
                    enqueued_at[key] = time.time()
                    dispatcher.trigger_event(EVENT, f"acct_quiet_{a}", payload(e), idempotency_key=key)
        complete = _wait(
            tail, lambda recs: sum(r["outcome"] == "delivered" for r in recs) >= total, total / FAIR_LIMIT * 3 + 60
        )
    finally:
        stop_all(workers)
    delivered = {r["idempotency_key"]: r["time"] for r in tail.records if r["outcome"] == "delivered"}
    quiet = [delivered[k] - enqueued_at[k] for k in enqueued_at if k.startswith("quiet-") and k in delivered]
    noisy_times = [delivered[k] for k in enqueued_at if k.startswith("noisy-") and k in delivered]
    first_noisy = min(v for k, v in enqueued_at.items() if k.startswith("noisy-"))
    return {
        "variant": label,
        "limit": FAIR_LIMIT,
        "quiet_jobs": quiet_accounts * quiet_each,
        "quiet_delivered": len(quiet),
        "quiet_median_s": median(quiet),
        "quiet_worst_s": max(quiet) if quiet else float("nan"),
        "noisy_delivered": len(noisy_times),
        "noisy_drain_s": max(noisy_times) - first_noisy if noisy_times else float("nan"),
        "status_429": sum(r["status"] == 429 for r in tail.records),
        "complete": complete,
    }


def run(quick: bool) -> Section:
    jobs = 100 if quick else 1000
    noisy, quiet_accounts, quiet_each = (200, 10, 3) if quick else (2000, 10, 10)
    with private_redis() as server:
        sandbox = Sandbox(
            "--rate-limit", str(LIMIT), "--rate-burst", str(BURST), "--events", "*", "--allow-unknown-accounts"
        )
        try:
            stack = Stack(server, sandbox)
            limits = [limit_run(stack, variant, jobs) for variant in ("ours", "minimal")]
            for result in limits:
                print(f"  ratelimit {result}", flush=True)
            fairness = [
                fairness_run(stack, label, noisy=noisy, quiet_accounts=quiet_accounts, quiet_each=quiet_each)
                for label in ("fair", "fifo")
            ]
            for result in fairness:
                print(f"  fairness {result}", flush=True)
        finally:
            sandbox.stop()
    return report(limits, fairness, jobs=jobs, noisy=noisy, quiet=(quiet_accounts, quiet_each))


def report(
    limits: list[dict[str, Any]], fairness: list[dict[str, Any]], *, jobs: int, noisy: int, quiet: tuple[int, int]
) -> Section:
    section = Section("ratelimit", f"Flow control: {LIMIT}/s burst {BURST}, {INSTANCES} workers, {jobs:,}-job backlog")
    names = {"ours": "ours (global GCRA in Redis)", "minimal": 'Celery rate_limit="20/s" per worker'}
    rows = []
    for r in limits:
        rows.append(
            [
                names[r["variant"]],
                f"{r['max_in_1s_all']} ({'ok' if r['max_in_1s_all'] <= LIMIT + BURST else 'OVER'})",
                fmt(r["mean_delivered_per_s"], 2),
                f"{r['mean_delivered_per_s'] / LIMIT * 100:.0f} %",
                fmt(r["mean_sent_per_s"], 1),
                str(r["status_429"]),
                f"{r['delivered']} / {r['jobs']}"
                + ("" if r["complete"] else f" (cut off after {r['elapsed_s']:.0f} s, {r['requests']} sent)"),
            ]
        )
    section.table(
        [
            "variant",
            f"max requests in any 1 s (<= {LIMIT + BURST})",
            "mean delivered/s while backlogged",
            f"of {LIMIT}/s",
            "requests sent/s",
            "429s",
            "delivered",
        ],
        rows,
    )
    fair_names = {
        "fair": "ours, fair share (REFOLD_ACCOUNT_QUEUE_SHARE=20, default)",
        "fifo": "ours, FIFO (share 1,000,000: the gate never holds a job back)",
    }
    section.table(
        [
            f"fairness at {FAIR_LIMIT}/s: {noisy:,} noisy, then {quiet[0]} x {quiet[1]} quiet",
            "quiet latency median s",
            "quiet latency worst s",
            "noisy drain s",
            "quiet delivered",
            "429s",
        ],
        [
            [
                fair_names[r["variant"]],
                fmt(r["quiet_median_s"], 2),
                fmt(r["quiet_worst_s"], 2),
                fmt(r["noisy_drain_s"], 1),
                f"{r['quiet_delivered']} / {r['quiet_jobs']}",
                str(r["status_429"]),
            ]
            for r in fairness
        ],
    )
    section.note(
        f"The fairness run uses {FAIR_LIMIT}/s instead of {LIMIT}/s to keep it under a minute; the ideal noisy "
        f"drain time is {(noisy + quiet[0] * quiet[1]) / FAIR_LIMIT:.0f} s. Latency = enqueue call -> sandbox "
        "receive time (same clock)."
    )
    section.data = {"limit": limits, "fairness": fairness}
    return section


if __name__ == "__main__":
    script_main("ratelimit", run)
