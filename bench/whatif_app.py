"""The refold-dispatch worker app with proposed changes simulated, for measuring them before they are made.

``celery -A bench.whatif_app worker`` runs the product's own app and tasks (``refold_dispatch.worker``) with the
changes named in ``BENCH_WHATIF`` (comma-separated) applied in this process only; product code is untouched:

* ``no-events``: ``worker_send_task_events = False`` (Flower can still switch events on at run time with
  ``celery control enable_events``, which it does by default when it starts);
* ``no-flow-roundtrips``: the flow-control ``acquire`` and ``report`` scripts are skipped (an unconditional
  permit). This is the upper bound of folding them into the ``begin`` and ``finish`` scripts, which would keep
  the same GCRA logic but drop two of the four Redis round trips per job;
* ``fast-redis-path``: ``Deliverer._redis`` calls Redis directly and builds its tenacity ``Retrying`` only
  after a ``ConnectionError``/``TimeoutError``;
* ``prefetch-4``: ``worker_prefetch_multiplier = 4``; ``no-time-limits``: no hard or soft task time limit.

Several of these have since shipped (the product now does what they simulate); they stay for re-measuring.
"""

from __future__ import annotations

import os
from typing import Any

import redis

from refold_dispatch import flow
from refold_dispatch.delivery import Deliverer
from refold_dispatch.worker import app

WHATIF = {name.strip() for name in os.environ.get("BENCH_WHATIF", "").split(",") if name.strip()}
KNOWN = {"no-events", "no-flow-roundtrips", "fast-redis-path", "prefetch-4", "no-time-limits"}
if WHATIF - KNOWN:
    raise SystemExit(f"unknown BENCH_WHATIF change(s): {sorted(WHATIF - KNOWN)}")

if "no-events" in WHATIF:
    app.conf.worker_send_task_events = False

if "prefetch-4" in WHATIF:
    app.conf.worker_prefetch_multiplier = 4

if "no-time-limits" in WHATIF:
    app.conf.task_time_limit = None
    app.conf.task_soft_time_limit = None

if "no-flow-roundtrips" in WHATIF:

    def _acquire(self: flow.FlowControl) -> flow.Permit:
        return flow.Permit(wait_seconds=0.0, probe=False)

    def _report(self: flow.FlowControl, outcome: Any, **_: Any) -> str:
        return "closed"

    flow.FlowControl.acquire = _acquire  # type: ignore[method-assign]
    flow.FlowControl.report = _report  # type: ignore[method-assign]

if "fast-redis-path" in WHATIF:
    _retrying_redis = Deliverer._redis

    def _fast_redis(self: Deliverer, call: Any, **kwargs: Any) -> Any:
        try:
            return call()
        except (redis.ConnectionError, redis.TimeoutError):
            return _retrying_redis(self, call, **kwargs)

    Deliverer._redis = _fast_redis  # type: ignore[method-assign,assignment]

__all__ = ["app"]
