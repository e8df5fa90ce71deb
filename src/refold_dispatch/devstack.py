"""``refold-dispatch dev``: the whole pipeline on one machine, in one terminal, started and stopped as one.

Started in order, each checked before the next:

1. **Redis**: the configured URL if it answers PING; otherwise a private ``redis-server`` on a free port with
   AOF on and ``noeviction`` (as production should run it), its data in a temp dir removed at exit; without
   the binary, a clear message saying how to get one.
2. **The sandbox** (the local Refold stand-in) whenever no ``REFOLD_API_KEY`` is set; the workers are then
   pointed at it with a fixed test-environment dev key (:data:`DEV_API_KEY`).
3. **N workers**: ``python -m celery -A refold_dispatch.worker worker`` subprocesses, ready once their mover
   beats in Redis.
4. **Flower** (optional), behind basic auth: ``FLOWER_BASIC_AUTH`` or a generated password, printed once.

Every child runs in its own session, so a Ctrl-C in the terminal reaches only this supervisor, which then
stops the children in reverse order: SIGTERM (Celery's warm shutdown), a grace period, SIGKILL for the process
group of any straggler, and last the private Redis and its temp dir. SIGTERM does the same. A critical child
that dies takes the stack down with its last log lines shown; Flower dying only earns a warning.

``--demo`` enqueues a realistic mix (:func:`build_demo_plan`), turns on a sandbox error rate for a few
seconds so some requests fail and are retried, follows the jobs' states in Redis live until every job has
settled, and checks the result against the sandbox's own records (:func:`summarize_demo`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Literal

import httpx
import redis
from pydantic import SecretStr
from rich import box
from rich.console import Console
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from refold_dispatch.config import DEFAULT_QUICK_RETRY_ATTEMPTS, DEFAULT_RETRY_SCHEDULE, Settings
from refold_dispatch.dispatcher import Dispatcher, Receipt, redis_location
from refold_dispatch.errors import RefoldDispatchError
from refold_dispatch.jobs import Job, new_job_id, trigger_event_job, upsert_linked_account_job
from refold_dispatch.keys import Keys

# A test-environment (tk) key shared by the local sandbox and the dev workers. Not a secret: it opens nothing
# but a sandbox on 127.0.0.1 that lives as long as this process.
DEV_API_KEY = "tk_sandbox_dev"
# A local redis-server answers within milliseconds; ten seconds covers a cold, loaded CI machine.
REDIS_START_TIMEOUT = 10.0
# The sandbox imports Starlette and uvicorn first: about a second, fifteen on a bad day.
SANDBOX_START_TIMEOUT = 15.0
# A worker imports Celery, forks its pool, then its mover beats: a few seconds, a minute at worst.
WORKER_START_TIMEOUT = 60.0
# Warm shutdown finishes the job in hand; demo jobs take well under a second, so this is generous.
STOP_GRACE_SECONDS = 15.0
# How often waits re-check their condition (and a pending Ctrl-C): short enough to feel instant.
POLL_SECONDS = 0.1
# The demo's live view redraws this often.
DEMO_REFRESH_SECONDS = 0.25
# Demo retries come back within seconds instead of the production schedule's minutes, so it settles quickly,
# and a failed request goes straight to the job-level schedule (no quick retries inside the attempt), so the
# live view shows jobs in the delayed set being retried by the mover.
DEMO_RETRY_SCHEDULE = "1,2,4,8,15"
DEMO_QUICK_RETRY_ATTEMPTS = "1"
# The demo's fault window: 30 % of requests fail with a 5xx until this many faults were served or the window
# ends, so a few jobs are retried and the rest go through cleanly.
DEMO_ERROR_RATE = 0.3
DEMO_FAULT_TARGET = 4
DEMO_FAULT_WINDOW_SECONDS = 8.0
# An event name the sandbox does not know: Refold answers 404 INVALID_EVENT, and the job is dead-lettered.
DEMO_UNKNOWN_EVENT = "subscription.downgraded.v0"

Role = Literal["redis", "sandbox", "worker", "flower"]
_FINAL_DELIVERED = frozenset({"delivered", "superseded"})

NO_REDIS_HELP = (
    "no Redis answers at {where} and redis-server is not installed. Get one: "
    "`sudo apt-get install redis-server` (Debian/Ubuntu), `brew install redis` (macOS), or "
    "`docker run -d -p 6379:6379 redis:7 --appendonly yes --maxmemory-policy noeviction`; "
    "or point REFOLD_REDIS_URL / --redis-url at a running one"
)


class DevStackError(RefoldDispatchError):
    """The dev stack could not start or lost a critical process; ``log_tail`` holds the child's last output."""

    def __init__(self, message: str, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class StopRequested(Exception):
    """Ctrl-C or SIGTERM arrived; every wait loop raises this at its next check."""


@dataclass(frozen=True)
class DevOptions:
    """What ``refold-dispatch dev`` was asked for (see its ``--help``)."""

    workers: int = 2
    concurrency: int = 2
    redis_url: str | None = None
    flower: bool = True
    flower_port: int = 5555
    sandbox_port: int = 8787
    demo: bool = False
    exit_when_done: bool = False
    demo_timeout: float = 90.0
    log_dir: Path = Path(".dev-stack/logs")
    json_summary: bool = False


def celery_worker_argv(settings: Settings, extra: Sequence[str] = ()) -> list[str]:
    """``python -m celery -A refold_dispatch.worker worker`` with our defaults; ``extra`` comes last, so it wins."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "refold_dispatch.worker",
        "worker",
        "--loglevel",
        settings.log_level,
        "-Q",
        settings.queue,
        "-P",
        settings.worker_pool,
        *extra,
    ]


def has_api_key(settings: Settings) -> bool:
    """Whether a real key is configured (an empty ``REFOLD_API_KEY=`` copied from .env.example is not one)."""
    return settings.api_key is not None and bool(settings.api_key.get_secret_value().strip())


def redis_answers(url: str, timeout: float = 0.5) -> bool:
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


# --- processes ---------------------------------------------------------------------------------------------


@dataclass
class Child:
    """One supervised process, in its own session (so its process group is its pid)."""

    name: str
    role: Role
    process: subprocess.Popen[bytes]
    log_path: Path
    critical: bool = True
    warned: bool = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


class Stopper:
    """Turns SIGINT/SIGTERM into a flag that wait loops check, so a stop never lands mid-``Popen``."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def _request(self, signum: int, _frame: FrameType | None) -> None:
        self.signal_name = signal.Signals(signum).name

    def check(self) -> None:
        if self.signal_name is not None:
            raise StopRequested(self.signal_name)

    def sleep(self, seconds: float) -> None:
        self.check()
        time.sleep(seconds)
        self.check()

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self._request) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


# --- the stack ---------------------------------------------------------------------------------------------


class DevStack:
    """Starts, watches and stops the dev processes. :meth:`stop` is safe after a partial start."""

    def __init__(self, options: DevOptions, settings: Settings, ui: Console) -> None:
        self.options = options
        self.settings = settings
        self.ui = ui
        self.run_id = secrets.token_hex(3)
        self.keys = Keys(settings.key_prefix)
        self.stopper = Stopper()
        self.children: list[Child] = []
        self.redis_url = options.redis_url or settings.redis_url
        self.redis_dir: Path | None = None
        self.sandbox_url: str | None = None
        self.worker_names: list[str] = []
        self.flower_url: str | None = None
        self.flower_login: str | None = None
        self.flower_generated = False

    @property
    def uses_sandbox(self) -> bool:
        return not has_api_key(self.settings)

    def job_settings(self) -> Settings:
        """The settings the workers run with, for enqueueing and reading state from this process."""
        update: dict[str, Any] = {"redis_url": self.redis_url}
        if self.sandbox_url is not None:
            update.update(api_key=SecretStr(DEV_API_KEY), base_url=self.sandbox_url)
        return self.settings.model_copy(update=update)

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["REFOLD_REDIS_URL"] = self.redis_url
        env["PYTHONUNBUFFERED"] = "1"
        if self.sandbox_url is not None:
            env["REFOLD_API_KEY"] = DEV_API_KEY
            env["REFOLD_BASE_URL"] = self.sandbox_url
        # Only where the operator kept the defaults: their own settings win, even in a demo.
        if self.options.demo and self.settings.retry_schedule == DEFAULT_RETRY_SCHEDULE:
            env["REFOLD_RETRY_SCHEDULE"] = DEMO_RETRY_SCHEDULE
        if self.options.demo and self.settings.quick_retry_attempts == DEFAULT_QUICK_RETRY_ATTEMPTS:
            env["REFOLD_QUICK_RETRY_ATTEMPTS"] = DEMO_QUICK_RETRY_ATTEMPTS
        return env

    # -- start ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        self.options.log_dir.mkdir(parents=True, exist_ok=True)
        self._start_redis()
        if self.uses_sandbox:
            self._start_sandbox()
        env = self.worker_env()
        self._start_workers(env)
        if self.options.flower:
            self._start_flower(env)
        self._wait_for_workers()
        self.ui.print(self._panel())
        self.ui.print("stack ready: Ctrl-C (or SIGTERM) stops everything", soft_wrap=True)

    def _spawn(
        self, name: str, role: Role, argv: list[str], env: Mapping[str, str], *, critical: bool = True, log: str = ""
    ) -> Child:
        # Appended to, so a restart keeps the previous run's lines for comparison.
        log_path = self.options.log_dir / f"{log or name}.log"
        with log_path.open("ab") as output:
            process = subprocess.Popen(  # noqa: S603 - our own argv, no shell
                argv,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, role, process, log_path, critical)
        self.children.append(child)
        return child

    def _wait_until(self, condition: Callable[[], bool], children: Sequence[Child], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            for child in children:
                if not child.running():
                    raise DevStackError(
                        f"{child.name} exited with code {child.process.returncode} while starting "
                        f"(log: {child.log_path})",
                        child.log_tail(),
                    )
            if time.monotonic() > deadline:
                raise DevStackError(f"timed out after {timeout:g} s waiting for {what}")
            self.stopper.sleep(POLL_SECONDS)

    def _start_redis(self) -> None:
        where = redis_location(self.redis_url)
        if redis_answers(self.redis_url):
            self.ui.print(f"redis: using the Redis at {where} (it answered PING)", soft_wrap=True)
            self._warn_about_durability()
            return
        if self.options.redis_url is not None:
            # An explicit URL is a decision: quietly starting another Redis would hide the mistake.
            raise DevStackError(f"no Redis answers at {where} (--redis-url); start it, or omit --redis-url")
        binary = shutil.which("redis-server")
        if binary is None:
            raise DevStackError(NO_REDIS_HELP.format(where=where))
        port = free_port()
        self.redis_dir = Path(tempfile.mkdtemp(prefix="refold-dev-redis-"))
        argv = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.redis_dir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--maxmemory-policy",
            "noeviction",
            "--save",
            "",
        ]
        child = self._spawn("redis", "redis", argv, os.environ)
        self.redis_url = f"redis://127.0.0.1:{port}/0"
        self._wait_until(lambda: redis_answers(self.redis_url), [child], REDIS_START_TIMEOUT, "redis-server")
        self.ui.print(
            f"redis: private redis-server pid {child.pid} on 127.0.0.1:{port} "
            f"(AOF on, noeviction; data in {self.redis_dir}, removed at exit)",
            soft_wrap=True,
        )

    def _warn_about_durability(self) -> None:
        from refold_dispatch.worker import check_redis_durability

        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        try:
            for warning in check_redis_durability(client):
                self.ui.print(f"[yellow]redis warning:[/] {warning}", soft_wrap=True)
        except redis.RedisError:
            pass
        finally:
            client.close()

    def _start_sandbox(self) -> None:
        if importlib.util.find_spec("uvicorn") is None or importlib.util.find_spec("starlette") is None:
            raise DevStackError(
                "no REFOLD_API_KEY is set, so dev runs the local sandbox, which needs the sandbox extra: "
                "pip install 'refold-dispatch[sandbox]' (or set REFOLD_API_KEY to use Refold itself)"
            )
        port = self.options.sandbox_port or free_port()
        if not port_is_free(port):
            raise DevStackError(f"port {port} is taken (another sandbox?): pass --sandbox-port 0 for a free one")
        url = f"http://127.0.0.1:{port}"
        # The key travels in the environment, not argv, so `ps` does not show it (the sandbox reads either).
        env = {**os.environ, "REFOLD_SANDBOX_API_KEY": DEV_API_KEY}
        argv = [sys.executable, "-m", "refold_dispatch.sandbox", "--host", "127.0.0.1", "--port", str(port)]
        child = self._spawn("sandbox", "sandbox", argv, env)

        def healthy() -> bool:
            try:
                return httpx.get(f"{url}/_sandbox/health", timeout=1.0).json().get("ok") is True
            except (httpx.HTTPError, ValueError):
                return False

        self._wait_until(healthy, [child], SANDBOX_START_TIMEOUT, "the sandbox")
        self.sandbox_url = url
        self.ui.print(f"sandbox: pid {child.pid} on {url}", soft_wrap=True)

    def _start_workers(self, env: Mapping[str, str]) -> None:
        host = socket.gethostname()
        for number in range(1, self.options.workers + 1):
            # The run id keeps two dev stacks on one Redis from sharing heartbeat keys.
            name = f"dev{number}.{self.run_id}@{host}"
            extra = ["-c", str(self.options.concurrency), "-n", name, "--without-mingle", "--without-gossip"]
            child = self._spawn(name, "worker", celery_worker_argv(self.settings, extra), env, log=f"worker{number}")
            self.worker_names.append(name)
            self.ui.print(f"worker {name}: pid {child.pid}", soft_wrap=True)

    def _wait_for_workers(self) -> None:
        client = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        workers = [child for child in self.children if child.role == "worker"]
        try:
            with self.ui.status(f"waiting for {len(workers)} worker(s) to beat in Redis"):
                self._wait_until(
                    lambda: all(client.exists(self.keys.worker(name)) for name in self.worker_names),
                    workers,
                    WORKER_START_TIMEOUT,
                    "the workers' first heartbeat",
                )
        finally:
            client.close()

    def _start_flower(self, env: Mapping[str, str]) -> None:
        if importlib.util.find_spec("flower") is None:
            self.ui.print("[yellow]flower: not installed (pip install 'refold-dispatch[flower]'); skipped[/]")
            return
        port = self.options.flower_port or free_port()
        if not port_is_free(port):
            self.ui.print(f"[yellow]flower: port {port} is taken; skipped (use --flower-port)[/]", soft_wrap=True)
            return
        login = os.environ.get("FLOWER_BASIC_AUTH")
        self.flower_generated = not login
        if not login:
            login = f"dev:{secrets.token_urlsafe(12)}"
        self.flower_login = login
        # Flower reads FLOWER_BASIC_AUTH itself (as --basic-auth); the environment keeps it out of `ps`.
        flower_env = {**env, "FLOWER_BASIC_AUTH": login}
        argv = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "refold_dispatch.worker",
            "flower",
            f"--port={port}",
            "--address=127.0.0.1",
        ]
        child = self._spawn("flower", "flower", argv, flower_env, critical=False)
        self.flower_url = f"http://127.0.0.1:{port}"
        self.ui.print(f"flower: pid {child.pid} on {self.flower_url}", soft_wrap=True)

    def _panel(self) -> Panel:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold")
        grid.add_column(overflow="fold")
        if self.redis_dir is not None:
            grid.add_row("Redis", f"{self.redis_url}  (private: AOF on, noeviction, removed at exit)")
        else:
            grid.add_row("Redis", f"{redis_location(self.redis_url)}  (existing)")
        if self.sandbox_url is not None:
            grid.add_row("Refold", f"sandbox {self.sandbox_url}  (test environment, fixed dev key)")
            grid.add_row("", f"what it received: {self.sandbox_url}/_sandbox/stats")
        else:
            grid.add_row(
                "Refold",
                f"{self.settings.base_url}  ({self.settings.environment} environment, "
                f"key fingerprint {self.settings.api_key_fingerprint})",
            )
        grid.add_row(
            "Workers",
            f"{len(self.worker_names)} x concurrency {self.options.concurrency}, queue {self.settings.queue!r}",
        )
        if self.flower_url is not None and self.flower_login is not None:
            user, _, password = self.flower_login.partition(":")
            shown = f"user {user!r} password {password!r}" if self.flower_generated else "login from FLOWER_BASIC_AUTH"
            grid.add_row("Flower", f"{self.flower_url}  ({shown})")
        else:
            grid.add_row("Flower", "off")
        grid.add_row("Logs", str(self.options.log_dir))
        grid.add_row("Try", f"REFOLD_REDIS_URL={self.redis_url} refold-dispatch status --watch")
        return Panel(grid, title="refold-dispatch dev", expand=False)

    # -- watch ----------------------------------------------------------------------------------------------

    def check_children(self) -> None:
        """Raise if a critical child died; warn once about an optional one."""
        for child in self.children:
            if child.running():
                continue
            if child.critical:
                raise DevStackError(
                    f"{child.name} exited unexpectedly with code {child.process.returncode} (log: {child.log_path})",
                    child.log_tail(),
                )
            if not child.warned:
                child.warned = True
                self.ui.print(f"[yellow]{child.name} exited (code {child.process.returncode}); see {child.log_path}[/]")

    def supervise(self) -> None:
        """Watch the children until a stop is requested (raises StopRequested) or one dies (DevStackError)."""
        while True:
            self.check_children()
            self.stopper.sleep(POLL_SECONDS * 5)

    # -- stop -----------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Front to back: Flower and workers (warm shutdown), then the sandbox, then Redis and its temp dir."""
        for roles in (("flower", "worker"), ("sandbox",), ("redis",)):
            self._terminate([child for child in self.children if child.role in roles])
        if self.redis_dir is not None:
            shutil.rmtree(self.redis_dir, ignore_errors=True)
            self.redis_dir = None

    def _terminate(self, children: Sequence[Child]) -> None:
        for child in children:
            if child.running():
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_SECONDS
        for child in children:
            try:
                child.process.wait(max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                self.ui.print(f"[yellow]{child.name} did not stop within {STOP_GRACE_SECONDS:g} s: killing it[/]")
            # The whole group: a Celery pool child left behind by its parent goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.pid, signal.SIGKILL)
            child.process.wait()


# --- the demo ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoJob:
    """One job of the demo, what it should end as, and whether the "web app" enqueues it a second time."""

    label: str
    job: Job
    expect: Literal["delivered", "dead"] = "delivered"
    repeat: bool = False


_DEMO_ACCOUNTS = (
    ("acme", "Acme Corp", {"plan": "enterprise", "region": "us-east"}),
    ("globex", "Globex", {"plan": "pro", "region": "eu-west"}),
    ("initech", "Initech", {"plan": "starter", "region": "us-west"}),
    ("umbrella", "Umbrella Health", {"plan": "enterprise", "region": "ap-south"}),
    ("hooli", "Hooli", {"plan": "pro", "region": "us-east"}),
)
DEMO_EVENTS = 40


def _demo_payload(event: str, number: int, rng: random.Random) -> dict[str, Any]:
    if event == "order.created":
        return {"order_id": f"ord_{1000 + number}", "total": round(rng.uniform(9, 900), 2), "currency": "USD"}
    if event == "order.shipped":
        return {"order_id": f"ord_{1000 + number}", "carrier": rng.choice(["UPS", "DHL", "FedEx"])}
    if event == "invoice.paid":
        return {"invoice_id": f"in_{5000 + number}", "amount": rng.randint(1000, 90000), "currency": "EUR"}
    if event == "user.signed_up":
        return {"user_id": f"u_{number}", "email": f"user{number}@example.com", "source": "web"}
    if event == "user.updated":
        return {"user_id": f"u_{number}", "changed": rng.sample(["email", "name", "role", "locale"], 2)}
    return {"ticket_id": f"t_{number}", "priority": rng.choice(["low", "normal", "high"]), "subject": "Sync failed"}


def build_demo_plan(run_id: str, *, seed: int = 7) -> list[DemoJob]:
    """Upserts of five accounts, then 40 events across them (every 4th with a caller key, every 12th of those
    enqueued twice), and one event Refold does not know. Account ids carry ``run_id``, so runs never collide."""
    rng = random.Random(seed)  # noqa: S311 - demo data, not security
    plan: list[DemoJob] = []
    accounts: list[str] = []
    for slug, name, udf in _DEMO_ACCOUNTS:
        account = f"demo-{run_id}-{slug}"
        accounts.append(account)
        plan.append(DemoJob(f"upsert {slug}", upsert_linked_account_job(account, name=name, udf=udf)))
    events = ("order.created", "order.shipped", "invoice.paid", "user.signed_up", "user.updated", "ticket.opened")
    for number in range(DEMO_EVENTS):
        account = accounts[number % len(accounts)]
        event = events[rng.randrange(len(events))]
        keyed = number % 4 == 0
        key = f"{account}:{event}:{number}" if keyed else None
        job = trigger_event_job(event, account, _demo_payload(event, number, rng), idempotency_key=key)
        plan.append(DemoJob(f"{event} #{number}", job, repeat=keyed and number % 12 == 0))
        if number == DEMO_EVENTS // 2:
            unknown = trigger_event_job(DEMO_UNKNOWN_EVENT, account, {"plan": "free"})
            plan.append(DemoJob(f"{DEMO_UNKNOWN_EVENT} (unknown to Refold)", unknown, expect="dead"))
    return plan


@dataclass(frozen=True)
class JobState:
    state: str
    attempts: int
    had_error: bool
    dead_reason: str | None


def read_job_states(client: redis.Redis, keys: Keys, job_ids: Sequence[str]) -> dict[str, JobState]:
    with client.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hmget(keys.job(job_id), "state", "attempts", "last_error", "dead_reason")
        rows = pipe.execute()
    states = {}
    for job_id, (state, attempts, last_error, reason) in zip(job_ids, rows, strict=True):
        states[job_id] = JobState(
            state=_text(state) or "missing",
            attempts=int(_text(attempts) or 0),
            had_error=last_error is not None,
            dead_reason=_text(reason) or None,
        )
    return states


def count_states(states: Mapping[str, JobState]) -> dict[str, int]:
    """delivered / retrying / dead / queued, as the live view shows them."""
    counts = {"delivered": 0, "retrying": 0, "dead": 0, "queued": 0}
    for job in states.values():
        if job.state in _FINAL_DELIVERED:
            counts["delivered"] += 1
        elif job.state == "dead":
            counts["dead"] += 1
        elif job.had_error:
            counts["retrying"] += 1
        else:
            counts["queued"] += 1
    return counts


@dataclass
class DemoRun:
    """What happened while the demo ran: receipts, timings, the final states and the sandbox's records."""

    plan: list[DemoJob]
    receipts: dict[str, Receipt] = field(default_factory=dict)
    repeat_receipts: dict[str, Receipt] = field(default_factory=dict)
    states: dict[str, JobState] = field(default_factory=dict)
    records: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    timed_out: bool = False


def _state_problems(run: DemoRun) -> list[str]:
    problems = []
    for item in run.plan:
        if item.repeat:
            again = run.repeat_receipts.get(item.job.id)
            if again is None or not again.duplicate or again.job_id != item.job.id:
                problems.append(f"{item.label}: the second enqueue was not recognised as a duplicate")
        job = run.states.get(item.job.id)
        state = job.state if job else "missing"
        ended = "delivered" if state in _FINAL_DELIVERED else state
        if ended != item.expect:
            problems.append(f"{item.label}: ended {state}, expected {item.expect}")
        elif item.expect == "dead" and job is not None and job.dead_reason != "permanent":
            problems.append(f"{item.label}: dead-lettered as {job.dead_reason}, expected permanent")
    return problems


def _sandbox_tally(run: DemoRun) -> tuple[Counter[str], Counter[str]]:
    """Deliveries and faults per idempotency key of the demo's jobs, from the sandbox's own records."""
    demo_keys = {item.job.idempotency_key for item in run.plan}
    deliveries: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    for record in run.records:
        key = record.get("idempotency_key")
        if key in demo_keys:
            if record.get("outcome") == "delivered":
                deliveries[key] += 1
            elif record.get("outcome") == "fault":
                faults[key] += 1
    return deliveries, faults


def summarize_demo(run: DemoRun, run_id: str) -> dict[str, Any]:
    """The demo's outcome and every way it differs from what it should be (``problems``; ``ok`` if none).

    Expected: every repeat recognised as a duplicate at enqueue; every job delivered except the unknown event,
    dead-lettered as ``permanent``; and the sandbox accepted each delivered job exactly once.
    """
    problems = [f"not settled after {run.elapsed:.0f} s"] if run.timed_out else []
    problems += _state_problems(run)
    deliveries, faults = _sandbox_tally(run)
    for item in run.plan:
        times = deliveries[item.job.idempotency_key]
        if item.expect == "delivered" and times != 1:
            problems.append(f"{item.label}: the sandbox accepted it {times} times, expected exactly once")
    counts = count_states(run.states)
    return {
        "ok": not problems,
        "run_id": run_id,
        "accounts": len(_DEMO_ACCOUNTS),
        "jobs": len(run.plan),
        "upserts": sum(1 for item in run.plan if item.job.kind == "upsert"),
        "events": sum(1 for item in run.plan if item.job.kind == "event"),
        "enqueue_calls": len(run.plan) + sum(1 for item in run.plan if item.repeat),
        "duplicates_at_enqueue": sum(1 for receipt in run.repeat_receipts.values() if receipt.duplicate),
        "delivered": counts["delivered"],
        "dead": counts["dead"],
        "pending": counts["retrying"] + counts["queued"],
        "dead_reasons": dict(Counter(job.dead_reason or "?" for job in run.states.values() if job.state == "dead")),
        "faults_injected": sum(faults.values()),
        "jobs_that_hit_a_fault": len(faults),
        "jobs_retried_later": sum(1 for job in run.states.values() if job.attempts > 1),
        "sandbox_deliveries": sum(deliveries.values()),
        "delivered_more_than_once": sorted(key for key, count in deliveries.items() if count > 1),
        "elapsed_seconds": round(run.elapsed, 1),
        "problems": problems,
    }


def _progress_table(counts: Mapping[str, int], total: int, sandbox: Mapping[str, Any], elapsed: float) -> Table:
    table = Table(title=f"demo: {total} jobs, {elapsed:.0f} s", box=box.SIMPLE_HEAD, title_justify="left")
    for column in ("delivered", "retrying", "dead", "queued", "sandbox requests", "faults served"):
        table.add_column(column, justify="right")
    by_outcome = sandbox.get("by_outcome", {})
    table.add_row(
        f"[green]{counts['delivered']}[/]",
        f"[yellow]{counts['retrying']}[/]",
        f"[red]{counts['dead']}[/]",
        str(counts["queued"]),
        str(sandbox.get("total", "?")),
        str(by_outcome.get("fault", 0)),
    )
    return table


def run_demo(stack: DevStack) -> DemoRun:
    """Enqueue the plan with a fault window open, follow it live until settled (or the timeout), and collect."""
    from refold_dispatch.sandbox.admin import SandboxAdmin

    if stack.sandbox_url is None:  # pragma: no cover - run_dev refuses --demo without the sandbox
        raise DevStackError("--demo needs the sandbox")
    plan = build_demo_plan(stack.run_id)
    run = DemoRun(plan)
    settings = stack.job_settings()
    client = redis.Redis.from_url(stack.redis_url, socket_timeout=5)
    admin = SandboxAdmin(stack.sandbox_url)
    faults_on = True
    try:
        admin.set_faults(error_rate=DEMO_ERROR_RATE)
        started = time.monotonic()
        with Dispatcher(settings) as dispatcher:
            for item in plan:
                run.receipts[item.job.id] = dispatcher.enqueue(item.job)
            for item in plan:
                if item.repeat:
                    # The web app retried its request: same key, same content, a freshly built job.
                    again = item.job.model_copy(update={"id": new_job_id(), "created_at": time.time()})
                    run.repeat_receipts[item.job.id] = dispatcher.enqueue(again)
        stack.ui.print(
            f"demo: enqueued {len(plan)} jobs (+{len(run.repeat_receipts)} repeats); "
            f"sandbox error rate {DEMO_ERROR_RATE:.0%} for a few seconds",
            soft_wrap=True,
        )
        job_ids = [item.job.id for item in plan]
        sandbox_stats: dict[str, Any] = {}
        with Live(console=stack.ui, auto_refresh=False, transient=False) as live:
            while True:
                stack.check_children()
                run.states = read_job_states(client, stack.keys, job_ids)
                sandbox_stats = admin.stats()
                run.elapsed = time.monotonic() - started
                served = int(sandbox_stats.get("by_outcome", {}).get("fault", 0))
                if faults_on and (served >= DEMO_FAULT_TARGET or run.elapsed > DEMO_FAULT_WINDOW_SECONDS):
                    admin.set_faults(error_rate=0.0)
                    faults_on = False
                counts = count_states(run.states)
                live.update(_progress_table(counts, len(job_ids), sandbox_stats, run.elapsed), refresh=True)
                if counts["delivered"] + counts["dead"] == len(job_ids):
                    break
                if run.elapsed > stack.options.demo_timeout:
                    run.timed_out = True
                    break
                stack.stopper.sleep(DEMO_REFRESH_SECONDS)
        stack.ui.print()  # a console that is not a terminal gets the last frame without its line end
        run.records = admin.requests()
    finally:
        if faults_on:
            with contextlib.suppress(httpx.HTTPError):
                admin.set_faults(error_rate=0.0)
        admin.close()
        client.close()
    return run


def _summary_table(summary: Mapping[str, Any]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row(
        "jobs",
        f"{summary['jobs']} ({summary['upserts']} upserts of {summary['accounts']} accounts, "
        f"{summary['events']} events)",
    )
    table.add_row("enqueue calls", f"{summary['enqueue_calls']} ({summary['duplicates_at_enqueue']} duplicates caught)")
    table.add_row("delivered", str(summary["delivered"]))
    reasons = ", ".join(f"{reason} {count}" for reason, count in summary["dead_reasons"].items())
    table.add_row("dead-lettered", f"{summary['dead']}" + (f" ({reasons})" if reasons else ""))
    table.add_row(
        "faults",
        f"{summary['faults_injected']} served to {summary['jobs_that_hit_a_fault']} job(s); "
        f"{summary['jobs_retried_later']} retried on the job-level schedule",
    )
    table.add_row(
        "sandbox deliveries",
        f"{summary['sandbox_deliveries']} (delivered twice: {len(summary['delivered_more_than_once'])})",
    )
    table.add_row("time", f"{summary['elapsed_seconds']} s")
    return table


def run_dev(options: DevOptions, settings: Settings, *, ui: Console, out: Console) -> int:
    """Run the stack until stopped (or, with ``--demo --exit-when-done``, until the demo settles). Exit code."""
    if options.demo and has_api_key(settings):
        raise DevStackError(
            "--demo sends made-up events, so it runs against the local sandbox only: "
            "run it without REFOLD_API_KEY in the environment or .env"
        )
    stack = DevStack(options, settings, ui)
    with stack.stopper.installed():
        try:
            stack.start()
            if options.demo:
                run = run_demo(stack)
                summary = summarize_demo(run, stack.run_id)
                if options.json_summary:
                    out.out(json.dumps(summary, sort_keys=True), highlight=False)
                else:
                    out.print(Panel(_summary_table(summary), title="demo summary", expand=False))
                verdict = (
                    "[green]demo settled as expected[/]" if summary["ok"] else "[red]demo did not go as expected[/]"
                )
                ui.print(verdict, soft_wrap=True)
                for problem in summary["problems"]:
                    ui.print(f"  - {problem}", soft_wrap=True, markup=False)
                if options.exit_when_done:
                    return 0 if summary["ok"] else 1
                ui.print("the stack keeps running: Ctrl-C stops it", soft_wrap=True)
            stack.supervise()
        except StopRequested as stop:
            ui.print(f"{stop}: stopping…", soft_wrap=True)
        except DevStackError as exc:
            if exc.log_tail:
                ui.print(exc.log_tail, markup=False, highlight=False, soft_wrap=True)
            raise
        finally:
            stack.stop()
            ui.print("stopped", soft_wrap=True)
    return 0


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else str(value)
