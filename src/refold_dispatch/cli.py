"""``refold-dispatch``: the one command line for operators and developers.

::

    refold-dispatch worker [celery worker options...]      exec a Celery worker with our defaults
    refold-dispatch enqueue event EVENT --account ID ...   enqueue a trigger-event job
    refold-dispatch enqueue account ID [--name] [--udf k=v]  enqueue an upsert-linked-account job
    refold-dispatch dlq list|show|replay|purge|stats       inspect and act on the dead-letter queue
    refold-dispatch status [--json] [--watch]              queue, delays, dead letters, workers, flow control
    refold-dispatch token ACCOUNT [--force-refresh]        mint a session token for a linked account
    refold-dispatch sandbox [--port 8787] [faults...]      serve the local Refold stand-in
    refold-dispatch dev [--demo] [--workers N]             Redis + sandbox + workers + Flower in one terminal

Output is for people by default (rich tables); ``--json`` gives scripts a stable shape. Errors are translated
here, at the one boundary (:class:`_ErrorBoundary`): our :class:`~refold_dispatch.errors.RefoldDispatchError`
tree and Redis errors become one line on stderr and exit code 1; bad input exits 2, as Click does for usage
errors. The API key is never printed: error text is passed through :func:`~refold_dispatch.logs.redact` as the
last line of defence.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import pydantic
import redis
import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.json import JSON
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from refold_dispatch.config import Settings
from refold_dispatch.dispatcher import Dispatcher, Receipt, redis_client_options, redis_location
from refold_dispatch.dlq import DeadLetter, DeadLetterFilter, DeadLetterQueue, describe_entry
from refold_dispatch.errors import ConfigurationError, RefoldDispatchError, ValidationError
from refold_dispatch.logs import redact
from refold_dispatch.monitor import Snapshot, take_snapshot

PROG = "refold-dispatch"
EXIT_RUNTIME = 1
EXIT_USAGE = 2
# Replaying more ids than this shows a progress bar; fewer finish before a bar would be worth drawing.
PROGRESS_THRESHOLD = 10
# `status --watch` redraws this often by default: fast enough to watch a backlog drain, cheap for Redis.
DEFAULT_WATCH_INTERVAL = 2.0
DEFAULT_DLQ_LIST_LIMIT = 50

_SECRET_META = "refold_dispatch.secret"  # noqa: S105 - the name of a context slot, not a secret
_REDIS_META = "refold_dispatch.redis"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
# Replay outcomes that mean "this id was not replayed and will not be": the command exits 1.
_REPLAY_FAILURES = frozenset({"not_found", "conflict", "invalid"})
_REPLAY_MEANING = {
    "replayed": "re-enqueued (same job id and idempotency key)",
    "delivered": "already delivered: not sent again, entry removed",
    "active": "the job is live again already",
    "conflict": "its idempotency key belongs to another live job",
    "not_found": "no dead letter with this id",
    "invalid": "no job to replay (an unreadable message)",
}


class CommandError(Exception):
    """A runtime failure the CLI reports as one line and an exit code (1 unless told otherwise)."""

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class _ErrorBoundary(TyperGroup):
    """The root command group: every subcommand runs inside :meth:`invoke`, so errors are translated once."""

    def invoke(self, ctx: Any) -> Any:  # typer's (vendored) click.Context
        try:
            return super().invoke(ctx)
        except ValidationError as exc:  # bad input, found before anything was stored or sent
            _fail(ctx, f"invalid input: {exc}", EXIT_USAGE)
        except CommandError as exc:
            _fail(ctx, str(exc), exc.exit_code)
        except RefoldDispatchError as exc:
            _fail(ctx, str(exc), EXIT_RUNTIME)
        except redis.RedisError as exc:
            where = ctx.meta.get(_REDIS_META, "the configured Redis")
            _fail(
                ctx,
                f"Redis at {where} failed: {type(exc).__name__}: {exc} (check REFOLD_REDIS_URL and that Redis is up)",
                EXIT_RUNTIME,
            )
        except httpx.HTTPError as exc:  # only the sandbox admin client raises these; RefoldClient translates its own
            _fail(ctx, f"HTTP request failed: {type(exc).__name__}: {exc}", EXIT_RUNTIME)
        except BrokenPipeError:
            raise  # output piped into `head`: typer exits quietly
        except OSError as exc:  # a log dir we cannot create, a port we cannot bind...
            _fail(ctx, f"{type(exc).__name__}: {exc}", EXIT_RUNTIME)
        except KeyboardInterrupt:
            _fail(ctx, "interrupted", 130)


def _fail(ctx: typer.Context, message: str, exit_code: int) -> NoReturn:
    secret = ctx.meta.get(_SECRET_META)
    typer.echo(f"{PROG}: error: {redact(message, secret)}", err=True)
    raise typer.Exit(exit_code)


app = typer.Typer(
    cls=_ErrorBoundary,
    name=PROG,
    help="Deliver events and linked-account data to Refold reliably (Celery + Redis), and operate the pipeline.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
enqueue_app = typer.Typer(help="Enqueue a job (validated before anything is stored).", no_args_is_help=True)
dlq_app = typer.Typer(help="Inspect, replay and purge dead letters.", no_args_is_help=True)
app.add_typer(enqueue_app, name="enqueue")
app.add_typer(dlq_app, name="dlq")

JsonFlag = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead of tables.")]


# --- settings, Redis, output -------------------------------------------------------------------------------


def load_settings(ctx: typer.Context) -> Settings:
    """Settings from the environment and ``.env``; a bad value becomes one clear line, without its value."""
    try:
        settings = Settings()
    except pydantic.ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False, include_input=False):
            field = str(error["loc"][0]) if error["loc"] else "settings"
            problems.append(f"REFOLD_{field.upper()}: {error['msg']}")
        raise ConfigurationError("invalid settings: " + "; ".join(problems)) from exc
    if settings.api_key is not None:
        ctx.meta[_SECRET_META] = settings.api_key.get_secret_value()
    return settings


def connect_redis(ctx: typer.Context, settings: Settings) -> redis.Redis:
    """A client with the web path's short timeouts, checked with PING so an outage is reported up front."""
    ctx.meta[_REDIS_META] = redis_location(settings.redis_url)
    client = redis.Redis.from_url(settings.redis_url, **redis_client_options(settings))
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        raise CommandError(
            f"cannot reach Redis at {redis_location(settings.redis_url)}: {type(exc).__name__}: {exc} "
            "(is it running? set REFOLD_REDIS_URL)"
        ) from exc
    return client


@contextmanager
def _redis_session(ctx: typer.Context, settings: Settings) -> Iterator[redis.Redis]:
    client = connect_redis(ctx, settings)
    try:
        yield client
    finally:
        client.close()


def _out() -> Console:
    # Built per call: rich binds to the sys.stdout of the moment, which a test runner swaps.
    return Console(highlight=False)


def _err() -> Console:
    return Console(stderr=True, highlight=False)


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def parse_duration(text: str) -> float:
    """Seconds in ``30m``, ``2h``, ``7d``, ``1h30m``, ``45s`` or ``2w``; ValueError otherwise."""
    compact = text.strip().lower().replace(" ", "")
    parts = _DURATION.findall(compact)
    if not compact or "".join(number + unit for number, unit in parts) != compact:
        raise ValueError(f"not a duration: {text!r} (use e.g. 30m, 2h, 7d)")
    return sum(float(number) * _UNIT_SECONDS[unit] for number, unit in parts)


def parse_since(text: str, *, now: float | None = None) -> float:
    """Epoch seconds for ``--since``: a duration ago (``2h``) or an ISO time (naive times are UTC)."""
    now = time.time() if now is None else now
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (30m, 2h, 7d) nor an ISO time (2026-07-01T12:00:00Z)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_age(seconds: float | None) -> str:
    """``42s``, ``3m 12s``, ``2h 5m``, ``4d 3h``: two units are plenty for a person."""
    if seconds is None:
        return "—"
    whole = int(max(seconds, 0))
    if whole < 60:
        return f"{max(seconds, 0):.0f}s" if seconds >= 1 else f"{max(seconds, 0):.1f}s"
    for unit, size, smaller, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if whole >= size:
            rest = (whole % size) // small_size
            return f"{whole // size}{unit} {rest}{smaller}" if rest else f"{whole // size}{unit}"
    return f"{whole}s"  # pragma: no cover - unreachable: every whole >= 60 matched above


def _ago(seconds: float | None) -> str:
    return "—" if seconds is None else f"{format_age(seconds)} ago"


def _read_json_object(value: str, option: str) -> dict[str, Any]:
    """``--payload`` as inline JSON, ``@path`` or ``@-`` (stdin); must be a JSON object."""
    if value.startswith("@"):
        source = value[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {source}: {exc.strerror or exc}", param_hint=option) from None
    else:
        text = value
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise typer.BadParameter(f"not valid JSON: {exc}", param_hint=option) from None
    if not isinstance(parsed, dict):
        raise typer.BadParameter(f"must be a JSON object, got {type(parsed).__name__}", param_hint=option)
    return parsed


def _parse_udf(pairs: Sequence[str]) -> dict[str, str]:
    udf: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"{pair!r} is not key=value", param_hint="--udf")
        if name in udf:
            raise typer.BadParameter(f"key {name!r} given twice", param_hint="--udf")
        udf[name] = value
    return udf


# --- worker ------------------------------------------------------------------------------------------------


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    epilog="Every other option goes to `celery worker` unchanged, e.g. --concurrency 8 or -n worker1@%h.",
)
def worker(ctx: typer.Context) -> None:
    """Run a Celery worker for our queue (exec: signals go straight to Celery)."""
    from refold_dispatch.devstack import celery_worker_argv

    settings = load_settings(ctx)
    argv = celery_worker_argv(settings, ctx.args)
    typer.echo(f"{PROG}: exec {' '.join(argv[1:])}", err=True)
    sys.stderr.flush()
    sys.stdout.flush()
    os.execvp(argv[0], argv)  # noqa: S606 - argv is ours plus the operator's own options, no shell involved


# --- enqueue -----------------------------------------------------------------------------------------------


def _show_receipt(receipt: Receipt, what: str, as_json: bool) -> None:
    if as_json:
        _print_json(
            {"job_id": receipt.job_id, "idempotency_key": receipt.idempotency_key, "duplicate": receipt.duplicate}
        )
        return
    console = _out()
    if receipt.duplicate:
        console.print(f"[yellow]already enqueued[/] (same idempotency key): {what}")
    else:
        console.print(f"[green]enqueued[/] {what}")
    grid = Table.grid(padding=(0, 2))
    grid.add_row("job id", receipt.job_id)
    grid.add_row("idempotency key", receipt.idempotency_key)
    grid.add_row("duplicate", "yes" if receipt.duplicate else "no")
    console.print(grid, soft_wrap=True)


@enqueue_app.command("event")
def enqueue_event(
    ctx: typer.Context,
    *,
    event: Annotated[str, typer.Argument(help="Event name, as defined in the Refold dashboard.")],
    account: Annotated[str, typer.Option("--account", "-a", help="Linked account id.", show_default=False)],
    payload: Annotated[
        str | None, typer.Option("--payload", "-p", help="JSON object, or @file (@- reads stdin).")
    ] = None,
    key: Annotated[str | None, typer.Option("--key", "-k", help="Idempotency key (default: a new one).")] = None,
    config_id: Annotated[str | None, typer.Option("--config-id", help="Refold config_id header.")] = None,
    slug: Annotated[str | None, typer.Option("--slug", help="Limit to one app (slug header).")] = None,
    instance_tag: Annotated[str | None, typer.Option("--instance-tag", help="Label for the execution.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Enqueue a trigger-event job for one linked account."""
    data = _read_json_object(payload, "--payload") if payload is not None else None
    settings = load_settings(ctx)
    with Dispatcher(settings) as dispatcher:
        receipt = dispatcher.trigger_event(
            event, account, data, idempotency_key=key, config_id=config_id, slug=slug, instance_tag=instance_tag
        )
    _show_receipt(receipt, f"event {event} for account {account}", as_json)


@enqueue_app.command("account")
def enqueue_account(
    ctx: typer.Context,
    *,
    account: Annotated[str, typer.Argument(help="Linked account id (created if missing, else updated).")],
    name: Annotated[str | None, typer.Option("--name", help="Display name.")] = None,
    udf: Annotated[list[str] | None, typer.Option("--udf", help="User-defined field key=value (repeatable).")] = None,
    key: Annotated[str | None, typer.Option("--key", "-k", help="Idempotency key (default: a new one).")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Enqueue an upsert-linked-account job (create or update)."""
    fields = _parse_udf(udf) if udf else None
    settings = load_settings(ctx)
    with Dispatcher(settings) as dispatcher:
        receipt = dispatcher.upsert_linked_account(account, name=name, udf=fields, idempotency_key=key)
    _show_receipt(receipt, f"upsert of account {account}", as_json)


# --- dead letters ------------------------------------------------------------------------------------------


def _filter(
    reason: str | None, event: str | None, account: str | None, since: str | None, before: float | None = None
) -> DeadLetterFilter:
    return DeadLetterFilter(
        reason=reason,
        event=event,
        account=account,
        since=None if since is None else parse_since(since),
        before=before,
    )


def _last_error(entry: DeadLetter) -> str:
    error = entry.last_error or {}
    parts = [str(error[name]) for name in ("status_code", "error_code") if error.get(name) is not None]
    message = error.get("message") or entry.detail
    if message:
        parts.append(str(message)[:80])
    return " ".join(parts) or "—"


ReasonOption = Annotated[str | None, typer.Option("--reason", help="permanent, auth, exhausted, expired, ...")]
EventOption = Annotated[str | None, typer.Option("--event", help="Only this event name.")]
AccountOption = Annotated[str | None, typer.Option("--account", help="Only this linked account.")]
SinceOption = Annotated[str | None, typer.Option("--since", help="Dead within a duration (2h, 7d) or since ISO time.")]


@dlq_app.command("list")
def dlq_list(
    ctx: typer.Context,
    *,
    reason: ReasonOption = None,
    event: EventOption = None,
    account: AccountOption = None,
    since: SinceOption = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="At most this many, newest first.")] = (
        DEFAULT_DLQ_LIST_LIMIT
    ),
    as_json: JsonFlag = False,
) -> None:
    """List dead letters, newest first."""
    where = _filter(reason, event, account, since)
    settings = load_settings(ctx)
    with _redis_session(ctx, settings) as client:
        dlq = DeadLetterQueue(settings, client)
        entries = dlq.list(where, limit=limit)
        total = dlq.count()
    if as_json:
        _print_json([describe_entry(entry) for entry in entries])
        return
    console = _out()
    if not entries:
        console.print("no dead letters match" if total else "the dead-letter queue is empty")
        return
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("id", no_wrap=True)  # whole, so it can be copied into `dlq show`
    for column in ("dead", "reason", "job", "account", "tries", "last error"):
        table.add_column(column, overflow="fold")
    now = time.time()
    for entry in entries:
        table.add_row(
            entry.id,
            _ago(now - entry.dead_at),
            entry.reason,
            entry.event or entry.kind or "?",
            entry.linked_account_id or "—",
            str(entry.attempts),
            _last_error(entry),
        )
    console.print(table)
    console.print(f"{len(entries)} shown, {total} in the dead-letter queue")


@dlq_app.command("show")
def dlq_show(
    ctx: typer.Context,
    dead_id: Annotated[str, typer.Argument(metavar="ID", help="Dead-letter id (the job id).")],
    as_json: JsonFlag = False,
) -> None:
    """Show one dead letter with its evidence (credential values masked)."""
    settings = load_settings(ctx)
    with _redis_session(ctx, settings) as client:
        entry = DeadLetterQueue(settings, client).get(dead_id)
    shown = describe_entry(entry)
    if as_json:
        _print_json(shown)
        return
    console = _out()
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    grid.add_row("id", entry.id)
    grid.add_row("reason", f"{entry.reason}: {entry.detail}" if entry.detail else entry.reason)
    grid.add_row("job", f"{entry.kind or '?'} {entry.event or ''}".strip())
    grid.add_row("account", entry.linked_account_id or "—")
    grid.add_row("idempotency key", entry.idempotency_key or "—")
    grid.add_row("attempts", str(entry.attempts))
    if entry.created_at_ms:
        grid.add_row("created", _iso(entry.created_at_ms / 1000))
    grid.add_row("dead at", _iso(entry.dead_at))
    grid.add_row("last error", _last_error(entry))
    console.print(Panel(grid, title=f"dead letter {entry.id}", expand=False))
    if entry.history:
        history = Table("#", "outcome", "status", "latency", "detail", title="attempts", box=box.SIMPLE_HEAD)
        for number, attempt in enumerate(entry.history, 1):
            history.add_row(
                str(attempt.get("attempt", number)),
                str(attempt.get("outcome", "?")),
                str(attempt.get("status") or "—"),
                f"{attempt['latency_ms']:.0f} ms" if isinstance(attempt.get("latency_ms"), int | float) else "—",
                " ".join(str(attempt[name]) for name in ("error_code", "message") if attempt.get(name))[:80],
            )
        console.print(history)
    if shown.get("job") is not None:
        console.print(Panel(JSON.from_data(shown["job"]), title="job (as stored)", expand=False))
    elif entry.raw:
        console.print(Panel(entry.raw, title="raw message (truncated)", expand=False))


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _require_one(ctx: typer.Context, choices: dict[str, bool]) -> None:
    given = [name for name, present in choices.items() if present]
    if len(given) != 1:
        detail = "none given" if not given else f"got {' and '.join(given)}"
        raise typer.BadParameter(f"use exactly one ({detail})", ctx=ctx, param_hint=" | ".join(choices))


@dlq_app.command("replay")
def dlq_replay(
    ctx: typer.Context,
    *,
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", help="Dead-letter ids.")] = None,
    replay_all: Annotated[bool, typer.Option("--all", help="Replay every entry matching the filters.")] = False,
    reason: ReasonOption = None,
    event: EventOption = None,
    account: AccountOption = None,
    since: SinceOption = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before replaying --all.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Re-enqueue dead letters with their original job id and key. Exits 1 if any id could not be replayed."""
    _require_one(ctx, {"ID...": bool(ids), "--all": replay_all})
    if not replay_all and any(value is not None for value in (reason, event, account, since)):
        raise typer.BadParameter(
            "they select entries for --all only", ctx=ctx, param_hint="--reason/--event/--account/--since"
        )
    settings = load_settings(ctx)
    with _redis_session(ctx, settings) as client:
        dlq = DeadLetterQueue(settings, client)
        if replay_all:
            # Oldest first: an upsert that died before its events is replayed before them.
            targets = [entry.id for entry in dlq.iter(_filter(reason, event, account, since), newest_first=False)]
            if not targets:
                if as_json:
                    _print_json({"outcomes": {}, "replayed": 0})
                else:
                    _out().print("nothing to replay")
                return
            if not yes:
                typer.confirm(f"Replay {len(targets)} dead letter(s)?", abort=True)
        else:
            targets = list(dict.fromkeys(ids or []))
        outcomes = _replay_with_progress(dlq, targets, show=not as_json)
    replayed = sum(1 for outcome in outcomes.values() if outcome == "replayed")
    if as_json:
        _print_json({"outcomes": outcomes, "replayed": replayed})
    else:
        table = Table("id", "outcome", "meaning", box=box.SIMPLE_HEAD)
        for dead_id, outcome in outcomes.items():
            style = "red" if outcome in _REPLAY_FAILURES else "green" if outcome == "replayed" else "yellow"
            table.add_row(dead_id, f"[{style}]{outcome}[/]", _REPLAY_MEANING.get(outcome, ""))
        console = _out()
        console.print(table)
        console.print(f"{replayed} of {len(outcomes)} replayed")
    if any(outcome in _REPLAY_FAILURES for outcome in outcomes.values()):
        raise typer.Exit(EXIT_RUNTIME)


def _replay_with_progress(dlq: DeadLetterQueue, ids: Sequence[str], *, show: bool) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    if len(ids) <= PROGRESS_THRESHOLD:
        for dead_id in ids:
            outcomes.update(dlq.replay([dead_id]).outcomes)
        return outcomes
    progress = Progress(
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=_err(),
        transient=True,
        disable=not show,
    )
    with progress:
        task = progress.add_task("replay", total=len(ids))
        for dead_id in ids:
            outcomes.update(dlq.replay([dead_id]).outcomes)
            progress.advance(task)
    return outcomes


@dlq_app.command("purge")
def dlq_purge(
    ctx: typer.Context,
    *,
    ids: Annotated[list[str] | None, typer.Argument(metavar="[ID]...", help="Dead-letter ids.")] = None,
    older_than: Annotated[
        str | None, typer.Option("--older-than", help="Entries dead longer ago than this (30m, 2h, 7d).")
    ] = None,
    purge_all: Annotated[bool, typer.Option("--all", help="Every entry.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask before purging many.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete dead letters for good: the given ids, those older than a duration, or all."""
    _require_one(ctx, {"ID...": bool(ids), "--older-than": older_than is not None, "--all": purge_all})
    before: float | None = None
    if older_than is not None:
        try:
            before = time.time() - parse_duration(older_than)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--older-than") from None
    settings = load_settings(ctx)
    with _redis_session(ctx, settings) as client:
        dlq = DeadLetterQueue(settings, client)
        if ids:
            removed = dlq.purge(list(dict.fromkeys(ids)))
        else:
            where = DeadLetterFilter(before=before)
            targets = [entry.id for entry in dlq.iter(where)]
            if targets and not yes:
                typer.confirm(f"Delete {len(targets)} dead letter(s) for good?", abort=True)
            removed = dlq.purge(targets)
    if as_json:
        _print_json({"purged": removed})
    else:
        _out().print(f"purged {removed} dead letter(s)")


@dlq_app.command("stats")
def dlq_stats(ctx: typer.Context, as_json: JsonFlag = False) -> None:
    """Counts by reason and by event, and the oldest entry's age."""
    settings = load_settings(ctx)
    with _redis_session(ctx, settings) as client:
        stats = DeadLetterQueue(settings, client).stats()
    if as_json:
        _print_json(stats)
        return
    console = _out()
    oldest = stats["oldest_dead_at"]
    console.print(
        f"{stats['total']} dead letter(s)" + (f", oldest {format_age(time.time() - oldest)} ago" if oldest else "")
    )
    for title, counts in (("by reason", stats["by_reason"]), ("by event", stats["by_event"])):
        if counts:
            table = Table(title.removeprefix("by "), "count", title=title, box=box.SIMPLE_HEAD, title_justify="left")
            for name, count in sorted(counts.items(), key=lambda item: -item[1]):
                table.add_row(name, str(count))
            console.print(table)


# --- status ------------------------------------------------------------------------------------------------


def render_snapshot(snapshot: Snapshot) -> RenderableType:
    """The status screen: an overview, flow control, workers, then warnings in plain words."""
    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row("redis", f"{snapshot.redis} (queue {snapshot.queue!r})")
    overview.add_row("queued", str(snapshot.queue_depth))
    overview.add_row("oldest waiting", format_age(snapshot.oldest_waiting_seconds))
    overview.add_row("delayed", f"{snapshot.delayed} ({snapshot.delayed_due} due now)")
    overview.add_row("accounts with a backlog", str(snapshot.backlog_accounts))
    reasons = ", ".join(f"{reason} {count}" for reason, count in snapshot.dead_by_reason.items())
    sample = " (newest sampled)" if snapshot.dead_by_reason_partial else ""
    overview.add_row("dead letters", f"{snapshot.dead_letters}" + (f": {reasons}{sample}" if reasons else ""))
    overview.add_row("refold environment", snapshot.environment)
    flow = snapshot.flow
    if flow is None:
        overview.add_row("circuit breaker", "unknown (no REFOLD_API_KEY: flow state is kept per key)")
    else:
        breaker = flow.breaker.replace("_", "-")
        if flow.open_for_seconds:
            breaker += f" for {format_age(flow.open_for_seconds)}"
        overview.add_row("circuit breaker", f"[{'green' if flow.breaker == 'closed' else 'red'}]{breaker}[/]")
        overview.add_row("paused", f"for {format_age(flow.paused_for_seconds)}" if flow.paused_for_seconds else "no")
        overview.add_row("rate factor", f"{flow.rate_factor:.2f} of the configured rate")
    parts: list[RenderableType] = [Panel(overview, title="refold-dispatch status", expand=False)]

    workers = Table("worker", "pid", "last beat", "canary", "state", title="workers", box=box.SIMPLE_HEAD)
    for entry in snapshot.workers:
        state = "[red]stalled[/]" if entry.stalled else "[yellow]late[/]" if entry.late else "[green]ok[/]"
        workers.add_row(
            entry.hostname,
            str(entry.pid or "—"),
            _ago(entry.beat_age_seconds),
            _ago(entry.canary_age_seconds),
            state,
        )
    parts.append(workers if snapshot.workers else Text("no live workers", style="yellow"))
    parts.extend(Text(f"! {warning}", style="yellow") for warning in snapshot.warnings)
    return Group(*parts)


@app.command()
def status(
    ctx: typer.Context,
    as_json: JsonFlag = False,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until Ctrl-C.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between refreshes with --watch.")
    ] = DEFAULT_WATCH_INTERVAL,
    iterations: Annotated[int, typer.Option("--iterations", hidden=True, min=0, help="Stop after N (tests).")] = 0,
) -> None:
    """Queue depth, delays, dead letters, oldest waiting job, workers and flow control."""
    settings = load_settings(ctx)
    with _redis_session(ctx, settings) as client:
        if not watch:
            snapshot = take_snapshot(settings, client)
            if as_json:
                _print_json(snapshot.to_json())
            else:
                _out().print(render_snapshot(snapshot))
            return
        _watch(settings, client, as_json=as_json, interval=interval, iterations=iterations)


def _watch(settings: Settings, client: redis.Redis, *, as_json: bool, interval: float, iterations: int) -> None:
    def frame() -> tuple[RenderableType, Snapshot | None]:
        # A Redis blip while watching is shown, not fatal: the operator is likely watching it recover.
        try:
            snapshot = take_snapshot(settings, client)
        except redis.RedisError as exc:
            return Text(f"Redis at {redis_location(settings.redis_url)} unreachable: {exc}", style="red"), None
        return render_snapshot(snapshot), snapshot

    count = 0
    try:
        if as_json:
            while True:
                _, snapshot = frame()
                payload = snapshot.to_json() if snapshot else {"error": "redis unreachable"}
                typer.echo(json.dumps(payload, sort_keys=True))
                count += 1
                if iterations and count >= iterations:
                    return
                time.sleep(interval)
        with Live(frame()[0], console=_out(), auto_refresh=False) as live:
            while True:
                count += 1
                if iterations and count >= iterations:
                    return
                time.sleep(interval)
                live.update(frame()[0], refresh=True)
    except KeyboardInterrupt:
        return  # Ctrl-C is how a watch ends: not an error


# --- token -------------------------------------------------------------------------------------------------


@app.command()
def token(
    ctx: typer.Context,
    account: Annotated[str, typer.Argument(help="Linked account id (it must exist on Refold).")],
    force_refresh: Annotated[bool, typer.Option("--force-refresh", help="Mint a new token even if one is valid.")] = (
        False
    ),
    as_json: JsonFlag = False,
) -> None:
    """Mint a session token for a linked account's frontend and print it (it is a credential: handle with care)."""
    from refold_dispatch.client import RefoldClient

    settings = load_settings(ctx)
    with RefoldClient(settings) as client:
        minted = client.session_token(account, force_refresh=force_refresh)
    expires_at = minted.expires_at
    if as_json:
        _print_json(
            {
                "linked_account_id": account,
                "token": minted.token_value(),
                "expires_in": minted.expires_in,
                "expires_at": expires_at.isoformat() if expires_at else None,
            }
        )
        return
    # The token alone on a line, unwrapped, so it can be copied; the rest goes to stderr.
    typer.echo(minted.token_value())
    if expires_at is not None:
        left = (expires_at - datetime.now(UTC)).total_seconds()
        typer.echo(f"expires {expires_at:%Y-%m-%d %H:%M:%S} UTC (in {format_age(left)})", err=True)
    else:
        typer.echo("Refold did not say when it expires", err=True)


# --- sandbox -----------------------------------------------------------------------------------------------


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []},
    add_help_option=False,
)
def sandbox(ctx: typer.Context) -> None:
    """Serve the local Refold stand-in (options: --host, --port 8787, --api-key, faults; see --help)."""
    from refold_dispatch.sandbox.__main__ import build_parser, config_from_args
    from refold_dispatch.sandbox.server import run_sandbox

    # The sandbox's own parser, so its flags (and their help) are defined once.
    parser = build_parser()
    parser.prog = f"{PROG} sandbox"
    args = parser.parse_args(ctx.args)
    config = config_from_args(args)
    typer.echo(
        f"Refold sandbox on http://{args.host}:{args.port} ({config.environment} environment); "
        "admin at /_sandbox/stats",
        err=True,
    )
    run_sandbox(config, args.host, args.port)


# --- dev ---------------------------------------------------------------------------------------------------


@app.command()
def dev(
    ctx: typer.Context,
    *,
    demo: Annotated[bool, typer.Option("--demo", help="Enqueue a realistic mix of jobs and watch them settle.")] = (
        False
    ),
    exit_when_done: Annotated[
        bool, typer.Option("--exit-when-done", help="With --demo: stop when settled; exit 0 only if as expected.")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=32, help="Worker processes to start.")] = 2,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Pool size of each worker.")] = 2,
    redis_url: Annotated[
        str | None,
        typer.Option("--redis-url", help="Use this Redis (it must answer); default: settings, else private."),
    ] = None,
    no_flower: Annotated[bool, typer.Option("--no-flower", help="Do not start Flower.")] = False,
    flower_port: Annotated[int, typer.Option("--flower-port", min=0, max=65535)] = 5555,
    sandbox_port: Annotated[int, typer.Option("--sandbox-port", min=0, max=65535, help="0 picks a free port.")] = 8787,
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="With --demo: give up after this many s.")] = 90,
    log_dir: Annotated[Path, typer.Option("--log-dir", help="Where child process logs go.")] = Path(".dev-stack/logs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the demo summary as JSON on stdout.")] = False,
) -> None:
    """Start Redis, the sandbox, workers and Flower in one terminal; Ctrl-C stops them all."""
    from refold_dispatch.devstack import DevOptions, run_dev

    if exit_when_done and not demo:
        raise typer.BadParameter("it needs --demo", ctx=ctx, param_hint="--exit-when-done")
    options = DevOptions(
        workers=workers,
        concurrency=concurrency,
        redis_url=redis_url,
        flower=not no_flower,
        flower_port=flower_port,
        sandbox_port=sandbox_port,
        demo=demo,
        exit_when_done=exit_when_done,
        demo_timeout=timeout,
        log_dir=log_dir,
        json_summary=as_json,
    )
    code = run_dev(options, load_settings(ctx), ui=_err(), out=_out())
    if code:
        raise typer.Exit(code)


def main() -> None:
    """The ``refold-dispatch`` entry point."""
    app(prog_name=PROG)


if __name__ == "__main__":
    main()
