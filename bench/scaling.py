"""Scaling: full-pipeline delivery throughput with 1, 2 and 4 worker processes.

Each worker process is its own ``celery -A refold_dispatch.worker worker`` (prefork, concurrency 1: the unit
an operator adds, e.g. one container), against a private redis-server and the sandbox without a rate limit
(``REFOLD_RATE_LIMIT=100000``). A parked backlog of 1,500 jobs (400 with ``--quick``) is released once the
workers are ready; throughput is (deliveries - 1) / (last - first receive time) at the sandbox, and CPU is the
workers' process trees from ``/proc``. The sizes run in the order 1, 2, 4, 4, 2, 1 (twice each; once with
``--quick``) so drift on a shared machine hits them equally; medians are shown with the speed-up over one
process. This machine has 2 cores shared with Redis and the sandbox, so the curve flattens past 2.
"""

from __future__ import annotations

from typing import Any

from bench.common import Section, fmt, median, private_redis, script_main
from bench.delivery import Drain, Stack, drain, unlimited_sandbox

SIZES = (1, 2, 4)


def run(quick: bool) -> Section:
    jobs = 400 if quick else 1500
    order = list(SIZES) if quick else [*SIZES, *reversed(SIZES)]
    runs: list[Drain] = []
    with private_redis() as server:
        sandbox = unlimited_sandbox()
        try:
            stack = Stack(server, sandbox)
            for instances in order:
                result = drain(stack, "ours", jobs=jobs, pool="prefork", concurrency=1, instances=instances)
                runs.append(result)
                print(f"  scaling {instances} worker(s) {result.rate:7.1f} jobs/s", flush=True)
        finally:
            sandbox.stop()
    section = Section("scaling", "Scaling: full pipeline, 1 / 2 / 4 worker processes (prefork -c 1 each)")
    one = median([r.rate for r in runs if r.instances == 1])
    rows = []
    data: dict[str, Any] = {"jobs": jobs, "runs": [r.to_json() for r in runs], "median": {}}
    for instances in SIZES:
        group = [r for r in runs if r.instances == instances]
        rate = median([r.rate for r in group])
        cpu = median([r.cpu_per_1k for r in group])
        data["median"][instances] = {"rate": rate, "cpu_per_1k": cpu, "speedup": rate / one}
        rows.append(
            [str(instances), fmt(rate), f"{rate / one:.2f}x", fmt(cpu, 2), ", ".join(fmt(r.rate) for r in group)]
        )
    section.table(["worker processes", "jobs/s (median)", "vs 1", "worker CPU-s / 1k jobs", "runs"], rows)
    section.note(f"{jobs:,} jobs per run; 2 CPUs shared by the workers, redis-server and the sandbox.")
    section.data = data
    return section


if __name__ == "__main__":
    script_main("scaling", run)
