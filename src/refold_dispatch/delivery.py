"""One delivery attempt of one job, from "a worker received its message" to a recorded outcome.

This is the worker's logic without Celery (``tasks.py`` only maps the outcome onto Celery states), so it is
tested directly on fakeredis and ``httpx.MockTransport``. One attempt:

1. ``begin`` (one script): skip a job already delivered, superseded or dead-lettered; skip a stale copy; defer
   while another worker holds the job's lease or another upsert of the account is in flight; park an event
   until the upsert it must follow is delivered; otherwise take the lease, count the attempt and arm a
   watchdog that brings the job back if this worker dies.
2. Quick retries (tenacity, seconds) around: a flow-control permit (rate limit, shared pause, breaker), then
   the request through :class:`~refold_dispatch.client.RefoldClient` with the job's idempotency key.
3. ``finish`` on success; on failure the pure :func:`~refold_dispatch.retry.decide` picks ``reschedule``
   (delayed set) or ``deadletter``. Flow-control holds reschedule without spending an attempt.

Each attempt ends with one structured log line. The payload and the API key are never logged.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import redis
import structlog
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential

from refold_dispatch.client import RefoldClient
from refold_dispatch.config import Settings
from refold_dispatch.dlq import store_invalid
from refold_dispatch.errors import DeadLetteredError, RefoldError, TransientError
from refold_dispatch.events import TaskEvents
from refold_dispatch.flow import FlowControl, Hold, Permit, outcome_of
from refold_dispatch.jobs import Job, TriggerEventParams
from refold_dispatch.retry import GiveUp, RetryPolicy, decide, is_quick_retryable, quick_retry_wait
from refold_dispatch.scripts import ScriptArg, Scripts

OutcomeKind = Literal["delivered", "skipped", "deferred", "dead"]
T = TypeVar("T")

# Jobs held back by flow control come back spread over this window, so a crowd does not wake at once.
HOLD_SPREAD_MS = 250
HOLD_REASONS = {"breaker": "circuit open", "paused": "Refold asked everyone to back off", "rate": "rate limit"}
# A second upsert of the same account waits this long for the first to finish before it looks again.
LOCK_RETRY_MS = 1000
# Redis blips inside an attempt are retried for about this long before the task gives the message back.
REDIS_RETRY_SECONDS = 10.0
# Recording a delivery is retried longer: giving up there is the one way a job could be sent twice.
FINISH_RETRY_SECONDS = 30.0

log = structlog.get_logger("refold_dispatch.delivery")


@dataclass(frozen=True)
class Outcome:
    """How one attempt ended. ``due_at`` (epoch seconds) is set for deferred jobs that have a due time."""

    kind: OutcomeKind
    reason: str
    job_id: str
    attempt: int = 0
    due_at: float | None = None
    status: int | None = None
    request_id: str | None = None
    detail: str = ""
    evidence: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """What the Celery task returns for a delivered or skipped job (Flower shows it as the result)."""
        return {"outcome": self.kind, "reason": self.reason, "status": self.status, "request_id": self.request_id}


def closing_events(events: TaskEvents | None, outcome: Outcome) -> list[str]:
    """The Celery event that ends this execution in Flower: succeeded, retried (deferred) or failed (dead)."""
    if events is None:
        return []
    if outcome.kind in ("delivered", "skipped"):
        return events.succeeded(outcome.summary())
    if outcome.kind == "deferred":
        return events.retried(outcome.reason)
    return events.failed(repr(DeadLetteredError(outcome.job_id, outcome.reason, outcome.detail)))


class _Deferred(Exception):
    """Flow control said "not now": leave the quick-retry loop and reschedule without spending the attempt."""

    def __init__(self, hold: Hold) -> None:
        super().__init__(f"{hold.kind} until {hold.until_ms}")
        self.hold = hold


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Deliverer:
    """Delivers jobs by id. One per worker process; thread-safe (no per-job state on the instance)."""

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis,
        client: RefoldClient,
        scripts: Scripts,
        *,
        rng: Callable[[], float] = random.random,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.redis = redis_client
        self.client = client
        self.scripts = scripts
        self.flow = FlowControl(scripts, settings)
        self.policy = RetryPolicy.from_settings(settings)
        self.rng = rng
        self.sleep = sleep
        self.clock = clock
        self.lease_ms = (settings.task_time_limit_seconds + 5) * 1000

    # -- the attempt ----------------------------------------------------------------------------------------

    def deliver(self, job_id: str, events: TaskEvents | None = None) -> Outcome:
        """One attempt; ``events`` (from the Celery task) are published by the scripts that record each step."""
        token = uuid.uuid4().hex
        # The first flow-control permit rides along with begin: the common path is one round trip.
        jitter_ms = int(self.rng() * HOLD_SPREAD_MS)
        args = [job_id, token, self.lease_ms, LOCK_RETRY_MS, *self.flow.acquire_args(token), jitter_ms]
        if events is not None:
            args += events.started()
        result = self._redis(lambda: self.scripts.run("begin", args))
        verdict = _text(result[0])
        if verdict != "go":
            return self._not_started(job_id, verdict, [_text(part) for part in result[1:]], events)
        job = Job.from_json(_text(result[1]))
        attempt, created_ms, credit_ms = int(result[2]), int(_text(result[3])), int(_text(result[4]))
        first_permit = Permit(wait_seconds=float(_text(result[5])) / 1000, probe=int(result[6]) == 1)
        return self._attempt(job, token, (attempt, created_ms, credit_ms), first_permit, events)

    def _not_started(self, job_id: str, verdict: str, rest: list[str], events: TaskEvents | None) -> Outcome:
        if verdict == "missing":
            self.dead_letter_invalid(job_id, "no job record for this id (expired, purged, or never enqueued)", b"")
            outcome = Outcome("dead", "invalid", job_id, detail="no job record")
        elif verdict in ("done", "stale"):
            outcome = Outcome("skipped", rest[0], job_id)
        elif verdict in ("held", "wait_lock"):
            reason = "leased by another worker" if verdict == "held" else "another upsert of the account is in flight"
            outcome = Outcome("deferred", reason, job_id, due_at=int(rest[0]) / 1000)
        elif verdict == "waiting":
            outcome = Outcome("deferred", f"waiting for upsert {rest[0]} of its account", job_id)
        elif verdict == "dead":
            outcome = Outcome("dead", "dependency", job_id, detail="the upsert it follows was dead-lettered")
        elif verdict == "hold":
            outcome = Outcome("deferred", HOLD_REASONS[rest[0]], job_id, due_at=int(rest[1]) / 1000)
        else:
            raise RuntimeError(f"begin script answered {verdict!r}")
        self.publish_events(closing_events(events, outcome))  # no script records these endings
        self._log(outcome)
        return outcome

    def _attempt(
        self,
        job: Job,
        token: str,
        progress: tuple[int, int, int],
        first_permit: Permit,
        events: TaskEvents | None,
    ) -> Outcome:
        attempt = progress[0]
        started = time.monotonic()
        try:
            result, probe = self._send_with_quick_retries(job, first_permit)
        except _Deferred as deferred:
            return self._hold(job, token, attempt, deferred.hold, started, events=events)
        except RefoldError as refold_error:
            return self._failed(job, token, progress, refold_error, started, events=events)
        except Exception as exc:  # a bug or a soft time limit must not lose the job: treat it as transient
            unexpected = TransientError(f"unexpected {type(exc).__name__}: {exc}", error_code=type(exc).__name__)
            return self._failed(job, token, progress, unexpected, started, events=events)
        latency_ms = (time.monotonic() - started) * 1000
        status = int(getattr(result, "status_code", 200))
        request_id = getattr(result, "request_id", None)
        outcome = Outcome("delivered", "ok", job.id, attempt, status=status, request_id=request_id)
        entry = self._history(attempt, "delivered", latency_ms, status=status, request_id=request_id)
        # Recording the delivery, telling flow control it went well and telling Flower: one round trip.
        finish_args = [
            job.id,
            token,
            status,
            request_id or "",
            entry,
            *self.flow.success_args(probe=probe),
            *closing_events(events, outcome),
        ]
        self._redis(lambda: self.scripts.run("finish", finish_args), budget=FINISH_RETRY_SECONDS)
        self._log(outcome, job, latency_ms)
        return outcome

    def _send_with_quick_retries(self, job: Job, first_permit: Permit) -> tuple[object, bool]:
        """Send with quick retries; returns the result and whether the successful try was the breaker's probe."""
        s = self.settings
        started = time.monotonic()
        deadline = started + s.quick_retry_budget_seconds
        try:
            # The first try runs bare: a tenacity loop costs more than the try itself on the common path.
            return self._send_once(job, first_permit)
        except Exception as exc:
            if s.quick_retry_attempts <= 1 or not is_quick_retryable(exc, deadline - time.monotonic()):
                raise
        self.sleep(quick_retry_wait(1, self.rng))
        retrying = Retrying(
            stop=stop_after_attempt(s.quick_retry_attempts - 1)
            | stop_after_delay(max(s.quick_retry_budget_seconds - (time.monotonic() - started), 0.0)),
            retry=retry_if_exception(lambda exc: is_quick_retryable(exc, deadline - time.monotonic())),
            wait=lambda state: quick_retry_wait(state.attempt_number + 1, self.rng),
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(lambda: self._send_once(job, None))

    def _send_once(self, job: Job, permit: Permit | Hold | None) -> tuple[object, bool]:
        if permit is None:
            permit = self._redis(self.flow.acquire)
        if isinstance(permit, Hold):
            raise _Deferred(permit)
        if permit.wait_seconds > 0:
            self.sleep(permit.wait_seconds)
        try:
            result = self._call_refold(job)
        except RefoldError as error:
            flow_outcome = outcome_of(error)
            if flow_outcome is not None:
                retry_after = error.retry_after
                self._redis(lambda: self.flow.report(flow_outcome, retry_after=retry_after, probe=permit.probe))
            raise
        return result, permit.probe

    def _call_refold(self, job: Job) -> object:
        return self.client.send_job(job)

    # -- endings --------------------------------------------------------------------------------------------

    def _hold(
        self, job: Job, token: str, attempt: int, hold: Hold, started: float, *, events: TaskEvents | None
    ) -> Outcome:
        now_ms = int(self.clock() * 1000)
        due_ms = max(hold.until_ms, now_ms) + int(self.rng() * HOLD_SPREAD_MS)
        # An open breaker or a shared pause is an outage: its length is credited to the job's age budget.
        credit_ms = max(due_ms - now_ms, 0) if hold.kind in ("breaker", "paused") else 0
        outcome = Outcome("deferred", HOLD_REASONS[hold.kind], job.id, attempt, due_at=due_ms / 1000)
        args: list[ScriptArg] = [job.id, token, due_ms, 1, credit_ms, hold.kind, "", ""]
        args += closing_events(events, outcome)
        self._redis(lambda: self.scripts.run("reschedule", args))
        self._log(outcome, job, (time.monotonic() - started) * 1000)
        return outcome

    def _failed(
        self,
        job: Job,
        token: str,
        progress: tuple[int, int, int],
        error: RefoldError,
        started: float,
        *,
        events: TaskEvents | None,
    ) -> Outcome:
        attempt, created_ms, credit_ms = progress  # the attempt number, and the job's age inputs
        latency_ms = (time.monotonic() - started) * 1000
        evidence = error.evidence()
        error_json = json.dumps(evidence)
        age = self.clock() - created_ms / 1000 - credit_ms / 1000
        decision = decide(error, attempts=attempt, age_seconds=age, policy=self.policy, random=self.rng)
        if isinstance(decision, GiveUp):
            entry = self._history(attempt, decision.reason, latency_ms, error=error)
            outcome = Outcome(
                "dead",
                decision.reason,
                job.id,
                attempt,
                status=error.status_code,
                request_id=error.request_id,
                detail=f"{decision.why}: {error}",
                evidence=evidence,
            )
            script = "deadletter"
            args: list[ScriptArg] = [job.id, token, decision.reason, error_json, decision.why, entry]
        else:
            due_ms = int((self.clock() + decision.delay) * 1000)
            entry = self._history(attempt, "retry", latency_ms, error=error)
            outcome = Outcome(
                "deferred",
                f"retry: {error}",
                job.id,
                attempt,
                due_at=due_ms / 1000,
                status=error.status_code,
                request_id=error.request_id,
                evidence=evidence,
            )
            script = "reschedule"
            args = [job.id, token, due_ms, 0, 0, "retry", error_json, entry]
        args += closing_events(events, outcome)
        self._redis(lambda: self.scripts.run(script, args))
        self._log(outcome, job, latency_ms)
        return outcome

    def publish_events(self, messages: list[str]) -> None:
        """Publish Celery events outside a script (endings no script records). Best effort: Flower missing one
        event is not worth failing or delaying a task."""
        if not messages:
            return
        try:
            with self.redis.pipeline(transaction=False) as pipe:
                for n in range(0, len(messages), 2):
                    pipe.publish(messages[n], messages[n + 1])
                pipe.execute()
        except redis.RedisError as exc:
            log.warning("task_events_not_published", error=f"{type(exc).__name__}: {exc}")

    def dead_letter_invalid(self, dead_id: str, why: str, raw: bytes, *, task: str | None = None) -> None:
        """Keep a message that is not a job we can deliver, with its raw body as evidence."""
        self._redis(lambda: store_invalid(self.scripts, dead_id, why, raw, task=task, now=self.clock()))

    # -- helpers --------------------------------------------------------------------------------------------

    def _history(
        self,
        attempt: int,
        outcome: str,
        latency_ms: float,
        *,
        status: int | None = None,
        request_id: str | None = None,
        error: RefoldError | None = None,
    ) -> str:
        entry: dict[str, Any] = {
            "attempt": attempt,
            "at": round(self.clock(), 3),
            "outcome": outcome,
            "latency_ms": round(latency_ms, 1),
            "status": error.status_code if error else status,
            "request_id": error.request_id if error else request_id,
        }
        if error is not None:
            entry["error_code"] = error.error_code
            entry["message"] = error.message[:300]
        return json.dumps(entry)

    def _redis(self, call: Callable[[], T], *, budget: float = REDIS_RETRY_SECONDS) -> T:
        """Run a Redis call, riding out a short outage (a restart) with backoff before giving up."""
        try:
            return call()  # the common path, without building a retry loop
        except (redis.ConnectionError, redis.TimeoutError):
            pass
        retrying = Retrying(
            stop=stop_after_delay(budget),
            retry=retry_if_exception(lambda exc: isinstance(exc, redis.ConnectionError | redis.TimeoutError)),
            wait=wait_exponential(multiplier=0.1, max=2.0),
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(call)

    def _log(self, outcome: Outcome, job: Job | None = None, latency_ms: float | None = None) -> None:
        fields: dict[str, Any] = {
            "job_id": outcome.job_id,
            "attempt": outcome.attempt,
            "outcome": outcome.kind,
            "reason": outcome.reason,
        }
        if job is not None:
            fields["kind"] = job.kind
            fields["account"] = job.linked_account_id
            fields["idempotency_key"] = job.idempotency_key
            if isinstance(job.params, TriggerEventParams):
                fields["event_name"] = job.params.event
        if outcome.status is not None:
            fields["status"] = outcome.status
        if outcome.request_id:
            fields["request_id"] = outcome.request_id
        if latency_ms is not None:
            fields["latency_ms"] = round(latency_ms, 1)
        if outcome.due_at is not None:
            fields["next_due_in_s"] = round(outcome.due_at - self.clock(), 1)
        level = {"delivered": "info", "skipped": "info", "deferred": "info", "dead": "warning"}[outcome.kind]
        getattr(log, level)("delivery_attempt", **fields)
