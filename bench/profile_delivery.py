"""Where a delivery's CPU goes (not part of ``python -m bench``; run it to check a change to the hot path).

Two views, against a private redis-server and the sandbox (no rate limit), the same as ``bench.delivery``:

* ``--mode cprofile`` (default): one :class:`~refold_dispatch.delivery.Deliverer`, built the way
  ``tasks.deliverer()`` builds it, delivers N jobs in this process under cProfile, without Celery. Prints the
  functions with the most cumulative and own time per job, and the wall time per job of each step measured
  separately (the five scripts, the POST, the log line).
* ``--mode pyspy``: ``py-spy record --subprocesses`` samples a real ``celery worker`` (prefork, concurrency 1)
  while it drains a backlog, for ours or the baseline (``--variant minimal``); prints the frames with the most
  samples, own and inclusive, so Celery's share shows too. Needs py-spy:
  ``uv run --with py-spy python -m bench.profile_delivery --mode pyspy``.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.common import RecordTail, private_redis, wait_delivered
from bench.delivery import (
    HOLD,
    Stack,
    enqueue_ours,
    park_backlog,
    start_workers,
    unlimited_sandbox,
)
from refold_dispatch.client import RefoldClient
from refold_dispatch.delivery import Deliverer
from refold_dispatch.logs import configure_logging
from refold_dispatch.scripts import ScriptContext, Scripts


def _job_ids(stack: Stack) -> list[str]:
    return [key.decode().split(":")[2] for key in stack.redis.scan_iter("refold:job:*") if key.count(b":") == 2]


def cprofile_mode(stack: Stack, jobs: int) -> None:
    settings = stack.settings.model_copy(update={"rate_limit": 100000.0, "rate_burst": 1000, "log_format": "json"})
    configure_logging(settings)
    # Logs go to a file, as a worker's would (a terminal would make the log line look expensive).
    import logging

    handler = logging.FileHandler(tempfile.mkstemp(prefix="bench-profile-", suffix=".log")[1])
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.INFO)
    scripts = Scripts(stack.redis, ScriptContext.from_settings(settings))
    deliverer = Deliverer(settings, stack.redis, RefoldClient(settings), scripts)

    stack.reset()
    enqueue_ours(stack, jobs + 200)
    ids = _job_ids(stack)
    for job_id in ids[:200]:  # warm up connections and script cache
        deliverer.deliver(job_id)
    ids = ids[200:]
    # CPU time, not wall time: on a shared machine waiting for a core would otherwise look like work.
    profiler = cProfile.Profile(time.process_time)
    t0, c0 = time.perf_counter(), time.process_time()
    profiler.enable()
    for job_id in ids:
        deliverer.deliver(job_id)
    profiler.disable()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(
        f"{len(ids)} deliveries in-process under cProfile (CPU-time profile): {wall / len(ids) * 1000:.2f} ms wall, "
        f"{cpu / len(ids) * 1000:.2f} ms CPU per job (profiler overhead included)\n"
    )
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats(order).print_stats(30)
        print(out.getvalue())
    print("own CPU time by package (µs per job):")
    for package, seconds in by_package(profiler).most_common():
        print(f"  {seconds / len(ids) * 1e6:8.1f}  {package}")
    print()

    # Each step alone, without the profiler's overhead: wall time per call.
    stack.reset()
    enqueue_ours(stack, 500)
    ids = _job_ids(stack)
    steps: dict[str, float] = {}

    cpu_steps: dict[str, float] = {}

    def timed(name: str, fn: object, n: int) -> None:
        t, c = time.perf_counter(), time.process_time()
        for i in range(n):
            fn(i)  # type: ignore[operator]
        steps[name] = (time.perf_counter() - t) / n * 1e6
        cpu_steps[name] = (time.process_time() - c) / n * 1e6

    lease = settings.task_time_limit_seconds * 1000 + 5000
    tokens = [uuid.uuid4().hex for _ in ids]
    timed("begin script", lambda i: scripts.run("begin", [ids[i], tokens[i], lease, 1000]), len(ids))
    timed("acquire script", lambda i: deliverer.flow.acquire(), len(ids))
    timed("report script", lambda i: deliverer.flow.report("ok"), len(ids))
    client = deliverer.client
    timed(
        "POST via RefoldClient",
        lambda i: client.trigger_event("bench.order_created", "acct_x", {"a": i}, idempotency_key=f"p-{i}"),
        len(ids),
    )
    entry = deliverer._history(1, "delivered", 1.0, status=200, request_id="r")
    timed("finish script", lambda i: scripts.run("finish", [ids[i], tokens[i], 200, "r", entry]), len(ids))
    timed("redis PING (round-trip floor)", lambda i: stack.redis.ping(), len(ids))
    print("per call, this process (µs):      wall      CPU")
    for name, value in steps.items():
        print(f"  {name:32} {value:8.1f} {cpu_steps[name]:8.1f}")


def by_package(profiler: cProfile.Profile) -> Counter[str]:
    """Own time summed per top-level package (site-packages name, refold_dispatch, stdlib module, builtins)."""
    totals: Counter[str] = Counter()
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    for (filename, _, name), (_, _, tottime, _, _) in stats.items():
        if "site-packages/" in filename:
            package = filename.split("site-packages/")[1].split("/")[0]
        elif "refold_dispatch/" in filename:
            package = "refold_dispatch." + filename.split("refold_dispatch/")[1].split("/")[0].removesuffix(".py")
        elif filename == "~":
            package = f"builtin {name}" if "socket" in name or "json" in name else "builtins (other)"
        else:
            package = "stdlib " + Path(filename).stem
        totals[package] += tottime
    return totals


def pyspy_mode(stack: Stack, jobs: int, variant: str, seconds: float) -> None:
    binary = shutil.which("py-spy")
    if binary is None:
        raise SystemExit("py-spy not found: run with `uv run --with py-spy python -m bench.profile_delivery ...`")
    queue = park_backlog(stack, variant, jobs)  # type: ignore[arg-type]
    workers = start_workers(stack, variant, pool="prefork", concurrency=1, instances=1)  # type: ignore[arg-type]
    out = Path(tempfile.mkstemp(prefix="bench-pyspy-", suffix=".txt")[1])
    try:
        time.sleep(1.0)
        tail = RecordTail(stack.sandbox.admin)
        stack.redis.rename(HOLD, queue)
        spy = subprocess.run(
            [
                binary,
                "record",
                "--pid",
                str(workers[0].pid),
                "--subprocesses",
                "--duration",
                str(int(seconds)),
                "--rate",
                "200",
                "--format",
                "raw",
                "--output",
                str(out),
                "--nonblocking",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed: {spy.stderr[-2000:]}")
        delivered = len(tail.poll())
        wait_delivered(tail, jobs, timeout=600)
    finally:
        for worker in workers:
            worker.stop()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_short(frame) for frame in stack_text.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
        joined = ";".join(frames)
        for group, needles in GROUPS.items():
            if any(needle in joined for needle in needles):
                groups[group] += count
    out.unlink(missing_ok=True)
    print(f"py-spy, {variant}: {total} samples over {seconds:g} s, {delivered} deliveries while sampling\n")
    print("share of all samples (worker main process + pool), by what is on the stack:")
    for group in GROUPS:
        print(f"  {groups[group] / total * 100:5.1f}  {group}")
    print("\ninclusive % (frame on the stack):")
    for frame, count in inclusive.most_common(150):
        print(f"  {count / total * 100:5.1f}  {frame}")
    print("\nown % (frame on top):")
    for frame, count in own.most_common(40):
        print(f"  {count / total * 100:5.1f}  {frame}")


# What a sample is charged to, when one of these frames is on its stack (groups may overlap).
GROUPS: dict[str, tuple[str, ...]] = {
    "pool process (executing tasks)": ("Worker.workloop",),
    "  task body: Deliverer.deliver / baseline POST": ("Deliverer.deliver", "post_event"),
    "    scripts (EVALSHA begin/acquire/report/finish)": ("Scripts.run",),
    "    HTTP POST (httpx)": ("Client.send", "Client.post"),
    "    log line (Deliverer._log)": ("Deliverer._log",),
    "    job JSON parse (Job.from_json)": ("Job.from_json",),
    "  celery trace around the task": ("trace_task",),
    "task events (EventDispatcher)": ("EventDispatcher.",),
    "celery logging (worker log lines)": ("Logger._log", "Logger.info"),
    "kombu receive (BRPOP) and dispatch": ("_brpop_read", "on_task_received", "Consumer.on_readable"),
    "ack (Message.ack)": ("Message.ack",),
    "mover thread (scheduler)": ("Mover._run",),
}


def _short(frame: str) -> str:
    """``func (path/file.py:12)`` -> ``func (file.py)``."""
    name, _, where = frame.partition(" (")
    if not where:
        return frame
    return f"{name} ({where.split(':')[0].split('/')[-1]}" + ")"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_delivery")
    parser.add_argument("--mode", choices=("cprofile", "pyspy"), default="cprofile")
    parser.add_argument("--variant", choices=("ours", "minimal"), default="ours")
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=15)
    args = parser.parse_args()
    with private_redis() as server:
        sandbox = unlimited_sandbox()
        try:
            stack = Stack(server, sandbox)
            if args.mode == "cprofile":
                cprofile_mode(stack, args.jobs)
            else:
                pyspy_mode(stack, args.jobs, args.variant, args.seconds)
        finally:
            sandbox.stop()


if __name__ == "__main__":
    main()
