"""The reliability suite: real workers, a real Redis and the Refold sandbox with fault injection, while workers
are SIGKILLed, Redis restarts and a worker gets SIGTERM; then every job is accounted for.

Short run (default, CI): ``uv run pytest tests/reliability -m reliability -s``.
Long run: ``REFOLD_CHAOS_LONG=1 uv run pytest tests/reliability -m reliability -s``.
See ``tests/reliability/README.md`` for what each test checks and the latest numbers.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis

from refold_dispatch.config import Settings
from refold_dispatch.dispatcher import Dispatcher, Receipt
from refold_dispatch.dlq import DeadLetterQueue
from refold_dispatch.errors import EnqueueError
from refold_dispatch.sandbox import max_in_window
from tests.reliability.chaos import ChaosConfig, ChaosRun, account_for, evidence
from tests.reliability.stack import (
    FINAL_STATES,
    PREFIX,
    Stack,
    cli_available,
    job_states,
    run_cli,
    secret_leaks,
)
from tests.support import CHAOS_LONG, TEST_API_KEY, RedisServer, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

# REFOLD_CHAOS_LONG=1 selects the long run (read by tests.support before conftest.py clears REFOLD_* variables).
LONG = CHAOS_LONG

# Short schedules and limits so a run takes minutes: a 1 s read timeout (the sandbox's hangs last 2.5 s, so
# each is a client timeout), a 10 s hard time limit (lease 15 s), a 25 s visibility timeout, a rate limit high
# enough that the run is not rate-bound, and a job age far beyond the run.
CHAOS_ENV = {
    "REFOLD_READ_TIMEOUT": "1",
    "REFOLD_RETRY_SCHEDULE": "1,2,4,8",
    "REFOLD_RETRY_JITTER": "0.2",
    "REFOLD_MAX_JOB_AGE_SECONDS": "3600",
    "REFOLD_TASK_TIME_LIMIT_SECONDS": "10",
    "REFOLD_VISIBILITY_TIMEOUT_SECONDS": "25",
    "REFOLD_RATE_LIMIT": "200",
    "REFOLD_RATE_BURST": "10",
    "REFOLD_BREAKER_THRESHOLD": "10",
    "REFOLD_BREAKER_COOLDOWN_SECONDS": "2",
    "REFOLD_BREAKER_MAX_COOLDOWN_SECONDS": "10",
    "REFOLD_MOVER_INTERVAL_SECONDS": "0.2",
}
# Faults at double-digit rates in all: 10 % 5xx (500/502/503), 10 % hangs past the read timeout, 5 % slow (but
# in time) and 2 % spurious 429s, without Retry-After until Redis restarts and with it after. Each 429 pauses
# every worker (that is the design), so a 10 % 429 rate would make the run rate-bound at ~10 requests/s; the
# sandbox's own limiter (Retry-After) sits at the workers' 200/s to catch any overshoot.
CHAOS_FAULTS: dict[str, Any] = {
    "error_rate": 0.10,
    "error_statuses": [500, 502, 503],
    "hang_rate": 0.10,
    "hang_seconds": 2.5,
    "slow_rate": 0.05,
    "slow_seconds": 0.3,
    "rate_429": 0.02,
    "retry_after_429": None,
    "seed": 20260701,
}


def chaos_config() -> ChaosConfig:
    if LONG:
        return ChaosConfig(
            jobs=5000,
            workers=3,
            concurrency=3,
            kill_every=4.0,
            enqueue_rate=8.0,
            drain_timeout=1500,
            idle_timeout=90,
            faults=CHAOS_FAULTS,
            faults_after_restart={"retry_after_429": 1},
        )
    return ChaosConfig(
        jobs=1000,
        workers=3,
        concurrency=3,
        kill_every=5.0,
        enqueue_rate=14.0,
        drain_timeout=200,
        idle_timeout=60,
        faults=CHAOS_FAULTS,
        faults_after_restart={"retry_after_429": 1},
    )


def _settings(stack: Stack) -> Settings:
    assert stack.sandbox is not None
    return Settings(  # type: ignore[call-arg]
        _env_file=None, api_key=TEST_API_KEY, redis_url=stack.redis_server.url, base_url=stack.sandbox.url
    )


def _cli_outputs(stack: Stack, dlq: DeadLetterQueue) -> list[tuple[str, str]]:
    """``status --json`` and the ``dlq`` commands, run with the API key in their environment."""
    if not cli_available():
        return []
    env = stack.env
    outputs = []
    commands = [["status", "--json"], ["dlq", "list", "--json"], ["dlq", "stats", "--json"]]
    entries = dlq.list(limit=1)
    if entries:
        commands.append(["dlq", "show", entries[0].id, "--json"])
    for command in commands:
        done = run_cli(env, *command)
        name = "refold-dispatch " + " ".join(command)
        assert done.returncode == 0, f"{name} exited {done.returncode}: {done.stderr[-2000:]}"
        json.loads(done.stdout)  # --json prints JSON
        outputs.append((name, done.stdout + done.stderr))
    missing = run_cli(env, "dlq", "show", "no-such-dead-letter", "--json")
    assert missing.returncode != 0
    outputs.append(("refold-dispatch dlq show no-such-dead-letter", missing.stdout + missing.stderr))
    return outputs


def _assert_no_secret(stack: Stack, dlq: DeadLetterQueue) -> int:
    outputs = _cli_outputs(stack, dlq)
    logs = [(worker.name, worker.log()) for worker in stack.workers]
    places, scanned = secret_leaks(stack.client, logs, outputs)
    assert scanned > 0
    assert not places, f"the API key leaked: {places[:10]}"
    for entry in dlq.list(limit=None):
        assert TEST_API_KEY not in entry.model_dump_json(), entry.id
    # The logs are not empty of what matters: every attempt is logged with its evidence.
    assert any('"event": "delivery_attempt"' in body and '"idempotency_key"' in body for _, body in logs)
    return len(outputs)


# -- the main scenario ---------------------------------------------------------------------------------------


@pytest.mark.timeout(2400 if LONG else 420)
def test_every_job_is_accounted_for_under_chaos(tmp_path: Path) -> None:
    config = chaos_config()
    stack = Stack(tmp_path, CHAOS_ENV, config.sandbox_rate, config.sandbox_burst, concurrency=config.concurrency)
    stack.start()
    run: ChaosRun | None = None
    try:
        run = ChaosRun(stack, config)
        run.run()
        dlq = DeadLetterQueue(run.settings, stack.client)
        accounting = account_for(run, dlq)
        table = accounting.table()
        print(f"\nchaos run ({'long' if LONG else 'short'}), logs in {tmp_path}\n{table}")

        failures: list[str] = []

        def check(ok: bool, what: str, details: list[str] | None = None) -> None:
            if not ok:
                failures.append(what + ("\n  " + "\n  ".join(details[:10]) if details else ""))

        check(not accounting.problems, "problems during the run", accounting.problems)
        check(not accounting.lost, f"{len(accounting.lost)} jobs lost", accounting.lost)
        check(not accounting.wrong_outcome, "jobs with the wrong outcome", accounting.wrong_outcome)
        check(not accounting.dlq_problems, "dead letters without the right reason/evidence", accounting.dlq_problems)
        check(
            not accounting.duplicates_unexplained,
            "duplicate deliveries outside the documented kill window",
            accounting.duplicates_unexplained,
        )
        # Each kill can cause at most one duplicate per pool process it took down.
        kills = accounting.kills_worker + accounting.kills_child
        check(len(accounting.duplicates_in_window) <= kills * config.concurrency, "more duplicates than kills allow")
        check(not accounting.order_violations, "upsert order per account broken", accounting.order_violations)
        check(not accounting.delayed_live, "live jobs stuck in refold:delayed", accounting.delayed_live)
        check(accounting.delivered > 0.9 * accounting.jobs, f"only {accounting.delivered} delivered")
        check(accounting.dead_by_reason.get("permanent", 0) > 0, "no job was dead-lettered as permanent")
        check(
            accounting.superseded + accounting.delivered + sum(accounting.dead_by_reason.values()) == accounting.jobs,
            "jobs do not add up",
        )
        # The chaos happened: kills of both kinds with jobs in flight, a Redis restart, a warm shutdown.
        check(accounting.kills_worker >= 3 and accounting.killed_jobs > 0, "too few kills hit work in flight")
        check(accounting.redis_down_seconds is not None, "Redis was not restarted")
        sigterm = accounting.sigterm
        check(
            sigterm is not None and sigterm.exit_code == 0, f"warm shutdown exit code {sigterm and sigterm.exit_code}"
        )
        check(
            sigterm is not None and not sigterm.orphaned,
            "SIGTERM left leases behind",
            sorted(sigterm.orphaned) if sigterm else [],
        )
        check(
            accounting.max_wait_active is not None and accounting.max_wait_active < 120,
            f"a killed worker's active job waited {accounting.max_wait_active} s (target < 120 s)",
            accounting.waits_over_target,
        )
        check(
            accounting.max_wait_reserved is None or accounting.max_wait_reserved < 120,
            f"a killed worker's reserved job waited {accounting.max_wait_reserved} s (target < 120 s)",
            accounting.waits_over_target,
        )
        if not LONG:
            check(accounting.drain_seconds is not None and accounting.drain_seconds < 200, "the short run is too slow")
        if failures:
            suspects = [line.split()[2] for line in accounting.lost + accounting.duplicates_unexplained]
            print("\nevidence:\n" + evidence(run, suspects))
        assert not failures, "\n".join(failures) + "\n" + table

        _assert_no_secret(stack, dlq)
    finally:
        if run is not None:
            run.close()
        stack.close()


# -- (a) Refold down for longer than the schedule's first steps ---------------------------------------------

OUTAGE_ENV = {
    **CHAOS_ENV,
    "REFOLD_RATE_LIMIT": "20",  # Refold's documented limit...
    "REFOLD_RATE_BURST": "5",  # ...and burst, which the sandbox enforces too
    "REFOLD_BREAKER_THRESHOLD": "5",
    "REFOLD_BREAKER_COOLDOWN_SECONDS": "3",
    "REFOLD_BREAKER_MAX_COOLDOWN_SECONDS": "8",
}


@pytest.mark.timeout(300)
def test_refold_outage_opens_the_breaker_and_recovery_is_not_a_storm(tmp_path: Path) -> None:
    rate, burst, outage_seconds = 20, 5, 25.0
    stack = Stack(tmp_path, OUTAGE_ENV, rate, burst).start()
    try:
        assert stack.sandbox is not None
        admin = stack.sandbox.admin
        accounts = [f"acct-outage-{n:02d}" for n in range(20)]
        admin.seed_accounts(accounts)
        for _ in range(2):
            stack.start_worker()
        settings = _settings(stack)
        flow_key = f"{PREFIX}:rl:{settings.api_key_fingerprint}"

        admin.set_faults(error_rate=1.0)
        down_at = time.time()
        with Dispatcher(settings) as dispatcher:
            receipts = [dispatcher.trigger_event("order.created", accounts[n % 20], {"n": n}) for n in range(220)] + [
                dispatcher.upsert_linked_account(account, name=f"{account} renamed") for account in accounts
            ]
        wait_for(
            lambda: stack.client.hget(flow_key, "state") == b"open", timeout=20, what="the circuit breaker to open"
        )
        # The outage itself: Refold answers 5xx for longer than the first steps of the schedule (1+2+4+8 s).
        time.sleep(max(down_at + outage_seconds - time.time(), 0))
        last_seq = max((r["seq"] for r in stack.sandbox.records()), default=0)
        admin.set_faults(error_rate=0.0)
        up_at = time.time()

        ids = [receipt.job_id for receipt in receipts]
        wait_for(
            lambda: all(state == "delivered" for state in job_states(stack.client, ids).values()),
            timeout=120,
            interval=0.5,
            what="every job to be delivered after the outage",
        )
        recovered_in = time.time() - up_at
        records = stack.sandbox.records()
        during = [r for r in records if r["seq"] <= last_seq]
        after = [r for r in records if r["time"] >= up_at]
        delivered = Counter(r["idempotency_key"] for r in records if r["outcome"] == "delivered")
        peak_after = max_in_window(r["time"] for r in after)
        statuses_after = Counter(r["status"] for r in after)
        flow = {k.decode(): v.decode() for k, v in stack.client.hgetall(flow_key).items()}
        print(
            f"\noutage {outage_seconds:g} s: {len(receipts)} jobs, {len(during)} requests reached Refold during it; "
            f"all delivered {recovered_in:.1f} s after it ended; peak after it {peak_after} requests in 1 s "
            f"(limit {rate} + burst {burst}); statuses after {dict(statuses_after)}; breaker {flow.get('state')}"
        )
        assert all(delivered[receipt.idempotency_key] == 1 for receipt in receipts), "a job was not delivered once"
        assert DeadLetterQueue(settings, stack.client).count() == 0  # no job exhausted its schedule in the outage
        # Without the breaker, 240 jobs x 5 attempts x 3 quick tries would have hit Refold during the outage.
        assert len(during) < 60, len(during)
        assert peak_after <= rate + burst, peak_after
        # The global limiter keeps one slot of Refold's burst as a margin; a rare 429 from timing jitter on a
        # loaded machine pauses everyone (no storm), but more than that means the limiter is not global.
        assert statuses_after.get(429, 0) <= max(2, len(after) // 100), "the recovery went over the rate limit"
    finally:
        stack.close()


# -- (b) Redis down at enqueue -------------------------------------------------------------------------------


class _Enqueuer(threading.Thread):
    """A web app enqueuing in a loop; every call is timed and its outcome kept."""

    def __init__(self, dispatcher: Dispatcher, account: str) -> None:
        super().__init__(name="enqueuer", daemon=True)
        self.dispatcher = dispatcher
        self.account = account
        self.stop_event = threading.Event()
        self.ok: list[tuple[Receipt, float]] = []
        self.failed: list[tuple[str, float, str]] = []  # (idempotency key, seconds, message)
        self.other: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + 150
        n = 0
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            n += 1
            key = f"down-{n}"
            started = time.monotonic()
            try:
                receipt = self.dispatcher.trigger_event("order.created", self.account, {"n": n}, idempotency_key=key)
            except EnqueueError as exc:
                self.failed.append((key, time.monotonic() - started, str(exc)))
                time.sleep(0.05)
                continue
            except Exception as exc:
                self.other.append(f"{key}: {type(exc).__name__}: {exc}")
                continue
            self.ok.append((receipt, time.monotonic() - started))
            time.sleep(0.01)


@pytest.mark.timeout(240)
def test_redis_down_at_enqueue_fails_fast_and_never_reports_a_job_it_did_not_store(tmp_path: Path) -> None:
    stack = Stack(tmp_path, CHAOS_ENV, 200, 10).start()
    try:
        assert stack.sandbox is not None
        account = "acct-redis-down"
        stack.sandbox.admin.seed_accounts([account])
        settings = _settings(stack)
        server = stack.redis_server
        with Dispatcher(settings) as dispatcher:
            enqueuer = _Enqueuer(dispatcher, account)
            enqueuer.start()
            try:

                def more_ok(n: int) -> Any:
                    target = len(enqueuer.ok) + n
                    return lambda: len(enqueuer.ok) >= target

                def more_failed(n: int) -> Any:
                    target = len(enqueuer.failed) + n
                    return lambda: len(enqueuer.failed) >= target

                wait_for(more_ok(30), timeout=20, what="enqueues before the outage")
                # 1. Redis stopped (as an orchestrator stops it): connections are refused.
                stopped_failures = more_failed(5)
                server.stop()
                wait_for(stopped_failures, timeout=30, what="enqueues failing while Redis is stopped")
                server.start()
                wait_for(more_ok(30), timeout=30, what="enqueues after Redis is back")
                # 2. Redis frozen (SIGSTOP): connections hang, so only the client's timeouts bound the call.
                assert server.process is not None
                frozen_failures = more_failed(3)
                os.kill(server.process.pid, signal.SIGSTOP)
                try:
                    wait_for(frozen_failures, timeout=30, what="enqueues failing while Redis is frozen")
                finally:
                    os.kill(server.process.pid, signal.SIGCONT)
                wait_for(more_ok(30), timeout=30, what="enqueues after Redis thaws")
            finally:
                enqueuer.stop_event.set()
                enqueuer.join(30)
        assert not enqueuer.other, enqueuer.other
        slowest_failure = max(seconds for _, seconds, _ in enqueuer.failed)
        slowest_ok = max(seconds for _, seconds in enqueuer.ok)

        # Every receipt names a stored job, under its idempotency key.
        client = stack.client
        states = job_states(client, [receipt.job_id for receipt, _ in enqueuer.ok])
        missing = [job_id for job_id, state in states.items() if state is None]
        claims = {receipt: client.get(f"{PREFIX}:idem:{receipt.idempotency_key}") for receipt, _ in enqueuer.ok}
        wrong_claim = [r.idempotency_key for r, value in claims.items() if value is None or value.decode() != r.job_id]
        failed_but_stored = [key for key, _, _ in enqueuer.failed if client.exists(f"{PREFIX}:idem:{key}")]

        # And a worker delivers each of them exactly once.
        stack.start_worker()
        ids = [receipt.job_id for receipt, _ in enqueuer.ok]
        wait_for(
            lambda: all(state in FINAL_STATES for state in job_states(client, ids).values()),
            timeout=90,
            interval=0.5,
            what="the receipted jobs to be delivered",
        )
        delivered = Counter(r["idempotency_key"] for r in stack.sandbox.records() if r["outcome"] == "delivered")
        print(
            f"\nRedis down at enqueue: {len(enqueuer.ok)} receipts, {len(enqueuer.failed)} EnqueueErrors "
            f"(slowest {slowest_failure:.2f} s; slowest success {slowest_ok:.2f} s); "
            f"{len(failed_but_stored)} failed calls had stored their job anyway (frozen Redis ran them later)"
        )
        assert not missing, f"receipts for jobs Redis does not have: {missing[:5]}"
        assert not wrong_claim, wrong_claim[:5]
        assert slowest_failure < 2.5, f"an EnqueueError took {slowest_failure:.2f} s (promised: about 2 s)"
        assert all(delivered[receipt.idempotency_key] == 1 for receipt, _ in enqueuer.ok)
        # An EnqueueError says what the caller must know: "nothing was enqueued" when the command never left
        # (connection refused), otherwise that the job may be stored and enqueueing again with its key is safe.
        sure_nothing = {key for key, _, message in enqueuer.failed if "nothing was enqueued" in message}
        unsure = {
            key for key, _, message in enqueuer.failed if "enqueue it again with the same idempotency key" in message
        }
        assert sure_nothing | unsure == {key for key, _, _ in enqueuer.failed}
        assert not sure_nothing & set(failed_but_stored), "said nothing was enqueued, but the job was stored"
    finally:
        stack.close()


# -- (c) the API key never leaks ------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_api_key_never_leaks_into_logs_redis_dead_letters_or_cli(tmp_path: Path) -> None:
    env = {**CHAOS_ENV, "REFOLD_LOG_LEVEL": "DEBUG"}
    config = ChaosConfig(
        jobs=200,
        workers=2,
        concurrency=2,
        kill_every=6.0,
        enqueue_rate=25,
        redis_restart_at=0.3,
        sigterm_at=0.6,
        chaos_until=0.9,
        drain_timeout=150,
        idle_timeout=60,
        faults={**CHAOS_FAULTS, "rate_429": 0.05, "retry_after_429": 1},
        seed=7,
    )
    stack = Stack(tmp_path, env, config.sandbox_rate, config.sandbox_burst, concurrency=config.concurrency).start()
    run: ChaosRun | None = None
    try:
        run = ChaosRun(stack, config, verbose=False)
        run.run()
        dlq = DeadLetterQueue(run.settings, stack.client)
        assert dlq.count() > 0  # permanent failures: their evidence (errors, history) is checked too
        commands = _assert_no_secret(stack, dlq)
        print(
            f"\nAPI key absent from {len(stack.workers)} worker logs (DEBUG), Redis, {dlq.count()} dead letters and "
            f"{commands} CLI outputs"
        )
        if not cli_available():
            pytest.skip("src/refold_dispatch/cli.py does not exist yet: logs, Redis and dead letters were checked")
    finally:
        if run is not None:
            run.close()
        stack.close()


@pytest.mark.timeout(120)
def test_worker_log_names_the_refold_environment_never_the_key(tmp_path: Path) -> None:
    """README: a worker "logs which Refold environment it talks to (test or production, never the key)"."""
    stack = Stack(tmp_path, CHAOS_ENV, 200, 10).start()
    try:
        worker = stack.start_worker()
        log = worker.log()
        assert TEST_API_KEY not in log
        assert '"refold_environment": "test"' in log, "the worker's start-up line (environment) is not in its log"
        assert _settings(stack).api_key_fingerprint in log
    finally:
        stack.close()


# -- the mover's heal must not republish what is still in the queue -----------------------------------------


@pytest.mark.timeout(60)
def test_heal_leaves_jobs_that_are_still_in_the_queue_alone(tmp_path: Path) -> None:
    """The state a kill leaves behind, then the mover a minute later (found by the chaos runs).

    A worker pops job A (kombu records it unacked) and is SIGKILLed; the watchdog publishes A again; kombu's
    visibility sweep puts A's old message back at the *tail* of the queue (kombu restores with RPUSH). Jobs
    enqueued before A's second publish are still waiting in the queue, untouched: none of them was lost.
    """
    from refold_dispatch.scripts import ScriptContext, Scripts

    server = RedisServer()
    server.start()
    client = redis.Redis.from_url(server.url)
    try:
        settings = Settings(  # type: ignore[call-arg]
            _env_file=None, api_key=TEST_API_KEY, redis_url=server.url, base_url="http://refold.test"
        )
        scripts = Scripts(client, ScriptContext.from_settings(settings))
        with Dispatcher(settings) as dispatcher:
            receipts = [dispatcher.trigger_event("order.created", f"acct-{n % 7}", {"n": n}) for n in range(40)]
        first = receipts[0].job_id
        seconds, micros = client.time()
        now_ms = seconds * 1000 + micros // 1000
        # A worker pops the oldest message (A) and records it as unacked, then dies in its attempt.
        message = client.rpop(settings.queue)
        assert message is not None and first.encode() in message
        client.hset("unacked", f"{first}.1", json.dumps([message.decode(), "", settings.queue]))
        client.hset(f"{PREFIX}:job:{first}", mapping={"state": "active", "attempt_started": now_ms})
        client.zrem(f"{PREFIX}:queued", first)  # begin took it off the published-not-begun set
        # 30 s later the watchdog brings A back: a second message at the head of the queue.
        client.zadd(f"{PREFIX}:delayed", {first: now_ms + 30_000})
        assert scripts.run("promote", [500], now_ms=now_ms + 30_000) == 1
        # kombu's visibility sweep restores A's first message to the tail (RPUSH), as the next one out.
        client.hdel("unacked", f"{first}.1")
        client.rpush(settings.queue, message)
        depth = client.llen(settings.queue)

        # A minute after the jobs were enqueued the mover looks for lost messages: nothing is lost.
        scripts.run("promote", [500], now_ms=now_ms + 61_000)

        pubs = [int(client.hget(f"{PREFIX}:job:{r.job_id}", "pubs") or 0) for r in receipts[1:]]
        republished = sum(1 for count in pubs if count > 1)
        assert republished == 0, (
            f"the mover republished {republished} of {len(pubs)} jobs whose message was still in the queue "
            f"(queue {depth} -> {client.llen(settings.queue)} messages)"
        )
    finally:
        client.close()
        server.cleanup()
