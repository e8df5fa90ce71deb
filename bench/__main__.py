"""Run every benchmark: ``uv run python -m bench [--quick] [--only enqueue,delivery,...]``.

Scenarios, in order (each is also runnable alone, e.g. ``uv run python -m bench.delivery --quick``):

* ``enqueue``   enqueue latency p50/p99 vs Celery ``apply_async`` vs a bare LPUSH; ``enqueue_many`` bulk rate
* ``delivery``  full-pipeline throughput and CPU per job vs a one-POST Celery task; prefork vs threads
* ``ratelimit`` the global 20/s limit with 4 workers vs Celery's per-worker ``rate_limit``; fairness
* ``memory``    worker RSS; Redis bytes per ledger entry and per dead letter
* ``scaling``   full-pipeline throughput with 1, 2 and 4 worker processes
* ``whatif``    (only with ``--only whatif`` or ``--with-whatif``) the full pipeline with proposed hot-spot fixes
  simulated (``bench/whatif_app.py``) vs as shipped; about 4 more minutes

Results go to ``bench/results/all.md`` and ``bench/results/all.json`` (git-ignored) and the markdown is printed.
Every scenario starts its own redis-server on a free port and its own sandbox process; nothing touches
the Redis on 6379. A full run takes about 15 minutes on 2 cores; ``--quick`` about 5.
"""

from __future__ import annotations

import argparse
import time
import traceback
from collections.abc import Callable

from bench import delivery, enqueue, memory, ratelimit, scaling, whatif
from bench.common import Section, write_results

SCENARIOS: dict[str, Callable[[bool], Section]] = {
    "enqueue": enqueue.run,
    "delivery": delivery.run,
    "ratelimit": ratelimit.run,
    "memory": memory.run,
    "scaling": scaling.run,
    "whatif": whatif.run,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run the refold-dispatch benchmarks.")
    parser.add_argument("--quick", action="store_true", help="short smoke runs of every scenario")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(SCENARIOS)}")
    parser.add_argument("--with-whatif", action="store_true", help="also run the what-if scenario")
    args = parser.parse_args()
    default = [name for name in SCENARIOS if name != "whatif" or args.with_whatif]
    chosen = [name.strip() for name in args.only.split(",") if name.strip()] or default
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    started = time.monotonic()
    sections: list[Section] = []
    for name in chosen:
        print(f"== {name}", flush=True)
        t0 = time.monotonic()
        try:
            sections.append(SCENARIOS[name](args.quick))
        except Exception as exc:  # one broken scenario must not hide the others' results
            failed = Section(name, f"{name}: FAILED")
            failed.note(f"`{type(exc).__name__}: {exc}`")
            failed.data = {"error": traceback.format_exc()}
            sections.append(failed)
            traceback.print_exc()
        print(f"   {name} took {time.monotonic() - t0:.0f} s", flush=True)
    print(write_results("all", sections, quick=args.quick, started=started))


if __name__ == "__main__":
    main()
