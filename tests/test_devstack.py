"""``refold-dispatch dev``: the demo plan and its verdict as pure functions, the start-up refusals through the
CliRunner, and the whole stack as a real subprocess, run the way the README says (demo to completion, and
a clean stop on SIGTERM or Ctrl-C)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner

from refold_dispatch.cli import app
from refold_dispatch.devstack import (
    DEMO_EVENTS,
    DEMO_UNKNOWN_EVENT,
    DemoRun,
    JobState,
    build_demo_plan,
    celery_worker_argv,
    count_states,
    summarize_demo,
)
from refold_dispatch.dispatcher import Receipt
from refold_dispatch.keys import Keys
from refold_dispatch.sandbox import DEFAULT_KNOWN_EVENTS
from tests.conftest import make_settings
from tests.support import TEST_API_KEY, RedisServer, free_port, wait_for

# The whole stack (Redis, sandbox, two workers) starts in about 10 s and the demo settles in a few more.
DEMO_BUDGET_SECONDS = 100


def _clean_env(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("REFOLD_", "FLOWER_"))}
    env.pop("REDIS_URL", None)
    env.update(PYTHONUNBUFFERED="1", COLUMNS="120", **extra)
    return env


def _dev_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "refold_dispatch.cli", "dev", *args]


# --- the plan and the verdict ------------------------------------------------------------------------------


def test_the_demo_plan_is_a_realistic_mix() -> None:
    plan = build_demo_plan("abc123")

    kinds = Counter(item.job.kind for item in plan)
    assert kinds == {"upsert": 5, "event": DEMO_EVENTS + 1}
    # Upserts first, so no event overtakes the upsert that creates its account.
    assert [item.job.kind for item in plan[:5]] == ["upsert"] * 5
    accounts = {item.job.linked_account_id for item in plan}
    assert len(accounts) == 5
    assert all(account.startswith("demo-abc123-") for account in accounts)
    events = [item for item in plan if item.job.kind == "event"]
    assert {item.job.params.event for item in events} - DEFAULT_KNOWN_EVENTS == {DEMO_UNKNOWN_EVENT}  # type: ignore[union-attr]
    assert [item.expect for item in plan].count("dead") == 1
    caller_keys = [item for item in events if not item.job.idempotency_key.startswith("rd-")]
    assert len(caller_keys) == 10
    repeats = [item for item in plan if item.repeat]
    assert len(repeats) == 4
    assert all(item in caller_keys for item in repeats)
    assert len({item.job.idempotency_key for item in plan}) == len(plan)
    assert build_demo_plan("abc123")[7].job.params == plan[7].job.params  # seeded: the same mix every run


def _settled_run(*, deliveries: int = 1, faults: int = 0) -> DemoRun:
    plan = build_demo_plan("run1")
    run = DemoRun(plan, elapsed=3.2)
    for item in plan:
        dead = item.expect == "dead"
        run.states[item.job.id] = JobState(
            "dead" if dead else "delivered", 1, had_error=dead, dead_reason="permanent" if dead else None
        )
        if item.repeat:
            run.repeat_receipts[item.job.id] = Receipt(item.job.id, item.job.idempotency_key, duplicate=True)
        key = item.job.idempotency_key
        if dead:
            run.records.append({"idempotency_key": key, "outcome": "rejected"})
            continue
        run.records.extend({"idempotency_key": key, "outcome": "fault"} for _ in range(faults))
        run.records.extend({"idempotency_key": key, "outcome": "delivered"} for _ in range(deliveries))
    run.records.append({"idempotency_key": "someone-else", "outcome": "delivered"})
    return run


def test_a_demo_that_went_as_planned_is_ok() -> None:
    summary = summarize_demo(_settled_run(faults=1), "run1")

    assert summary["problems"] == []
    assert summary["ok"] is True
    assert (summary["jobs"], summary["delivered"], summary["dead"], summary["pending"]) == (46, 45, 1, 0)
    assert summary["dead_reasons"] == {"permanent": 1}
    assert (summary["enqueue_calls"], summary["duplicates_at_enqueue"]) == (50, 4)
    assert (summary["faults_injected"], summary["jobs_that_hit_a_fault"]) == (45, 45)
    assert summary["sandbox_deliveries"] == 45


def test_every_deviation_is_a_problem() -> None:
    run = _settled_run(deliveries=2)
    first_event = next(item for item in run.plan if item.job.kind == "event")
    run.states[first_event.job.id] = JobState("delayed", 2, had_error=True, dead_reason=None)
    repeat = next(item for item in run.plan if item.repeat)
    run.repeat_receipts[repeat.job.id] = Receipt("another-id", repeat.job.idempotency_key, duplicate=False)
    unknown = next(item for item in run.plan if item.expect == "dead")
    run.states[unknown.job.id] = JobState("dead", 1, had_error=True, dead_reason="exhausted")
    run.timed_out = True

    summary = summarize_demo(run, "run1")

    assert summary["ok"] is False
    problems = "\n".join(summary["problems"])
    assert problems.startswith("not settled after 3 s")
    assert f"{first_event.label}: ended delayed, expected delivered" in problems
    assert f"{repeat.label}: the second enqueue was not recognised as a duplicate" in problems
    assert "dead-lettered as exhausted, expected permanent" in problems
    assert "accepted it 2 times, expected exactly once" in problems
    assert len(summary["delivered_more_than_once"]) == 45
    assert summary["pending"] == 1


def test_live_counts() -> None:
    states = {
        "a": JobState("delivered", 1, had_error=False, dead_reason=None),
        "b": JobState("superseded", 1, had_error=False, dead_reason=None),
        "c": JobState("dead", 3, had_error=True, dead_reason="permanent"),
        "d": JobState("delayed", 1, had_error=True, dead_reason=None),
        "e": JobState("queued", 0, had_error=False, dead_reason=None),
        "f": JobState("waiting", 0, had_error=False, dead_reason=None),
    }

    assert count_states(states) == {"delivered": 2, "retrying": 1, "dead": 1, "queued": 2}


def test_workers_are_celery_with_our_defaults() -> None:
    argv = celery_worker_argv(make_settings(queue="jobs", worker_pool="threads", log_level="DEBUG"), ["-c", "3"])

    assert argv == [
        sys.executable, "-m", "celery", "-A", "refold_dispatch.worker", "worker",
        "--loglevel", "DEBUG", "-Q", "jobs", "-P", "threads", "-c", "3",
    ]  # fmt: skip


# --- refusals, before anything starts ----------------------------------------------------------------------


@pytest.fixture
def dev_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REFOLD_REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    return tmp_path


def test_without_redis_or_redis_server_it_says_how_to_get_one(dev_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)

    result = CliRunner().invoke(app, ["dev", "--no-flower", "--log-dir", str(dev_env / "logs")])

    assert result.exit_code == 1
    message = " ".join(result.stderr.split())
    assert "redis-server is not installed" in message
    assert "apt-get install redis-server" in message
    assert "brew install redis" in message


def test_an_explicit_redis_url_must_answer(dev_env: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"

    result = CliRunner().invoke(app, ["dev", "--redis-url", url, "--log-dir", str(dev_env / "logs")])

    assert result.exit_code == 1
    assert "no Redis answers at 127.0.0.1:" in result.stderr


def test_exit_when_done_needs_demo(dev_env: Path) -> None:
    result = CliRunner().invoke(app, ["dev", "--exit-when-done"])

    assert result.exit_code == 2
    assert "--exit-when-done" in result.stderr


def test_the_demo_refuses_a_real_key(dev_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REFOLD_API_KEY", TEST_API_KEY)

    result = CliRunner().invoke(app, ["dev", "--demo"])

    assert result.exit_code == 1
    assert "runs against the local sandbox only" in result.stderr
    assert TEST_API_KEY not in result.output


# --- the real thing ----------------------------------------------------------------------------------------


@pytest.mark.integration
def test_the_demo_runs_to_completion(redis_server: RedisServer, real_redis: redis.Redis, tmp_path: Path) -> None:
    # Given a private Redis and no API key (so dev runs the sandbox)
    command = _dev_command(
        "--demo", "--exit-when-done", "--workers", "2", "--no-flower", "--redis-url", redis_server.url,
        "--sandbox-port", "0", "--json", "--log-dir", str(tmp_path / "logs"),
    )  # fmt: skip

    # When the demo runs as the README runs it
    done = subprocess.run(
        command,
        env=_clean_env(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEMO_BUDGET_SECONDS,
        check=False,
    )

    # Then it exits 0 with a summary saying every job reached the sandbox once, and the unknown event died
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["ok"] is True, summary["problems"]
    assert (summary["jobs"], summary["delivered"], summary["dead"]) == (46, 45, 1)
    assert summary["dead_reasons"] == {"permanent": 1}
    assert summary["duplicates_at_enqueue"] == 4
    assert summary["sandbox_deliveries"] == 45
    assert summary["delivered_more_than_once"] == []
    assert "demo settled as expected" in done.stderr
    # And the dead letter is there for an operator to find
    keys = Keys("refold")
    (entry,) = real_redis.hvals(keys.dlq_entries)
    assert json.loads(entry)["job"]["params"]["event"] == DEMO_UNKNOWN_EVENT
    # And no worker of the stack is left beating
    assert list(real_redis.scan_iter(match=keys.worker_pattern)) == []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's group took the id
        return True
    return True


@pytest.mark.integration
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_everything_and_cleans_up(tmp_path: Path, stop_signal: signal.Signals) -> None:
    # Given the full stack with a private Redis (the configured one does not answer) and Flower
    stderr_path = tmp_path / "dev.err"
    dead_url = f"redis://127.0.0.1:{free_port()}/0"
    env = _clean_env(REFOLD_REDIS_URL=dead_url)
    command = _dev_command(
        "--workers", "1", "--sandbox-port", "0", "--flower-port", "0", "--log-dir", str(tmp_path / "logs")
    )
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        wait_for(lambda: "stack ready" in stderr_path.read_text(), timeout=90, what="the dev stack to be ready")
        started = stderr_path.read_text()
        pids = [int(pid) for pid in re.findall(r"pid (\d+)", started)]
        assert len(pids) == 4, started  # redis, sandbox, one worker, flower
        redis_dir = Path(re.search(r"data in (\S+),", started).group(1))  # type: ignore[union-attr]
        assert redis_dir.is_dir()

        # When it is told to stop
        process.send_signal(stop_signal)
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

    # Then it stopped cleanly, took every child (and their children) with it, and removed Redis's temp dir
    assert code == 0, stderr_path.read_text()
    assert [pid for pid in pids if _group_alive(pid)] == []
    assert not redis_dir.exists()
    assert "stopped" in stderr_path.read_text()
