"""The Celery app: ``celery -A refold_dispatch.worker worker`` (and ``... flower``).

Importing this module reads no settings: the configuration is a lazy default (``app.add_defaults``), built from
:func:`~refold_dispatch.config.get_settings` when Celery first needs it. Each trap in
``celery-redis-traps.md`` has its answer here or in the module named:

1. ETA redelivery: no ETAs; delays live in our sorted set (``scheduler``), visibility timeout kept short.
2. Lost work on kill: late acks + reject on worker lost + a per-attempt watchdog (``lua/begin.lua``); the
   visibility timeout and kombu's restore sweep are tuned so a killed worker's job returns within two minutes.
3. Silent stop after Redis drops: reconnect forever, and the canary in ``scheduler`` proves consumption.
4. Redis durability: the worker warns at start unless AOF is on and ``maxmemory-policy`` is ``noeviction``.
5. Unbounded keys: results are ignored; every key of ours has a TTL or bound (``keys``).
6. Secrets in Flower: messages carry only a job id; argsrepr/kwargsrepr name, never show, the payload.
7. Pickle: JSON only, everywhere.
8. Per-worker rate limits: a global limiter in Redis (``flow``).
9. Prefetch: ``REFOLD_PREFETCH_MULTIPLIER`` (4) per process; a copy handed out twice is stopped by the ledger.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import urlsplit

import redis
import structlog
from celery import Celery, bootsteps, signals
from kombu import Exchange, Queue

from refold_dispatch.config import Settings, get_settings
from refold_dispatch.errors import ConfigurationError
from refold_dispatch.logs import configure_logging
from refold_dispatch.scheduler import Mover
from refold_dispatch.scripts import ScriptContext, Scripts

log = structlog.get_logger("refold_dispatch.worker")

# kombu sweeps for expired unacked messages this often (its default is 10 s x a throttle of 10 = 100 s).
RESTORE_SWEEP_SECONDS = 5
# A pool process starts near 80 MiB; past this it is recycled (Celery counts KiB).
MAX_MEMORY_PER_CHILD_KIB = 250_000
# If a worker dies holding kombu's restore mutex, others wait this long (kombu's default: 5 minutes).
RESTORE_MUTEX_SECONDS = 30


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings derived from ours; the table in the module docstring says why each is there."""
    queue = Queue(settings.queue, Exchange(settings.queue, type="direct"), routing_key=settings.queue)
    tls: dict[str, Any] = {}
    if urlsplit(settings.redis_url).scheme == "rediss":
        # kombu turns TLS on for a rediss:// URL only when it picks the transport from the URL's scheme; with the
        # transport named below, say so explicitly, with kombu's own default (ssl_cert_reqs in the URL still wins).
        tls["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_NONE}
    return {
        "broker_url": settings.redis_url,
        # kombu's Redis transport, but garbage popped off the queue is dead-lettered instead of stopping the loop,
        # and a lost connection with a task in flight does not stop the worker (see ``consumer``).
        "broker_transport": "refold_dispatch.consumer:RedisTransport",
        **tls,
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_seconds,
            "unacked_restore_interval": RESTORE_SWEEP_SECONDS,
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": RESTORE_MUTEX_SECONDS,
            "socket_connect_timeout": 5,
            "socket_keepalive": True,
            "health_check_interval": 10,
            "retry_on_timeout": True,
        },
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_pool_limit": 10,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "event_serializer": "json",
        "result_serializer": "json",
        "result_backend": None,
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": settings.prefetch_multiplier,
        # A pool process that has grown past this is replaced after its current task (bench/ saw Celery's failure
        # path hold on to memory after many dead letters).
        "worker_max_memory_per_child": MAX_MEMORY_PER_CHILD_KIB,
        "task_time_limit": settings.task_time_limit_seconds,
        "task_soft_time_limit": max(settings.task_time_limit_seconds - 5, 1),
        "task_queues": [queue],
        "task_default_queue": settings.queue,
        "task_default_exchange": settings.queue,
        "task_default_routing_key": settings.queue,
        "task_create_missing_queues": False,
        "worker_direct": True,
        # Task events for Flower are published by our scripts (``events``); Celery's would arrive twice.
        "worker_send_task_events": False,
        "task_send_sent_event": True,
        "worker_pool": settings.worker_pool,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_consumer": "refold_dispatch.consumer:DeadLetteringConsumer",
        "worker_hijack_root_logger": True,
        "include": ["refold_dispatch.tasks"],
    }


app = Celery("refold_dispatch")
app.add_defaults(lambda: celery_config(get_settings()))


def check_redis_durability(client: redis.Redis) -> list[str]:
    """Warnings about a broker Redis that could lose or evict our data (empty when all is well)."""
    try:
        policy = client.config_get("maxmemory-policy").get("maxmemory-policy")
        appendonly = client.config_get("appendonly").get("appendonly")
    except redis.ResponseError:
        return ["cannot read Redis CONFIG (hosted Redis?): make sure maxmemory-policy is noeviction and AOF is on"]
    warnings = []
    if policy != "noeviction":
        warnings.append(
            f"Redis maxmemory-policy is {policy!r}, not 'noeviction': under memory pressure Redis may evict queued "
            "jobs and kombu bindings, silently losing work"
        )
    if appendonly != "yes":
        warnings.append(
            "Redis AOF is off (appendonly no): a Redis crash loses every job since the last snapshot; run it "
            "with --appendonly yes --appendfsync everysec"
        )
    return warnings


@signals.celeryd_init.connect
def _check_startup(**_: Any) -> None:
    """Refuse to start without a usable API key (before anything else starts)."""
    settings = get_settings()
    configure_logging(settings)
    try:
        settings.require_api_key()
    except ConfigurationError as exc:
        raise SystemExit(f"refold-dispatch: {exc}") from None


@signals.worker_ready.connect
def _report_startup(**_: Any) -> None:
    """Say which Refold environment this worker talks to (never the key) and warn about a fragile Redis.
    (At ``worker_ready`` Celery's logging is set up; at ``celeryd_init`` these lines would be dropped.)"""
    settings = get_settings()
    log.info(
        "worker_ready",
        refold_environment=settings.environment,
        base_url=settings.base_url,
        queue=settings.queue,
        key_fingerprint=settings.api_key_fingerprint,
    )
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        for warning in check_redis_durability(client):
            log.warning("redis_durability", problem=warning)
    except redis.RedisError as exc:
        log.warning("redis_unreachable_at_start", error=str(exc))
    finally:
        client.close()


@signals.worker_process_init.connect
def _configure_child_logging(**_: Any) -> None:
    configure_logging(get_settings())


class MoverStep(bootsteps.StartStopStep):
    """Runs the :class:`~refold_dispatch.scheduler.Mover` in the worker's main process."""

    requires = ("celery.worker.components:Pool",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.mover: Mover | None = None

    def start(self, parent: Any) -> None:
        settings = get_settings()
        client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5, socket_timeout=10)
        self.mover = Mover(settings, client, Scripts(client, ScriptContext.from_settings(settings)), parent.hostname)
        self.mover.start()

    def stop(self, parent: Any) -> None:
        if self.mover is not None:
            self.mover.stop()


app.steps["worker"].add(MoverStep)
