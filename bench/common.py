"""Shared machinery for the benchmarks: a private Redis, the sandbox as its own process, real Celery workers,
CPU and memory of a process tree read from ``/proc``, statistics, and the results files.

Nothing here touches the developer's Redis on 6379: every scenario starts ``redis-server`` on a free port (the
same ``RedisServer`` the integration tests use, AOF on as in production) and removes it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import redis
from tests.support import RedisServer, celery_worker_argv, free_port, wait_for

from refold_dispatch.config import Settings
from refold_dispatch.sandbox.admin import SandboxAdmin

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
API_KEY = "tk_bench_5b1f0c2e9a"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
HOST = socket.gethostname()

# A representative trigger-event payload (about 200 bytes of JSON), used by every scenario.
PAYLOAD: dict[str, Any] = {
    "order_id": "ord_000000",
    "amount_cents": 12990,
    "currency": "EUR",
    "items": [{"sku": "SKU-1842", "qty": 2}, {"sku": "SKU-0007", "qty": 1}],
    "customer": {"email_hash": "3f7a9c0d5e1b", "tier": "gold"},
    "note": "bench payload " + "x" * 48,
}
EVENT = "bench.order_created"


def payload(i: int) -> dict[str, Any]:
    return {**PAYLOAD, "order_id": f"ord_{i:06d}"}


# -- statistics ---------------------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:,.{digits}f}"


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    ordered = sorted(times)
    best = left = 0
    for right, moment in enumerate(ordered):
        while moment - ordered[left] >= window:
            left += 1
        best = max(best, right - left + 1)
    return best


# -- /proc --------------------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(child) for child in (task / "children").read_text().split())
    return found


def process_tree(pid: int) -> list[int]:
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children(current))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (all its threads), in seconds; 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    return sum(cpu_seconds(p) for p in process_tree(pid))


def rss_bytes(pid: int) -> int:
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * PAGE_SIZE


# -- processes ----------------------------------------------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REFOLD_", "BENCH_")) and k != "REDIS_URL"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Sandbox:
    """``python -m refold_dispatch.sandbox`` as a separate process on a free port."""

    def __init__(self, *flags: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = Path(tempfile.mkstemp(prefix="bench-sandbox-", suffix=".log")[1])
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "refold_dispatch.sandbox", "--port", str(self.port), *flags],
                env=clean_env(REFOLD_SANDBOX_API_KEY=API_KEY),
                cwd=str(ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.admin = SandboxAdmin(self.url)
        wait_for(self._healthy, timeout=20, what="the sandbox to answer")

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"sandbox exited: {self.log_path.read_text()}")
        try:
            return self.admin.health()
        except httpx.HTTPError:
            return False

    def cpu(self) -> float:
        return cpu_seconds(self.process.pid)

    def stop(self) -> None:
        self.admin.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log_path.unlink(missing_ok=True)


class RecordTail:
    """Reads the sandbox's request log incrementally (cheap to poll, unlike ``/stats`` over every record)."""

    def __init__(self, admin: SandboxAdmin) -> None:
        self.admin = admin
        self.records: list[dict[str, Any]] = []
        self._seq = 0

    def poll(self) -> list[dict[str, Any]]:
        while True:
            page = self.admin.requests(since_seq=self._seq, limit=20000)
            if not page:
                return self.records
            self.records.extend(page)
            self._seq = page[-1]["seq"]

    def delivered(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["outcome"] == "delivered"]


@dataclass
class Worker:
    """One ``celery -A <app> worker`` process (and its pool), started the way users start it."""

    app: str
    name: str
    env: Mapping[str, str]
    pool: str = "prefork"
    concurrency: int = 4
    extra: Sequence[str] = ()
    log_path: Path = field(default_factory=lambda: Path(tempfile.mkstemp(prefix="bench-worker-", suffix=".log")[1]))
    process: subprocess.Popen[bytes] | None = None

    @property
    def hostname(self) -> str:
        return f"{self.name}@{HOST}"

    def start(self) -> Worker:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                celery_worker_argv(
                    self.app, self.hostname, pool=self.pool, concurrency=self.concurrency, extra=self.extra
                ),
                env=dict(self.env),
                cwd=str(ROOT),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, extra_check: Callable[[], bool] | None = None, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}:\n{self.log()[-3000:]}")
            return "ready." in self.log() and (extra_check is None or extra_check())

        wait_for(ready, timeout=timeout, interval=0.1, what=f"worker {self.name} to be ready")

    def cpu(self) -> float:
        return tree_cpu_seconds(self.pid)

    def rss(self) -> list[int]:
        """RSS of the main process first, then of each pool process."""
        return [rss_bytes(pid) for pid in process_tree(self.pid)]

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        self.log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def private_redis() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def redis_client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def settings_for(redis_url: str, base_url: str, **overrides: Any) -> Settings:
    return Settings(_env_file=None, api_key=API_KEY, redis_url=redis_url, base_url=base_url, **overrides)  # type: ignore[call-arg]


def ours_env(redis_url: str, base_url: str, **overrides: str) -> dict[str, str]:
    return clean_env(
        REFOLD_API_KEY=API_KEY,
        REFOLD_REDIS_URL=redis_url,
        REFOLD_BASE_URL=base_url,
        REFOLD_LOG_FORMAT="json",
        **overrides,
    )


def minimal_env(redis_url: str, base_url: str, **overrides: str) -> dict[str, str]:
    return clean_env(BENCH_API_KEY=API_KEY, BENCH_REDIS_URL=redis_url, BENCH_BASE_URL=base_url, **overrides)


def ours_ready(client: redis.Redis, worker: Worker) -> Callable[[], bool]:
    return lambda: bool(client.exists(f"refold:worker:{worker.hostname}"))


def stop_all(workers: Sequence[Worker]) -> None:
    for worker in workers:
        with contextlib.suppress(Exception):
            worker.stop()


def wait_delivered(tail: RecordTail, expected: int, *, timeout: float, interval: float = 0.25) -> list[dict[str, Any]]:
    """Poll the sandbox until ``expected`` deliveries are recorded; returns the delivered records."""
    deadline = time.monotonic() + timeout
    while True:
        tail.poll()
        delivered = tail.delivered()
        if len(delivered) >= expected:
            return delivered
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(delivered)} of {expected} deliveries after {timeout:g} s")
        time.sleep(interval)


# -- results ------------------------------------------------------------------------------------------------


@dataclass
class Section:
    """One scenario's results: markdown for people, ``data`` for machines."""

    name: str
    title: str
    lines: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        self.lines.append("| " + " | ".join(headers) + " |")
        self.lines.append("|" + "|".join("---" for _ in headers) + "|")
        self.lines.extend("| " + " | ".join(row) + " |" for row in rows)
        self.lines.append("")

    def note(self, text: str) -> None:
        self.lines.append(text)
        self.lines.append("")

    def markdown(self) -> str:
        return f"## {self.title}\n\n" + "\n".join(self.lines)


def machine_line() -> str:
    load = os.getloadavg()
    return f"host {HOST}, {os.cpu_count()} CPUs, load average at start {load[0]:.2f}, Python {sys.version.split()[0]}"


def write_results(stem: str, sections: Sequence[Section], *, quick: bool, started: float) -> str:
    RESULTS.mkdir(parents=True, exist_ok=True)
    header = (
        f"# refold-dispatch benchmarks{' (--quick)' if quick else ''}\n\n"
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {machine_line()}, took {time.monotonic() - started:.0f} s\n"
    )
    markdown = header + "\n" + "\n".join(section.markdown() for section in sections)
    (RESULTS / f"{stem}.md").write_text(markdown)
    payload = {
        "quick": quick,
        "when": time.time(),
        "machine": machine_line(),
        "sections": {section.name: section.data for section in sections},
    }
    (RESULTS / f"{stem}.json").write_text(json.dumps(payload, indent=2, default=str))
    return markdown


def script_main(stem: str, run: Callable[[bool], Section], argv: Sequence[str] | None = None) -> None:
    """The command line of one benchmark script: ``python -m bench.<stem> [--quick]``."""
    parser = argparse.ArgumentParser(prog=f"python -m bench.{stem}")
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    args = parser.parse_args(argv)
    started = time.monotonic()
    section = run(args.quick)
    print(write_results(stem, [section], quick=args.quick, started=started))
