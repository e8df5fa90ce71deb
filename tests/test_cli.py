"""The ``refold-dispatch`` CLI through typer's CliRunner, against a real (private) Redis.

Settings reach the CLI as they reach it in production: environment variables (set with monkeypatch), from a
working directory without a ``.env``. Dead letters are made the way workers make them: a job is enqueued, then
delivered by the real :class:`~refold_dispatch.delivery.Deliverer` through a MockTransport answering 404, or
moved by the ``deadletter`` script when a test needs many.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from typer.testing import CliRunner, Result

from refold_dispatch import cli
from refold_dispatch.cli import app, format_age, parse_duration, parse_since
from refold_dispatch.client import RefoldClient
from refold_dispatch.config import Settings
from refold_dispatch.delivery import Deliverer
from refold_dispatch.dispatcher import Dispatcher
from refold_dispatch.keys import Keys
from refold_dispatch.scripts import ScriptContext, Scripts
from tests.support import TEST_API_KEY, RedisServer, free_port

pytestmark = pytest.mark.integration

KEYS = Keys("refold")
NOT_FOUND = {
    "status_code": 404,
    "http_error_type": "NOT_FOUND",
    "error_code": "INVALID_EVENT",
    "message": "Trigger not found",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_server: RedisServer) -> dict[str, str]:
    """The environment every command runs with; the cwd has no .env."""
    values = {
        "REFOLD_REDIS_URL": redis_server.url,
        "REFOLD_API_KEY": TEST_API_KEY,
        "REFOLD_BASE_URL": "http://refold.test",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COLUMNS", "200")  # tables as wide as a real terminal, so assertions see whole cells
    monkeypatch.chdir(tmp_path)
    return values


@pytest.fixture
def settings(env: dict[str, str]) -> Settings:
    # The same values the CLI reads, plus a limiter loose enough to seed many dead letters at once.
    return Settings(_env_file=None, rate_limit=10_000, rate_burst=10_000)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def dispatcher(settings: Settings, real_redis: redis.Redis) -> Iterator[Dispatcher]:
    with Dispatcher(settings, redis_client=real_redis) as instance:
        yield instance


def run(runner: CliRunner, *args: str, input: str | None = None) -> Result:
    result = runner.invoke(app, list(args), input=input)
    # The one promise every command keeps, whatever it printed.
    assert TEST_API_KEY not in result.output
    return result


def deliver_404(settings: Settings, client: redis.Redis, job_id: str) -> None:
    """Deliver one job the way a worker does, to a Refold that answers 404: it is dead-lettered."""
    transport = httpx.MockTransport(lambda request: httpx.Response(404, json=NOT_FOUND, request=request))
    with RefoldClient(settings, transport=transport) as refold:
        scripts = Scripts(client, ScriptContext.from_settings(settings))
        outcome = Deliverer(settings, client, refold, scripts, sleep=lambda _: None).deliver(job_id)
    assert outcome.kind == "dead", outcome


def dead_letter(settings: Settings, client: redis.Redis, job_id: str, reason: str = "exhausted") -> None:
    Scripts(client, ScriptContext.from_settings(settings)).run(
        "deadletter", [job_id, "", reason, json.dumps({"status_code": 503, "message": "down"}), "seeded", ""]
    )


@pytest.fixture
def seeded(settings: Settings, real_redis: redis.Redis, dispatcher: Dispatcher) -> dict[str, str]:
    """Three dead letters: two unknown-event 404s (accounts a and b), one upsert with credentials."""
    ids = {}
    for name, account in (("nope.event", "acct_a"), ("nope.other", "acct_b")):
        receipt = dispatcher.trigger_event(name, account, {"order": 1})
        deliver_404(settings, real_redis, receipt.job_id)
        ids[name] = receipt.job_id
    upsert = dispatcher.upsert_linked_account(
        "acct_c", name="Cee", your_app={"app_id": "x", "auth_credentials": {"api_token": "s3cr3t-credential"}}
    )
    deliver_404(settings, real_redis, upsert.job_id)
    ids["upsert"] = upsert.job_id
    return ids


# --- parsing helpers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30m", 1800), ("2h", 7200), ("7d", 604800), ("45s", 45), ("1h30m", 5400), ("2w", 1209600), ("0.5h", 1800)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "m", "3x", "1h 30", "-1h"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_since_takes_a_duration_or_an_iso_time() -> None:
    assert parse_since("2h", now=10_000) == 10_000 - 7200
    assert parse_since("2026-07-01T12:00:00Z") == parse_since("2026-07-01T12:00:00") == 1_782_907_200


def test_ages_read_like_a_person_says_them() -> None:
    assert [format_age(s) for s in (None, 0.25, 42, 192, 7500, 360_000)] == [
        "—",
        "0.2s",
        "42s",
        "3m 12s",
        "2h 5m",
        "4d 4h",
    ]


# --- help, worker, sandbox ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["worker"],
        ["enqueue"],
        ["enqueue", "event"],
        ["enqueue", "account"],
        ["dlq"],
        ["dlq", "list"],
        ["dlq", "show"],
        ["dlq", "replay"],
        ["dlq", "purge"],
        ["dlq", "stats"],
        ["status"],
        ["token"],
        ["sandbox"],
        ["dev"],
    ],
)
def test_every_command_has_help(runner: CliRunner, command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])

    assert result.exit_code == 0, result.output
    assert "usage" in result.output.lower()


def test_worker_execs_celery_with_our_defaults_and_passes_the_rest_through(
    runner: CliRunner, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []

    def fake_execvp(file: str, argv: list[str]) -> None:
        calls.append([file, *argv])

    monkeypatch.setattr(os, "execvp", fake_execvp)
    monkeypatch.setenv("REFOLD_QUEUE", "jobs")

    result = run(runner, "worker", "--concurrency", "4", "-n", "w1@%h")

    assert result.exit_code == 0, result.output
    (call,) = calls
    assert call[0] == call[1]  # the interpreter, so the worker runs in this environment
    assert call[2:] == [
        "-m", "celery", "-A", "refold_dispatch.worker", "worker", "--loglevel", "INFO", "-Q", "jobs", "-P", "prefork",
        "--concurrency", "4", "-n", "w1@%h",
    ]  # fmt: skip


def test_sandbox_is_configured_by_the_sandbox_s_own_parser(
    runner: CliRunner, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    served: list[tuple[Any, str, int]] = []
    monkeypatch.setattr(
        "refold_dispatch.sandbox.server.run_sandbox", lambda config, host, port: served.append((config, host, port))
    )

    result = run(runner, "sandbox", "--port", "9999", "--error-rate", "0.2", "--api-key", "tk_mine")

    assert result.exit_code == 0, result.output
    ((config, host, port),) = served
    assert (host, port, config.faults.error_rate, config.api_key) == ("127.0.0.1", 9999, 0.2, "tk_mine")
    assert run(runner, "sandbox", "--error-rate", "lots").exit_code == 2


# --- enqueue -----------------------------------------------------------------------------------------------


def test_enqueue_event_prints_the_receipt_and_recognises_a_repeat(
    runner: CliRunner, env: dict[str, str], real_redis: redis.Redis
) -> None:
    args = ["enqueue", "event", "order.created", "--account", "acct_1", "--payload", '{"order_id": 7}', "--key", "k1"]

    first = run(runner, *args, "--json")
    again = run(runner, *args)

    assert first.exit_code == again.exit_code == 0, first.output + again.output
    receipt = json.loads(first.stdout)
    assert receipt["idempotency_key"] == "k1"
    assert receipt["duplicate"] is False
    assert "already enqueued" in again.stdout
    assert receipt["job_id"] in again.stdout
    stored = json.loads(real_redis.hget(KEYS.job(receipt["job_id"]), "data"))  # type: ignore[arg-type]
    assert stored["params"]["payload"] == {"order_id": 7}
    assert real_redis.llen("refold") == 1


def test_enqueue_event_headers_and_payload_from_a_file(
    runner: CliRunner, env: dict[str, str], real_redis: redis.Redis, tmp_path: Path
) -> None:
    (tmp_path / "payload.json").write_text('{"total": 99.5}')

    result = run(
        runner, "enqueue", "event", "invoice.paid", "-a", "acct_1", "-p", "@payload.json",
        "--config-id", "cfg", "--slug", "hubspot", "--instance-tag", "nightly", "--json",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    job = json.loads(real_redis.hget(KEYS.job(json.loads(result.stdout)["job_id"]), "data"))  # type: ignore[arg-type]
    params = job["params"]
    assert (params["payload"], params["config_id"], params["slug"], params["instance_tag"]) == (
        {"total": 99.5},
        "cfg",
        "hubspot",
        "nightly",
    )


def test_enqueue_account_with_user_defined_fields(
    runner: CliRunner, env: dict[str, str], real_redis: redis.Redis
) -> None:
    result = run(runner, "enqueue", "account", "acct_9", "--name", "Acme", "--udf", "plan=pro", "--udf", "seats=12")

    assert result.exit_code == 0, result.output
    assert "enqueued upsert of account acct_9" in result.stdout
    (job_key,) = [key for key in real_redis.scan_iter("refold:job:*") if not key.endswith(b":hist")]
    params = json.loads(real_redis.hget(job_key, "data"))["params"]  # type: ignore[arg-type]
    assert params == {
        "kind": "upsert",
        "linked_account_id": "acct_9",
        "name": "Acme",
        "udf": {"plan": "pro", "seats": "12"},
        "your_app": None,
    }


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["event", "order.created", "-a", "acct_1", "-p", "{not json"], "not valid JSON"),
        (["event", "order.created", "-a", "acct_1", "-p", "[1, 2]"], "must be a JSON object"),
        (["event", "order.created", "-a", "acct_1", "-p", "@missing.json"], "cannot read missing.json"),
        (["event", "order.created"], "Missing option"),
        (["event", " order.created", "-a", "acct_1"], "leading or trailing whitespace"),
        (["event", "order.created", "-a", "acct é"], "non-ASCII"),
        (["account", "acct_1", "--udf", "plan"], "is not key=value"),
        (["account", "acct_1", "--udf", "a=1", "--udf", "a=2"], "given twice"),
        (["account", ".."], "URL path segment"),
    ],
)
def test_bad_input_exits_2_and_stores_nothing(
    runner: CliRunner, env: dict[str, str], real_redis: redis.Redis, args: list[str], message: str
) -> None:
    result = run(runner, "enqueue", *args)

    assert result.exit_code == 2, result.output
    assert message in " ".join(result.stderr.split())
    assert real_redis.dbsize() == 0


def test_a_key_reused_for_another_job_exits_1(runner: CliRunner, env: dict[str, str]) -> None:
    assert run(runner, "enqueue", "event", "a.b", "-a", "acct_1", "-p", '{"n": 1}', "-k", "same").exit_code == 0

    result = run(runner, "enqueue", "event", "a.b", "-a", "acct_1", "-p", '{"n": 2}', "-k", "same")

    assert result.exit_code == 1
    assert result.stderr.startswith("refold-dispatch: error: idempotency key 'same' was already used")


# --- dead letters ------------------------------------------------------------------------------------------


def test_dlq_list_filters(runner: CliRunner, seeded: dict[str, str]) -> None:
    def listed(*args: str) -> list[str]:
        result = run(runner, "dlq", "list", "--json", *args)
        assert result.exit_code == 0, result.output
        return [entry["id"] for entry in json.loads(result.stdout)]

    assert sorted(listed()) == sorted(seeded.values())
    assert listed("--event", "nope.event") == [seeded["nope.event"]]
    assert listed("--account", "acct_b") == [seeded["nope.other"]]
    assert sorted(listed("--reason", "permanent")) == sorted(seeded.values())
    assert listed("--reason", "auth") == []
    assert len(listed("--since", "1h")) == 3
    assert listed("--since", "2999-01-01T00:00:00Z") == []
    assert listed("--limit", "1") == [seeded["upsert"]]  # newest first

    human = run(runner, "dlq", "list")
    assert human.exit_code == 0
    assert "3 shown, 3 in the dead-letter queue" in human.stdout
    assert "INVALID_EVENT" in human.stdout

    bad = run(runner, "dlq", "list", "--since", "yesterday-ish")
    assert bad.exit_code == 2
    assert "neither a duration" in bad.stderr


def test_dlq_show_masks_credentials(runner: CliRunner, seeded: dict[str, str]) -> None:
    as_json = run(runner, "dlq", "show", seeded["upsert"], "--json")
    human = run(runner, "dlq", "show", seeded["upsert"])

    assert as_json.exit_code == human.exit_code == 0, as_json.output + human.output
    entry = json.loads(as_json.stdout)
    assert entry["reason"] == "permanent"
    assert entry["last_error"]["error_code"] == "INVALID_EVENT"
    assert entry["job"]["params"]["your_app"]["auth_credentials"] == {"api_token": "***"}
    assert "s3cr3t-credential" not in as_json.output + human.output
    assert "acct_c" in human.stdout
    assert "Trigger not found" in human.stdout


def test_dlq_show_of_an_unknown_id_exits_1(runner: CliRunner, seeded: dict[str, str]) -> None:
    result = run(runner, "dlq", "show", "no-such-id")

    assert result.exit_code == 1
    assert result.stderr.strip() == "refold-dispatch: error: no dead letter with id 'no-such-id'"


def test_dlq_replay_by_id(runner: CliRunner, seeded: dict[str, str], real_redis: redis.Redis) -> None:
    result = run(runner, "dlq", "replay", seeded["nope.event"], "--json")

    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"outcomes": {seeded["nope.event"]: "replayed"}, "replayed": 1}
    assert real_redis.hget(KEYS.job(seeded["nope.event"]), "state") == b"queued"
    assert real_redis.zscore(KEYS.dlq_index, seeded["nope.event"]) is None

    missing = run(runner, "dlq", "replay", seeded["nope.other"], "no-such-id")
    assert missing.exit_code == 1
    assert "not_found" in missing.stdout
    assert real_redis.hget(KEYS.job(seeded["nope.other"]), "state") == b"queued"


def test_dlq_replay_all_matching_with_progress(
    runner: CliRunner, settings: Settings, real_redis: redis.Redis, dispatcher: Dispatcher
) -> None:
    # Given more dead letters than the progress threshold, and one of another reason
    exhausted = []
    for number in range(cli.PROGRESS_THRESHOLD + 2):
        receipt = dispatcher.trigger_event("order.created", f"acct_{number}", {"n": number})
        dead_letter(settings, real_redis, receipt.job_id, "exhausted")
        exhausted.append(receipt.job_id)
    other = dispatcher.trigger_event("order.created", "acct_x", {"n": -1})
    dead_letter(settings, real_redis, other.job_id, "auth")

    # When every exhausted one is replayed
    result = run(runner, "dlq", "replay", "--all", "--reason", "exhausted", "--yes")

    # Then those, and only those, are back in the queue
    assert result.exit_code == 0, result.output
    assert f"{len(exhausted)} of {len(exhausted)} replayed" in result.stdout
    assert [real_redis.hget(KEYS.job(job_id), "state") for job_id in exhausted] == [b"queued"] * len(exhausted)
    assert real_redis.zrange(KEYS.dlq_index, 0, -1) == [other.job_id.encode()]

    nothing = run(runner, "dlq", "replay", "--all", "--reason", "exhausted", "--yes", "--json")
    assert json.loads(nothing.stdout) == {"outcomes": {}, "replayed": 0}


def test_dlq_replay_all_asks_first(runner: CliRunner, seeded: dict[str, str], real_redis: redis.Redis) -> None:
    declined = run(runner, "dlq", "replay", "--all", input="n\n")

    assert declined.exit_code == 1
    assert real_redis.zcard(KEYS.dlq_index) == 3

    accepted = run(runner, "dlq", "replay", "--all", "--event", "nope.event", input="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert real_redis.zcard(KEYS.dlq_index) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["replay"],
        ["replay", "some-id", "--all"],
        ["replay", "some-id", "--reason", "auth"],
        ["purge"],
        ["purge", "x", "--all"],
    ],
)
def test_dlq_usage_errors_exit_2(runner: CliRunner, env: dict[str, str], args: list[str]) -> None:
    result = run(runner, "dlq", *args)

    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.stderr


def test_dlq_purge(runner: CliRunner, seeded: dict[str, str], real_redis: redis.Redis) -> None:
    by_id = run(runner, "dlq", "purge", seeded["nope.event"], "--json")
    assert json.loads(by_id.stdout) == {"purged": 1}

    too_young = run(runner, "dlq", "purge", "--older-than", "1h", "--yes")
    assert too_young.exit_code == 0
    assert "purged 0 dead letter(s)" in too_young.stdout

    assert run(runner, "dlq", "purge", "--older-than", "soon", "--yes").exit_code == 2
    assert run(runner, "dlq", "purge", "--all", input="n\n").exit_code == 1
    assert real_redis.zcard(KEYS.dlq_index) == 2

    everything = run(runner, "dlq", "purge", "--all", "--yes")
    assert everything.exit_code == 0
    assert "purged 2 dead letter(s)" in everything.stdout
    assert real_redis.zcard(KEYS.dlq_index) == real_redis.hlen(KEYS.dlq_entries) == 0


def test_dlq_stats(runner: CliRunner, seeded: dict[str, str]) -> None:
    as_json = run(runner, "dlq", "stats", "--json")
    human = run(runner, "dlq", "stats")

    stats = json.loads(as_json.stdout)
    assert stats["total"] == 3
    assert stats["by_reason"] == {"permanent": 3}
    assert stats["by_event"] == {"nope.event": 1, "nope.other": 1, "upsert": 1}
    assert "3 dead letter(s), oldest" in human.stdout
    assert "permanent" in human.stdout


# --- status ------------------------------------------------------------------------------------------------


def test_status_json(
    runner: CliRunner, seeded: dict[str, str], settings: Settings, real_redis: redis.Redis, dispatcher: Dispatcher
) -> None:
    # Given a queued job, a delayed one, a worker heartbeat and an open breaker
    dispatcher.trigger_event("order.created", "acct_1", {"n": 1})
    real_redis.zadd(KEYS.delayed, {"some-job": 1})
    now = time.time()
    real_redis.hset(KEYS.worker("w1@host"), mapping={"beat_at": now - 1, "canary_at": now - 5, "pid": 4242})
    real_redis.hset(KEYS.flow(settings.api_key_fingerprint), mapping={"state": "open", "open_until": str(1e15)})

    result = run(runner, "status", "--json")

    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["queue"] == "refold"
    assert status["queue_depth"] >= 1
    assert status["oldest_waiting_seconds"] is not None
    assert (status["delayed"], status["delayed_due"]) == (1, 1)
    assert status["dead_letters"] == 3
    assert status["dead_by_reason"] == {"permanent": 3}
    assert [(worker["hostname"], worker["pid"]) for worker in status["workers"]] == [("w1@host", 4242)]
    assert status["flow"]["breaker"] == "open"
    assert "circuit breaker is open: Refold is failing" in status["warnings"]


def test_status_for_people_and_watching(runner: CliRunner, env: dict[str, str], dispatcher: Dispatcher) -> None:
    dispatcher.trigger_event("order.created", "acct_1", {"n": 1})

    human = run(runner, "status")
    watched = run(runner, "status", "--watch", "--json", "--interval", "0.1", "--iterations", "2")
    live = run(runner, "status", "--watch", "--interval", "0.1", "--iterations", "2")

    assert human.exit_code == watched.exit_code == live.exit_code == 0, human.output + watched.output + live.output
    assert "queued" in human.stdout
    assert "no live workers" in human.stdout
    assert "1 job(s) queued but no live worker is beating" in human.stdout
    frames = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [frame["queue_depth"] for frame in frames] == [1, 1]
    assert "refold-dispatch status" in live.stdout


def test_status_without_an_api_key_says_unknown(
    runner: CliRunner, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, real_redis: redis.Redis
) -> None:
    monkeypatch.delenv("REFOLD_API_KEY")

    as_json = run(runner, "status", "--json")
    human = run(runner, "status")

    assert json.loads(as_json.stdout)["flow"] is None
    assert "unknown" in human.stdout


# --- failures at the boundary ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["dlq", "list"],
        ["dlq", "stats"],
        ["dlq", "replay", "x"],
        ["enqueue", "event", "order.created", "-a", "acct_1"],
    ],
)
def test_an_unreachable_redis_is_one_clear_line_and_exit_1(
    runner: CliRunner, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    # The key doubles as the URL's password here: it must not leak through the URL either.
    monkeypatch.setenv("REFOLD_REDIS_URL", f"redis://:{TEST_API_KEY}@127.0.0.1:{free_port()}/0")

    result = run(runner, *args)

    assert result.exit_code == 1, result.output
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("refold-dispatch: error: ")
    assert "Redis at 127.0.0.1:" in lines[0]
    assert "Connection refused" in lines[0]


def test_bad_settings_are_named_without_their_value(
    runner: CliRunner, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REFOLD_BASE_URL", "ftp://example.com")

    result = run(runner, "status")

    assert result.exit_code == 1
    assert "REFOLD_BASE_URL" in result.stderr
    assert result.stderr.count("\n") == 1


# --- token -------------------------------------------------------------------------------------------------


def test_token_is_minted_and_printed_with_its_expiry(
    runner: CliRunner, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, sandbox: Any
) -> None:
    monkeypatch.setenv("REFOLD_BASE_URL", sandbox.url)
    sandbox.admin.seed_accounts(["acct_1"])

    as_json = run(runner, "token", "acct_1", "--json")
    human = run(runner, "token", "acct_1")
    fresh = run(runner, "token", "acct_1", "--force-refresh", "--json")

    assert as_json.exit_code == human.exit_code == fresh.exit_code == 0, as_json.output + human.output
    minted = json.loads(as_json.stdout)
    assert minted["linked_account_id"] == "acct_1"
    assert minted["expires_in"] > 0
    assert minted["expires_at"].endswith("+00:00")
    assert human.stdout.strip() == minted["token"]  # the same valid token again, alone on stdout
    assert "expires" in human.stderr
    assert json.loads(fresh.stdout)["token"] != minted["token"]


def test_token_for_an_unknown_account_exits_1(
    runner: CliRunner, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, sandbox: Any
) -> None:
    monkeypatch.setenv("REFOLD_BASE_URL", sandbox.url)

    result = run(runner, "token", "acct_missing")

    assert result.exit_code == 1
    assert "status=400" in result.stderr


def test_token_without_a_key_exits_1(runner: CliRunner, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REFOLD_API_KEY")

    result = run(runner, "token", "acct_1")

    assert result.exit_code == 1
    assert "REFOLD_API_KEY is not set" in result.stderr
