"""What-if: the full pipeline with proposed changes simulated, against itself unchanged.

Same method as ``bench.delivery`` (parked backlog of 3,000 jobs, 1,000 with ``--quick``; prefork, concurrency
4; sandbox without a rate limit; throughput from the sandbox's receive times; CPU of the worker process tree
from ``/proc``), for the workers of ``VARIANTS`` run interleaved in the same invocation: ``ours`` as shipped,
and ``bench/whatif_app.py`` with the changes named in ``BENCH_WHATIF`` applied inside the worker process
(product code is not changed). Earlier what-ifs (task events off, flow control folded into begin/finish,
tenacity only after a Redis error, prefetch 4) have since been shipped; their names still work in
``BENCH_WHATIF`` for re-measuring.
"""

from __future__ import annotations

from typing import Any

from bench.common import Section, fmt, median, private_redis, script_main
from bench.delivery import Drain, Stack, drain, unlimited_sandbox

MINIMAL = "reference: one-POST task (bench/minimal_app.py)"
VARIANTS: dict[str, tuple[str | None, str]] = {
    "ours (as shipped)": (None, ""),
    "prefetch multiplier 4 (instead of 1)": ("bench.whatif_app", "prefetch-4"),
    "no task time limits": ("bench.whatif_app", "no-time-limits"),
}


def run(quick: bool) -> Section:
    jobs = 1000 if quick else 3000
    reps = 1 if quick else 2
    runs: list[Drain] = []
    with private_redis() as server:
        sandbox = unlimited_sandbox()
        try:
            stack = Stack(server, sandbox)
            for rep in range(reps):
                names = list(VARIANTS) if rep % 2 == 0 else list(reversed(VARIANTS))
                for label in names:
                    app, changes = VARIANTS[label]
                    env = {"BENCH_WHATIF": changes} if changes else None
                    result = drain(
                        stack, "ours", jobs=jobs, pool="prefork", concurrency=4, env=env, app=app, label=label
                    )
                    runs.append(result)
                    print(
                        f"  whatif {label:50} {result.rate:7.1f} jobs/s {result.cpu_per_1k:6.2f} CPU-s/1k", flush=True
                    )
                if rep == 0:
                    runs.append(drain(stack, "minimal", jobs=jobs, pool="prefork", concurrency=4, label=MINIMAL))
        finally:
            sandbox.stop()
    section = Section("whatif", "What-if: proposed hot-spot fixes, simulated (prefork -c 4)")
    base = [r for r in runs if r.variant == "ours (as shipped)"]
    base_rate = median([r.rate for r in base])
    base_cpu = median([r.cpu_per_1k for r in base])
    base_redis = median([r.redis_cpu_per_1k for r in base])
    rows = []
    data: dict[str, Any] = {"jobs": jobs, "reps": reps, "runs": [r.to_json() for r in runs], "median": {}}
    for label in [*VARIANTS, MINIMAL]:
        group = [r for r in runs if r.variant == label]
        rate = median([r.rate for r in group])
        cpu = median([r.cpu_per_1k for r in group])
        redis_cpu = median([r.redis_cpu_per_1k for r in group])
        data["median"][label] = {"rate": rate, "cpu_per_1k": cpu, "redis_cpu_per_1k": redis_cpu}
        rows.append(
            [
                label,
                fmt(rate),
                f"{rate / base_rate:.2f}x",
                fmt(cpu, 2),
                f"{cpu / base_cpu:.2f}x",
                fmt(redis_cpu, 2),
                f"{redis_cpu / base_redis:.2f}x",
            ]
        )
    section.table(
        [
            "worker",
            "jobs/s (median)",
            "vs shipped",
            "worker CPU-s / 1k",
            "vs shipped",
            "redis CPU-s / 1k",
            "vs shipped",
        ],
        rows,
    )
    section.note(f"{jobs:,} jobs per run, {reps} run(s) per variant, interleaved; the reference ran once.")
    section.data = data
    return section


if __name__ == "__main__":
    script_main("whatif", run)
