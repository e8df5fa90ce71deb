"""The mover: publishes delayed jobs when due, and proves that its worker is still consuming.

Retries, deferrals and watchdogs live in the ``{p}:delayed`` sorted set (never in Celery ETAs, which Redis
redelivers and a killed worker loses: trap 1). Every worker runs a mover thread in its main process; the
``promote`` script hands each due job to exactly one of them, so any number of workers is safe and a restart
loses nothing (the set is in Redis).

The same thread keeps the worker's heartbeat (``{p}:worker:{hostname}``) and sends a canary task to the
worker's own direct queue. A worker whose canary goes unconsumed for too long has silently stopped consuming
(trap 3, e.g. after Redis dropped): the mover logs it, marks the heartbeat ``stalled`` and asks the process to
shut down warmly, so its supervisor (Procfile platform, compose ``restart:``) starts a fresh one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable

import redis
import structlog

from refold_dispatch.config import Settings
from refold_dispatch.keys import Keys
from refold_dispatch.message import TEMPLATE_KINDS, message_templates, task_message
from refold_dispatch.scripts import Scripts

CANARY_TASK = "refold.canary"
# How many due jobs one promote call moves; a full batch makes the mover go again at once.
PROMOTE_BATCH = 500
HEARTBEAT_SECONDS = 5.0
CANARY_SECONDS = 15.0

log = structlog.get_logger("refold_dispatch.scheduler")


def direct_queue(hostname: str) -> str:
    """Celery's per-worker queue (``worker_direct``): the list a canary for this worker goes to."""
    return f"{hostname}.dq2"


def stall_after_seconds(settings: Settings) -> float:
    # A canary can wait behind one reserved job per process, each up to the time limit; beyond three time
    # limits (and two minutes) the consumer is not just busy.
    return max(120.0, 3.0 * settings.task_time_limit_seconds)


class Mover:
    """A daemon thread: promote due jobs, beat the heart, send and check canaries."""

    def __init__(
        self,
        settings: Settings,
        redis_client: redis.Redis,
        scripts: Scripts,
        hostname: str,
        *,
        on_stall: Callable[[], None] | None = None,
        canaries: bool = True,
    ) -> None:
        self.settings = settings
        self.redis = redis_client
        self.scripts = scripts
        self.hostname = hostname
        self.keys = Keys(settings.key_prefix)
        self.on_stall = on_stall or _terminate_self
        self.canaries = canaries
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_beat = 0.0
        self._last_canary = 0.0
        self._redis_down_since: float | None = None

    def promote_due(self) -> int:
        """Publish the jobs that are due now; returns how many."""
        # The shared message templates go along, so a wiped template key comes back within one tick.
        templates = message_templates(self.settings.queue)
        return int(self.scripts.run("promote", [PROMOTE_BATCH, *(templates[kind] for kind in TEMPLATE_KINDS)]))

    def start(self) -> None:
        try:
            self.redis.hset(
                self.keys.worker(self.hostname),
                mapping={"started_at": time.time(), "pid": os.getpid(), "canary_at": time.time()},
            )
        except redis.RedisError as exc:  # the loop keeps trying; a worker may start before Redis does
            log.warning("mover_redis_error", error=f"{type(exc).__name__}: {exc}")
        self._thread = threading.Thread(target=self._run, name="refold-mover", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        with contextlib.suppress(redis.RedisError):
            self.redis.delete(self.keys.worker(self.hostname))

    def _run(self) -> None:
        while not self._stop.is_set():
            moved = 0
            try:
                moved = self.promote_due()
                self._maintain()
                if self._redis_down_since is not None:
                    log.info(
                        "redis_reachable_again",
                        down_for_s=round(time.monotonic() - self._redis_down_since, 1),
                    )
                    self._redis_down_since = None
            except redis.RedisError as exc:
                if self._redis_down_since is None:
                    self._redis_down_since = time.monotonic()
                    log.warning("mover_redis_error", error=f"{type(exc).__name__}: {exc}")
                self._stop.wait(1.0)
                continue
            except Exception:  # the mover must outlive any one bad cycle
                log.exception("mover_cycle_failed")
            if moved < PROMOTE_BATCH:
                self._stop.wait(self.settings.mover_interval_seconds)

    def _maintain(self) -> None:
        now = time.time()
        if now - self._last_beat >= HEARTBEAT_SECONDS:
            self._beat(now)
        if self.canaries and now - self._last_canary >= CANARY_SECONDS:
            self._send_canary(now)

    def _beat(self, now: float) -> None:
        key = self.keys.worker(self.hostname)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping={"beat_at": now, "pid": os.getpid()})
            pipe.expire(key, int(HEARTBEAT_SECONDS * 6))
            pipe.hmget(key, "canary_sent_at", "canary_at")
            sent, consumed = pipe.execute()[2]
        self._last_beat = now
        if sent is None or consumed is None:
            return
        oldest_unconsumed = float(sent) if float(consumed) < float(sent) else None
        if oldest_unconsumed is not None and now - float(consumed) > stall_after_seconds(self.settings):
            log.critical(
                "worker_stopped_consuming",
                hostname=self.hostname,
                last_consumed_s_ago=round(now - float(consumed), 1),
                action="warm shutdown, so the supervisor starts a fresh worker",
            )
            self.redis.hset(key, "stalled", now)
            self.on_stall()

    def _send_canary(self, now: float) -> None:
        key = self.keys.worker(self.hostname)
        if self.redis.hget(key, "canary_sent_at") is not None:
            sent, consumed = self.redis.hmget(key, "canary_sent_at", "canary_at")
            if sent is not None and consumed is not None and float(consumed) < float(sent):
                # The previous canary is still on its way; one in flight is enough.
                self._last_canary = now
                return
        message = task_message(
            CANARY_TASK,
            f"canary-{uuid.uuid4()}",
            [self.hostname, now],
            exchange="C.dq2",
            routing_key=self.hostname,
            delivery_tag=str(uuid.uuid4()),
        )
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(direct_queue(self.hostname), message)
            # A worker that is gone for good leaves at most one canary behind, for a few minutes.
            pipe.expire(direct_queue(self.hostname), int(stall_after_seconds(self.settings) * 2))
            pipe.hset(key, "canary_sent_at", now)
            pipe.execute()
        self._last_canary = now


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)
