"""The chaos scenario: a mixed workload delivered by real workers while the suite kills them, restarts Redis and
sends SIGTERM, with Refold's stand-in failing at double-digit rates; then an account of every job.

Three threads run beside the test's main thread, each bounded in time:

* the enqueuer plays the web app: it enqueues the planned jobs at a steady pace (riding out the Redis restart
  by retrying the *same* job, which the enqueue script answers as a duplicate if it had been stored), and
  enqueues some jobs a second time;
* the chaos thread SIGKILLs a random worker (the whole process group, like an OOM kill of a container) or one
  pool process every few seconds and starts a replacement; once a share of the jobs has settled it restarts
  Redis, and later sends SIGTERM to a worker and checks the warm shutdown;
* the lease watcher decides which of the jobs active at a kill really died with it: a job whose attempt was
  killed keeps its lease (same token) until the lease expires; a live attempt always releases it earlier,
  because the hard time limit (10 s) is shorter than the lease (time limit + 5 s).

The judge is the sandbox's own request log (deliveries per Idempotency-Key, apply order), the job records and
the dead-letter queue in Redis.
"""

from __future__ import annotations

import heapq
import itertools
import json
import os
import random
import re
import signal
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import redis

from refold_dispatch.config import Settings
from refold_dispatch.dispatcher import Dispatcher, Receipt
from refold_dispatch.dlq import DeadLetterQueue
from refold_dispatch.errors import EnqueueError
from refold_dispatch.jobs import Job, TriggerEventParams
from refold_dispatch.sandbox import max_in_window
from tests.reliability.stack import (
    ACCOUNT_PATH,
    EVENT_PATH,
    FINAL_STATES,
    QUEUE,
    Stack,
    in_flight,
    job_fields,
    job_states,
    leases,
    pipeline_idle_problems,
    with_redis_retry,
)
from tests.support import TEST_API_KEY, WorkerProcess

KNOWN_EVENTS = ("order.created", "order.shipped", "invoice.paid", "user.signed_up", "user.updated", "ticket.opened")
UNKNOWN_EVENT = "chaos.no_such_event"  # Refold answers 404 INVALID_EVENT: permanent
# A job killed between Refold's 2xx and the ledger write is sent again: the documented window. A duplicate
# counts as "in the window" when its job died in a kill that came this soon after the first delivery.
WINDOW_AFTER_DELIVERY_S = 5.0
# A Celery message names its task id (our job id) in its headers.
_MESSAGE_ID = re.compile(rb'\\?"id\\?": ?\\?"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})')


# -- the workload --------------------------------------------------------------------------------------------


@dataclass
class Planned:
    """One job the web app enqueues, and what must become of it."""

    index: int
    job: Job
    account: str
    expect: str  # "deliver" | "permanent"
    expect_status: int | None = None  # the status of the permanent rejection
    repeat: str | None = None  # None, "now" (right after) or "later" (after everything else)
    name: str | None = None  # an upsert's account name
    after_upsert: int | None = None  # for an event: index of its account's last upsert enqueued before it

    @property
    def key(self) -> str:
        return self.job.idempotency_key

    @property
    def kind(self) -> str:
        return self.job.kind


@dataclass
class Workload:
    jobs: list[Planned]
    seeded_accounts: list[str]
    created_accounts: list[str]
    ghost_accounts: list[str]
    hot_account: str

    def by_key(self) -> dict[str, Planned]:
        return {planned.key: planned for planned in self.jobs}


def build_workload(dispatcher: Dispatcher, total: int, rng: random.Random, run_id: str) -> Workload:
    """Events and upserts over many accounts, in an order a real app could produce.

    * half the accounts exist at Refold already (seeded); the other half are created by their first upsert,
      which every event of theirs must wait for (Refold refuses events for unknown accounts);
    * one hot account gets ~8 % of the jobs, so the per-account fair share (20 in the queue) holds some back;
    * ~3 % are events Refold does not know (404) and a few go to accounts nobody created (400): both must
      end in the dead-letter queue as ``permanent``;
    * ~30 % carry a caller-supplied idempotency key; ~7 % are enqueued a second time.
    """
    accounts = max(10, total // 15)
    seeded = [f"acct-{run_id}-s{n:03d}" for n in range(accounts // 2)]
    created = [f"acct-{run_id}-c{n:03d}" for n in range(accounts - accounts // 2)]
    ghosts = [f"acct-{run_id}-ghost{n}" for n in range(3)]
    hot = f"acct-{run_id}-hot"
    existing = {hot, *seeded}
    upserted: set[str] = set()
    versions: Counter[str] = Counter()
    last_upsert: dict[str, int] = {}
    jobs: list[Planned] = []

    def key_for(index: int) -> str | None:
        return f"chaos-{run_id}-{index}" if rng.random() < 0.3 else None

    def repeat() -> str | None:
        draw = rng.random()
        return "now" if draw < 0.04 else "later" if draw < 0.07 else None

    def add_upsert(account: str) -> None:
        versions[account] += 1
        index = len(jobs)
        name = f"{account} v{versions[account]}"
        job = dispatcher.account_job(
            account,
            name=name,
            udf={"plan": rng.choice(["free", "pro", "team"]), "version": versions[account]},
            idempotency_key=key_for(index),
        )
        jobs.append(Planned(index, job, account, "deliver", repeat=repeat(), name=name))
        last_upsert[account] = index
        upserted.add(account)

    def add_event(account: str, event: str) -> None:
        index = len(jobs)
        payload = {"n": index, "run": run_id, "note": "x" * rng.randrange(0, 200)}
        job = dispatcher.event_job(event, account, payload, idempotency_key=key_for(index))
        if account in ghosts:
            expect, status = "permanent", 400  # INVALID_LINKED_ACCOUNT_ID
        elif event == UNKNOWN_EVENT:
            expect, status = "permanent", 404  # INVALID_EVENT
        else:
            expect, status = "deliver", None
        jobs.append(
            Planned(index, job, account, expect, status, repeat=repeat(), after_upsert=last_upsert.get(account))
        )

    while len(jobs) < total:
        draw = rng.random()
        if draw < 0.08:
            account = hot
        elif draw < 0.09:
            add_event(rng.choice(ghosts), rng.choice(KNOWN_EVENTS))
            continue
        else:
            account = rng.choice(seeded + created)
        if account not in existing and account not in upserted:
            add_upsert(account)  # the upsert that creates the account comes first
            continue
        op = rng.random()
        if op < 0.12:
            add_upsert(account)
        elif op < 0.15:
            add_event(account, UNKNOWN_EVENT)
        else:
            add_event(account, rng.choice(KNOWN_EVENTS))
    return Workload(jobs, [hot, *seeded], created, ghosts, hot)


# -- what happened during the run ------------------------------------------------------------------------------


@dataclass
class Kill:
    """One SIGKILL (``worker``: the whole process group; ``child``: one pool process) or SIGTERM."""

    kind: str
    worker: str
    at: float  # epoch seconds, just after the signal
    candidates: dict[str, str] = field(default_factory=dict)  # job id -> lease token, active on this worker
    reserved: set[str] = field(default_factory=set)  # received by this worker but not started
    killed: set[str] = field(default_factory=set)  # candidates whose lease outlived the attempt
    unknown: set[str] = field(default_factory=set)  # could not be checked (Redis unreachable)
    exit_code: int | None = None
    shutdown_seconds: float | None = None
    orphaned: set[str] = field(default_factory=set)  # SIGTERM: leases left behind by the warm shutdown


@dataclass
class Timeline:
    started: float = 0.0
    enqueued_all: float | None = None
    drained: float | None = None
    idle: float | None = None
    redis_restart: tuple[float, float] | None = None  # (down at, up again at)
    kills: list[Kill] = field(default_factory=list)
    enqueue_errors: int = 0
    enqueue_calls: int = 0
    duplicate_receipts: int = 0
    problems: list[str] = field(default_factory=list)  # assertion-worthy things seen by the threads
    notes: list[str] = field(default_factory=list)


@dataclass
class ChaosConfig:
    jobs: int
    workers: int = 3
    concurrency: int = 2
    kill_every: float = 5.0  # mean seconds between kills (uniform +-40 %)
    child_kill_share: float = 0.3  # the other kills take a whole worker down
    enqueue_rate: float = 40.0  # jobs per second
    redis_restart_at: float = 0.3  # fraction of jobs settled
    sigterm_at: float = 0.55
    chaos_until: float = 0.97  # no more kills once this fraction has settled
    drain_timeout: float = 170.0
    idle_timeout: float = 90.0
    seed: int = 20260701
    faults: dict[str, Any] = field(default_factory=dict)
    faults_after_restart: dict[str, Any] = field(default_factory=dict)
    sandbox_rate: float = 200.0
    sandbox_burst: int = 10
    worker_env: dict[str, str] = field(default_factory=dict)


class LeaseWatcher(threading.Thread):
    """Decides, just before each lease expires, whether the attempt that holds it died."""

    def __init__(self, client: redis.Redis, stop: threading.Event) -> None:
        super().__init__(name="lease-watcher", daemon=True)
        self.client = client
        self.stop_event = stop
        self._heap: list[tuple[float, int, str, str, Kill]] = []
        self._lock = threading.Lock()
        self._counter = 0

    def watch(self, kill: Kill, job_id: str, token: str, pttl_ms: int) -> None:
        # The live attempt ends by the hard time limit, 5 s before the lease expires: look 1 s before expiry.
        check_at = time.monotonic() + max(pttl_ms / 1000 - 1.0, 0.2)
        with self._lock:
            self._counter += 1
            heapq.heappush(self._heap, (check_at, self._counter, job_id, token, kill))

    def pending(self) -> int:
        with self._lock:
            return len(self._heap)

    def run(self) -> None:
        while not (self.stop_event.is_set() and not self.pending()):
            with self._lock:
                due = self._heap[0] if self._heap and self._heap[0][0] <= time.monotonic() else None
                if due is not None:
                    heapq.heappop(self._heap)
            if due is None:
                time.sleep(0.05)
                continue
            _, _, job_id, token, kill = due
            try:
                holder = with_redis_retry(lambda j=job_id: self.client.get(f"refold:lease:{j}"), budget=1.5)
            except redis.RedisError:
                kill.unknown.add(job_id)
                continue
            if holder is not None and holder.decode() == token:
                kill.killed.add(job_id)


class ChaosRun:
    """Runs the scenario on a :class:`Stack` and keeps everything the report needs."""

    def __init__(self, stack: Stack, config: ChaosConfig, *, verbose: bool = True) -> None:
        self.stack = stack
        self.config = config
        self.verbose = verbose
        self.rng = random.Random(config.seed)
        self.timeline = Timeline()
        self.stop = threading.Event()
        self.settled_fraction = 0.0
        self.receipts: dict[str, Receipt] = {}  # job id -> first receipt
        self.enqueued_ids: list[str] = []
        self._ids_lock = threading.Lock()
        assert stack.sandbox is not None
        self.settings = Settings(  # type: ignore[call-arg]
            _env_file=None, api_key=TEST_API_KEY, redis_url=stack.redis_server.url, base_url=stack.sandbox.url
        )
        self.dispatcher = Dispatcher(self.settings)
        self.run_id = uuid.uuid4().hex[:6]
        self.workload = build_workload(self.dispatcher, config.jobs, self.rng, self.run_id)
        self.watcher = LeaseWatcher(redis.Redis.from_url(stack.redis_server.url, socket_timeout=2), self.stop)
        # Evidence for a job that goes missing: when its message was last seen in the queue or in kombu's unacked.
        self.seen_in_queue: dict[str, float] = {}
        self.seen_unacked: dict[str, float] = {}
        self._seen_tokens: set[str] = set()

    def log(self, message: str) -> None:
        if self.verbose:
            print(f"[chaos {time.time() - self.timeline.started:6.1f}s] {message}", flush=True)

    # -- the enqueuer --------------------------------------------------------------------------------------

    def _enqueue(self, jobs: list[Job], deadline: float) -> list[Receipt]:
        """Store jobs, retrying the same jobs through a Redis outage (a retry of a stored job is a duplicate)."""
        while True:
            self.timeline.enqueue_calls += 1
            try:
                if len(jobs) == 1:
                    return [self.dispatcher.enqueue(jobs[0])]
                return self.dispatcher.enqueue_many(jobs)
            except EnqueueError:
                self.timeline.enqueue_errors += 1
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def _check_first_receipt(self, planned: Planned, receipt: Receipt) -> None:
        if receipt.job_id != planned.job.id:
            self.timeline.problems.append(f"job {planned.index}: receipt for {receipt.job_id}, not {planned.job.id}")
        with self._ids_lock:
            self.receipts[planned.job.id] = receipt
            self.enqueued_ids.append(planned.job.id)

    def _enqueue_again(self, planned: Planned, deadline: float) -> None:
        """The same job again: caller-keyed jobs are rebuilt (new id, same key), minted-key jobs resent."""
        again = planned.job
        params = planned.job.params
        if planned.key.startswith("chaos-"):
            if isinstance(params, TriggerEventParams):
                again = self.dispatcher.event_job(
                    params.event, params.linked_account_id, dict(params.payload), idempotency_key=planned.key
                )
            else:
                again = self.dispatcher.account_job(
                    params.linked_account_id, name=params.name, udf=dict(params.udf or {}), idempotency_key=planned.key
                )
        [receipt] = self._enqueue([again], deadline)
        self.timeline.duplicate_receipts += 1
        if not receipt.duplicate or receipt.job_id != planned.job.id:
            self.timeline.problems.append(
                f"job {planned.index} enqueued again: receipt {receipt} is not a duplicate of {planned.job.id}"
            )

    def enqueuer(self) -> None:
        jobs = self.workload.jobs
        deadline = time.monotonic() + self.config.drain_timeout
        interval = 1.0 / self.config.enqueue_rate
        start = time.monotonic()
        position = 0
        try:
            while position < len(jobs) and not self.stop.is_set():
                size = 10 if self.rng.random() < 0.2 else 1  # some backfill batches (enqueue_many)
                chunk = jobs[position : position + size]
                for planned, receipt in zip(chunk, self._enqueue([p.job for p in chunk], deadline), strict=True):
                    self._check_first_receipt(planned, receipt)
                    if planned.repeat == "now":
                        self._enqueue_again(planned, deadline)
                position += len(chunk)
                # Paced: the web app's traffic arrives over time, not in one burst.
                pause = start + position * interval - time.monotonic()
                if pause > 0:
                    self.stop.wait(pause)
            for planned in jobs:
                if planned.repeat == "later" and not self.stop.is_set():
                    self._enqueue_again(planned, deadline)
        except Exception as exc:  # reported by the main thread; the run goes on to account for what is there
            self.timeline.problems.append(f"enqueuer failed: {type(exc).__name__}: {exc}")
        self.timeline.enqueued_all = time.time()
        self.log(f"enqueued {len(self.enqueued_ids)} jobs ({self.timeline.enqueue_errors} enqueue errors retried)")

    # -- the chaos -----------------------------------------------------------------------------------------

    def _snapshot(self, worker: WorkerProcess) -> tuple[dict[str, str], dict[str, int], set[str]]:
        """Jobs this worker holds: (active job -> lease token, active job -> lease ms left, reserved jobs).

        An active job is this worker's own attempt when the attempt started after the worker received the
        job's message (the worker may also hold a copy of a job whose attempt runs, or died, elsewhere: that
        copy only waits for the lease). Each lease token is attributed to one kill only.
        """
        flying = in_flight(worker.log())
        if not flying:
            return {}, {}, set()
        rows = job_fields(self.stack.client, sorted(flying), "state", "attempt_started")
        active = [
            job_id
            for job_id, row in rows.items()
            if row["state"] == "active" and int(row["attempt_started"] or 0) / 1000 >= flying[job_id] - 0.05
        ]
        held = {j: v for j, v in leases(self.stack.client, active).items() if v[0] not in self._seen_tokens}
        self._seen_tokens.update(token for token, _ in held.values())
        reserved = {job_id for job_id, row in rows.items() if row["state"] == "queued"}
        return {j: t for j, (t, _) in held.items()}, {j: p for j, (_, p) in held.items()}, reserved

    def _kill(self) -> None:
        live = [w for w in self.stack.live_workers() if "ready." in w.log()]
        if not live:
            return
        worker = self.rng.choice(live)
        children = worker.children()
        kind = "child" if children and self.rng.random() < self.config.child_kill_share else "worker"
        try:
            tokens, pttls, reserved = self._snapshot(worker)
        except redis.RedisError as exc:
            tokens, pttls, reserved = {}, {}, set()
            self.timeline.notes.append(f"no snapshot before a kill: {exc}")
        if kind == "worker":
            worker.kill()
        else:
            os.kill(self.rng.choice(children), signal.SIGKILL)
        kill = Kill(kind, worker.name, time.time(), tokens, reserved if kind == "worker" else set())
        self.timeline.kills.append(kill)
        for job_id, token in tokens.items():
            self.watcher.watch(kill, job_id, token, pttls[job_id])
        if kind == "worker":
            replacement = self.stack.start_worker(wait=False)
            self.log(f"SIGKILL {worker.name} ({len(tokens)} active, {len(reserved)} reserved) -> {replacement.name}")
        else:
            self.log(f"SIGKILL a pool process of {worker.name} ({len(tokens)} active on the worker)")

    def _restart_redis(self) -> None:
        self.log("restarting Redis")
        down = time.time()
        self.stack.redis_server.restart()
        up = time.time()
        self.timeline.redis_restart = (down, up)
        assert self.stack.sandbox is not None
        if self.config.faults_after_restart:
            self.stack.sandbox.admin.set_faults(**self.config.faults_after_restart)
        self.log(f"Redis back after {up - down:.1f} s")

    def _sigterm(self) -> None:
        live = [w for w in self.stack.live_workers() if "ready." in w.log()]
        if not live:
            return
        worker = self.rng.choice(live)
        try:
            tokens, _, reserved = self._snapshot(worker)
        except redis.RedisError:
            tokens, reserved = {}, set()
        sent = time.time()
        try:
            code = worker.terminate(timeout=60)
        except Exception as exc:  # a worker that ignores SIGTERM for a minute is a finding, not a crash
            code = -1
            self.timeline.problems.append(f"SIGTERM: {worker.name} did not exit within 60 s ({exc})")
        kill = Kill("sigterm", worker.name, time.time(), tokens, reserved, exit_code=code)
        kill.shutdown_seconds = kill.at - sent
        # A warm shutdown ends every attempt it started: no lease of this worker may be left behind.
        still = with_redis_retry(lambda: leases(self.stack.client, sorted(tokens)))
        kill.orphaned = {job_id for job_id, (token, _) in still.items() if tokens.get(job_id) == token}
        self.timeline.kills.append(kill)
        replacement = self.stack.start_worker(wait=False)
        self.log(
            f"SIGTERM {worker.name}: exit {code} after {kill.shutdown_seconds:.1f} s "
            f"({len(tokens)} active, {len(reserved)} reserved, {len(kill.orphaned)} leases left) -> {replacement.name}"
        )

    def chaos(self) -> None:
        config = self.config
        restarted = terminated = False
        next_kill = time.monotonic() + config.kill_every * self.rng.uniform(0.6, 1.4)
        try:
            while not self.stop.is_set():
                fraction = self.settled_fraction
                if not restarted and fraction >= config.redis_restart_at:
                    self._restart_redis()
                    restarted = True
                elif not terminated and fraction >= config.sigterm_at:
                    self._sigterm()
                    terminated = True
                elif time.monotonic() >= next_kill and fraction < config.chaos_until:
                    self._kill()
                    next_kill = time.monotonic() + config.kill_every * self.rng.uniform(0.6, 1.4)
                self.stop.wait(0.1)  # pacing of the scenario, not a wait for a condition
        except Exception as exc:
            self.timeline.problems.append(f"chaos thread failed: {type(exc).__name__}: {exc}")
            self.log(f"chaos thread failed: {exc!r}")

    # -- the run -------------------------------------------------------------------------------------------

    def run(self) -> None:
        config = self.config
        assert self.stack.sandbox is not None
        admin = self.stack.sandbox.admin
        admin.seed_accounts(self.workload.seeded_accounts)
        for _ in range(config.workers):
            self.stack.start_worker(wait=True)
        admin.set_faults(**config.faults)
        self.timeline.started = time.time()
        self.log(
            f"{len(self.workload.jobs)} jobs, {config.workers} workers x {config.concurrency}, faults {config.faults}"
        )
        threads = [
            threading.Thread(target=self.enqueuer, name="enqueuer", daemon=True),
            threading.Thread(target=self.chaos, name="chaos", daemon=True),
        ]
        self.watcher.start()
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + config.drain_timeout
        last_print = 0.0
        total = len(self.workload.jobs)
        try:
            while time.monotonic() < deadline:
                with self._ids_lock:
                    ids = list(self.enqueued_ids)
                try:
                    states = job_states(self.stack.client, ids) if ids else {}
                except redis.RedisError:
                    time.sleep(0.3)
                    continue
                self._sample_messages()
                settled = sum(1 for state in states.values() if state in FINAL_STATES)
                self.settled_fraction = settled / total
                if time.monotonic() - last_print > 10:
                    last_print = time.monotonic()
                    self.log(
                        f"settled {settled}/{total}, enqueued {len(ids)}, live workers {len(self.stack.live_workers())}"
                    )
                if settled == total:
                    self.timeline.drained = time.time()
                    break
                time.sleep(0.5)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(70)
                if thread.is_alive():
                    self.timeline.problems.append(f"thread {thread.name} did not stop")
        self.log("drained" if self.timeline.drained else "drain timed out")
        admin.set_faults(error_rate=0.0, rate_429=0.0, hang_rate=0.0, slow_rate=0.0)
        self._wait_idle(config.idle_timeout)
        self.watcher.join(30)

    def _sample_messages(self) -> None:
        now = time.time()
        try:
            queued = self.stack.client.lrange(QUEUE, 0, -1)
            unacked = self.stack.client.hvals("unacked")
        except redis.RedisError:
            return
        for message in queued:
            if match := _MESSAGE_ID.search(message):
                self.seen_in_queue[match.group(1).decode()] = now
        for message in unacked:
            if match := _MESSAGE_ID.search(message):
                self.seen_unacked[match.group(1).decode()] = now

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        problems: list[str] = []
        while time.monotonic() < deadline:
            try:
                problems = pipeline_idle_problems(self.stack.client)
            except redis.RedisError as exc:
                problems = [f"redis: {exc}"]
            if not problems:
                self.timeline.idle = time.time()
                self.log("idle")
                return
            time.sleep(0.5)
        self.timeline.problems.append(f"not idle {timeout:g} s after the drain: {problems}")

    def close(self) -> None:
        self.stop.set()
        self.watcher.join(5)
        self.watcher.client.close()
        self.dispatcher.close()


# -- the account ---------------------------------------------------------------------------------------------


@dataclass
class Accounting:
    jobs: int
    enqueue_calls: int
    delivered: int
    superseded: int
    dead_by_reason: dict[str, int]
    lost: list[str]
    wrong_outcome: list[str]
    duplicates_in_window: list[str]
    duplicates_unexplained: list[str]
    attempts: int
    requests: int
    requests_by_outcome: dict[str, int]
    drain_seconds: float | None
    idle_seconds: float | None
    max_wait_active: float | None
    max_wait_reserved: float | None
    killed_jobs: int
    kills_worker: int
    kills_child: int
    sigterm: Kill | None
    redis_down_seconds: float | None
    enqueue_errors: int
    order_violations: list[str]
    delayed_live: list[str]
    dlq_problems: list[str]
    peak_1s: int
    problems: list[str]
    waits_over_target: list[str]

    def table(self) -> str:
        def fmt(value: float | None, unit: str = " s") -> str:
            return "n/a" if value is None else f"{value:.1f}{unit}"

        dead = ", ".join(f"{reason} {count}" for reason, count in sorted(self.dead_by_reason.items())) or "0"
        by_outcome = ", ".join(f"{k} {v}" for k, v in sorted(self.requests_by_outcome.items()))
        sig = self.sigterm
        sigterm = (
            "not sent"
            if sig is None
            else f"exit {sig.exit_code} in {fmt(sig.shutdown_seconds)}, {len(sig.candidates)} active / "
            f"{len(sig.reserved)} reserved, {len(sig.orphaned)} leases left"
        )
        rows = [
            ("jobs (enqueue calls)", f"{self.jobs} ({self.enqueue_calls}, {self.enqueue_errors} EnqueueError retried)"),
            ("delivered", str(self.delivered)),
            ("superseded upserts", str(self.superseded)),
            ("dead-lettered", dead),
            ("lost", str(len(self.lost))),
            ("wrong outcome", str(len(self.wrong_outcome))),
            (
                "duplicates",
                f"{len(self.duplicates_in_window) + len(self.duplicates_unexplained)} "
                f"({len(self.duplicates_in_window)} in the kill window, "
                f"{len(self.duplicates_unexplained)} unexplained)",
            ),
            ("attempts (sum over jobs)", str(self.attempts)),
            ("sandbox requests", f"{self.requests} ({by_outcome})"),
            ("peak requests in 1 s", str(self.peak_1s)),
            ("time to drain", fmt(self.drain_seconds)),
            ("time to idle", fmt(self.idle_seconds)),
            ("kills", f"{self.kills_worker} whole worker, {self.kills_child} pool process"),
            ("jobs active at a kill", str(self.killed_jobs)),
            ("longest kill -> final (active)", fmt(self.max_wait_active)),
            ("longest kill -> final (reserved)", fmt(self.max_wait_reserved)),
            ("SIGTERM", sigterm),
            ("Redis restart", f"down {fmt(self.redis_down_seconds)}"),
            ("upsert order violations", str(len(self.order_violations))),
            ("live jobs left in refold:delayed", str(len(self.delayed_live))),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
        rule = "-" * max(len(line) for line in lines)
        return "\n".join([rule, *lines, rule])


def account_for(run: ChaosRun, dlq: DeadLetterQueue) -> Accounting:
    """Every planned job, judged by the sandbox's record, the job records and the dead-letter queue."""
    stack, timeline, workload = run.stack, run.timeline, run.workload
    assert stack.sandbox is not None
    client = stack.client
    records = stack.sandbox.records()
    api = [r for r in records if r["path"] in (EVENT_PATH, ACCOUNT_PATH)]
    deliveries: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in api:
        if record["outcome"] == "delivered" and record["idempotency_key"]:
            deliveries[record["idempotency_key"]].append(record)
    ids = [planned.job.id for planned in workload.jobs]
    fields = with_redis_retry(
        lambda: job_fields(
            client, ids, "state", "attempts", "delivered_at", "superseded_at", "dead_at", "dead_reason", "key"
        )
    )
    dead_letters = {entry.id: entry for entry in dlq.list(limit=None)}

    lost: list[str] = []
    wrong: list[str] = []
    dead_by_reason: Counter[str] = Counter()
    delivered = superseded = attempts = 0
    dlq_problems: list[str] = []
    for planned in workload.jobs:
        row = fields[planned.job.id]
        state = row["state"]
        attempts += int(row["attempts"] or 0)
        sent = deliveries.get(planned.key, [])
        label = f"job {planned.index} {planned.job.id} ({planned.kind}, account {planned.account}, state {state})"
        if state not in FINAL_STATES:
            lost.append(f"{label}: not settled")
            continue
        if state == "delivered":
            delivered += 1
            if not sent:
                lost.append(f"{label}: the ledger says delivered, the sandbox never accepted it")
            if planned.expect != "deliver":
                wrong.append(f"{label}: delivered, expected {planned.expect}")
        elif state == "superseded":
            superseded += 1
            if planned.kind != "upsert":
                wrong.append(f"{label}: superseded, but it is not an upsert")
        else:
            reason = row["dead_reason"] or "?"
            dead_by_reason[reason] += 1
            if planned.expect != "permanent" or reason != "permanent":
                wrong.append(f"{label}: dead ({reason}), expected {planned.expect}")
            entry = dead_letters.get(planned.job.id)
            if entry is None:
                dlq_problems.append(f"{label}: dead but no dead-letter entry")
            else:
                status = (entry.last_error or {}).get("status_code")
                if entry.reason != reason or status != planned.expect_status:
                    dlq_problems.append(
                        f"{label}: dead letter says {entry.reason}/{status}, expected permanent/{planned.expect_status}"
                    )
                if entry.idempotency_key != planned.key:
                    dlq_problems.append(f"{label}: dead letter has key {entry.idempotency_key}")
        if planned.expect == "permanent" and sent:
            wrong.append(f"{label}: Refold accepted a job it should have refused")
    extra = set(dead_letters) - {planned.job.id for planned in workload.jobs}
    if extra:
        dlq_problems.append(f"{len(extra)} dead letters for jobs nobody planned: {sorted(extra)[:3]}")

    # Duplicates: in the documented window when the job died in a kill soon after its first delivery.
    killed_at: dict[str, list[float]] = defaultdict(list)
    for kill in timeline.kills:
        for job_id in kill.killed:
            killed_at[job_id].append(kill.at)
    by_key = workload.by_key()
    in_window: list[str] = []
    unexplained: list[str] = []
    for key, sent in deliveries.items():
        if len(sent) < 2 or key not in by_key:
            continue
        planned = by_key[key]
        first = sent[0]["time"]
        explained = any(first - 0.5 <= at <= first + WINDOW_AFTER_DELIVERY_S for at in killed_at[planned.job.id])
        line = (
            f"job {planned.index} {planned.job.id} key {key}: {len(sent)} deliveries at "
            f"{[round(r['time'] - timeline.started, 2) for r in sent]} s; kills of this job at "
            f"{[round(at - timeline.started, 2) for at in killed_at[planned.job.id]]} s"
        )
        (in_window if explained else unexplained).append(line)

    # Upsert order per account: the newest upsert's name is the account's final name, and an older upsert
    # never lands after a newer one; an event lands after the upsert enqueued before it.
    order: list[str] = []
    index_by_key = {planned.key: planned.index for planned in workload.jobs}
    upserts_by_account: dict[str, list[Planned]] = defaultdict(list)
    for planned in workload.jobs:
        if planned.kind == "upsert":
            upserts_by_account[planned.account].append(planned)
    applied: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in api:
        if record["path"] == ACCOUNT_PATH and record["outcome"] == "delivered":
            applied[record["account_id"]].append(record)
    for account, upserts in upserts_by_account.items():
        writes = applied.get(account, [])
        if not writes:
            order.append(f"{account}: no upsert reached Refold")
            continue
        if writes[-1]["name"] != upserts[-1].name:
            order.append(f"{account}: final name {writes[-1]['name']!r}, last enqueued {upserts[-1].name!r}")
        indexes = [index_by_key.get(record["idempotency_key"], -1) for record in writes]
        if any(later < earlier for earlier, later in itertools.pairwise(indexes)):
            order.append(f"{account}: upserts applied in enqueue order {indexes}")
    first_seq = {key: sent[0]["seq"] for key, sent in deliveries.items()}
    for planned in workload.jobs:
        if planned.kind == "event" and planned.after_upsert is not None and planned.key in first_seq:
            upsert_key = workload.jobs[planned.after_upsert].key
            if upsert_key in first_seq and first_seq[planned.key] < first_seq[upsert_key]:
                order.append(f"event {planned.index} landed before upsert {planned.after_upsert} of {planned.account}")

    # How long did a killed worker's jobs wait? From the kill to the job's final state.
    final_at = {}
    for job_id, row in fields.items():
        stamp = row["delivered_at"] or row["superseded_at"] or row["dead_at"]
        if stamp is not None:
            final_at[job_id] = int(stamp) / 1000
    waits_active: list[float] = []
    waits_reserved: list[float] = []
    over: list[str] = []
    for kill in timeline.kills:
        for job_id in kill.killed if kill.kind != "sigterm" else set():
            if job_id in final_at:
                waits_active.append(max(final_at[job_id] - kill.at, 0.0))
                if final_at[job_id] - kill.at > 120:
                    over.append(
                        f"job {job_id} active at {kill.kind} kill of {kill.worker}: {final_at[job_id] - kill.at:.1f} s"
                    )
        for job_id in kill.reserved:
            if job_id in final_at:
                waits_reserved.append(max(final_at[job_id] - kill.at, 0.0))
                if final_at[job_id] - kill.at > 120:
                    over.append(
                        f"job {job_id} reserved at {kill.kind} of {kill.worker}: {final_at[job_id] - kill.at:.1f} s"
                    )

    delayed = [m.decode() for m in client.zrange("refold:delayed", 0, -1)]
    delayed_states = job_states(client, delayed)
    delayed_live = [job_id for job_id, state in delayed_states.items() if state not in FINAL_STATES]

    sigterms = [kill for kill in timeline.kills if kill.kind == "sigterm"]
    restart = timeline.redis_restart
    return Accounting(
        jobs=len(workload.jobs),
        enqueue_calls=timeline.enqueue_calls,
        delivered=delivered,
        superseded=superseded,
        dead_by_reason=dict(dead_by_reason),
        lost=lost,
        wrong_outcome=wrong,
        duplicates_in_window=in_window,
        duplicates_unexplained=unexplained,
        attempts=attempts,
        requests=len(api),
        requests_by_outcome=dict(Counter(r["outcome"] for r in api)),
        drain_seconds=None if timeline.drained is None else timeline.drained - timeline.started,
        idle_seconds=None if timeline.idle is None else timeline.idle - timeline.started,
        max_wait_active=max(waits_active, default=None),
        max_wait_reserved=max(waits_reserved, default=None),
        killed_jobs=sum(len(kill.killed) for kill in timeline.kills if kill.kind != "sigterm"),
        kills_worker=sum(1 for kill in timeline.kills if kill.kind == "worker"),
        kills_child=sum(1 for kill in timeline.kills if kill.kind == "child"),
        sigterm=sigterms[0] if sigterms else None,
        redis_down_seconds=None if restart is None else restart[1] - restart[0],
        enqueue_errors=timeline.enqueue_errors,
        order_violations=order,
        delayed_live=delayed_live,
        dlq_problems=dlq_problems,
        peak_1s=max_in_window(r["time"] for r in api),
        problems=list(timeline.problems),
        waits_over_target=over,
    )


def evidence(run: ChaosRun, job_ids: list[str], limit: int = 5) -> str:
    """Job records, histories and log lines for a few job ids: what a bug report needs."""
    client = run.stack.client
    parts = []
    for job_id in job_ids[:limit]:
        record = {k.decode(): v.decode(errors="replace") for k, v in client.hgetall(f"refold:job:{job_id}").items()}
        record.pop("b64", None)
        history = [h.decode() for h in client.lrange(f"refold:job:{job_id}:hist", 0, -1)]
        lines = [
            f"{worker.name}: {line}"
            for worker in run.stack.workers
            for line in worker.log().splitlines()
            if job_id in line
        ]

        def rel(stamp: float | None) -> str:
            return "never" if stamp is None else f"{stamp - run.timeline.started:.1f} s"

        seen = (
            f"last seen in the queue at {rel(run.seen_in_queue.get(job_id))}, "
            f"in kombu's unacked at {rel(run.seen_unacked.get(job_id))}"
        )
        parts.append(
            f"--- {job_id}\nrecord: {json.dumps(record, sort_keys=True)}\nhistory: {history}\n{seen}\n"
            + "\n".join(lines[-12:])
        )
    events = [f"{kill.kind} {kill.worker} at {kill.at - run.timeline.started:.1f} s" for kill in run.timeline.kills]
    if run.timeline.redis_restart:
        down, up = run.timeline.redis_restart
        events.append(f"redis down {down - run.timeline.started:.1f} s .. {up - run.timeline.started:.1f} s")
    parts.append("chaos: " + "; ".join(events))
    return "\n".join(parts)
