"""The Redis Lua scripts behind every state change, loaded once and run by SHA.

State that must change together changes in one script, so a crash or a second worker can never see half of it.
Each script is ``lua/lib.lua`` (shared definitions, documented there; ``lua/lifecycle.lua`` and ``lua/flow.lua``
where used) followed by the script's own body; every
script takes the same seven leading arguments (:meth:`ScriptContext.common_args`) and its own after them. Script
bodies document their arguments and results at the top. ``run`` reloads a script after a Redis restart empties the
script cache, and ``run_many`` sends the script's text, so callers never see ``NOSCRIPT``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import redis
import redis.asyncio
from redis.exceptions import NoScriptError

from refold_dispatch.config import Settings

SCRIPT_NAMES = (
    "enqueue",
    "begin",
    "finish",
    "reschedule",
    "deadletter",
    "promote",
    "replay",
    "invalid",
    "acquire",
    "report",
)

ScriptArg = str | int | float
_T = TypeVar("_T")

# Script calls of a stream (run_many) sent ahead of the replies read: enough to keep Redis busy while the next
# call is built, few enough that a long stream holds little in memory and resends little after a dropped connection.
STREAM_WINDOW = 8


# Scripts that also need the flow-control functions (lua/flow.lua). Redis runs a script's whole text on every
# call, defining each local function anew, so the hot enqueue script carries only what it uses.
_FLOW_SCRIPTS = frozenset({"begin", "finish", "acquire", "report"})


@cache
def script_source(name: str) -> str:
    """The full text of one script: the shared library (with the lifecycle helpers and flow control where
    used), then its body."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no script named {name!r}; known: {', '.join(SCRIPT_NAMES)}")
    folder = resources.files("refold_dispatch") / "lua"
    parts = ["lib.lua"]
    if name != "enqueue":  # the web request's script: it never moves a queued job on
        parts.append("lifecycle.lua")
    if name in _FLOW_SCRIPTS:
        parts.append("flow.lua")
    parts.append(f"{name}.lua")
    return "\n".join((folder / part).read_text() for part in parts)


@dataclass(frozen=True)
class ScriptContext:
    """The settings every script needs, in the order of the seven leading arguments."""

    prefix: str
    ttl_seconds: int
    queue: str
    account_queue_share: int
    dlq_retention_ms: int
    dlq_max_entries: int

    @classmethod
    def from_settings(cls, settings: Settings) -> ScriptContext:
        return cls(
            prefix=settings.key_prefix,
            ttl_seconds=settings.idempotency_ttl_seconds,
            queue=settings.queue,
            account_queue_share=settings.account_queue_share,
            dlq_retention_ms=settings.dlq_retention_seconds * 1000,
            dlq_max_entries=settings.dlq_max_entries,
        )

    def common_args(self, now_ms: int | None = None) -> list[ScriptArg]:
        return [
            self.prefix,
            "" if now_ms is None else now_ms,
            self.ttl_seconds,
            self.queue,
            self.account_queue_share,
            self.dlq_retention_ms,
            self.dlq_max_entries,
        ]


class Scripts:
    """The scripts registered on a synchronous Redis client."""

    def __init__(self, client: redis.Redis, context: ScriptContext) -> None:
        self.client = client
        self.context = context
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}

    def run(self, name: str, args: Sequence[ScriptArg], *, now_ms: int | None = None) -> Any:
        """Run one script once (EVALSHA) and return its reply; an error reply raises.

        On a connection taken from the client's pool, as redis-py's ``Script`` would, minus its per-command
        layers (every enqueue and every delivery step runs this: it saves about 10 µs a call). NOSCRIPT (a
        restarted or flushed Redis) loads the script and runs the call again: it had not run. A dropped
        connection retries per the client's retry policy, as any redis-py command would.
        """
        script = self._scripts[name]
        full_args = [*self.context.common_args(now_ms), *args]

        def call(connection: Any) -> Any:
            connection.send_command("EVALSHA", script.sha, 0, *full_args)
            try:
                return connection.read_response()
            except NoScriptError:
                script.sha = self.client.script_load(script.script)
                connection.send_command("EVALSHA", script.sha, 0, *full_args)
                return connection.read_response()

        return self._on_connection(call)

    def run_many(self, name: str, calls: Iterable[Sequence[ScriptArg]]) -> list[Any]:
        """Run one script once per argument list, streamed on one connection; the replies in order.

        Each call is written to the socket as soon as ``calls`` yields it, so building the next call (and, when
        ``calls`` is lazy, whatever it is built from) overlaps Redis running the one before; at most
        ``STREAM_WINDOW`` calls wait for their replies, so a long stream holds only that many calls' arguments.
        Every call carries the script's text (EVAL, not EVALSHA): a Redis that has forgotten its scripts (a
        restart, ``SCRIPT FLUSH``) still runs each call in the order sent, where NOSCRIPT would make some be
        sent again after later ones had run. An error reply is returned in its place, as the exception. If
        ``calls`` raises, the calls sent before are answered (the connection stays in step), then it is raised.
        A dropped connection sends the calls not yet answered again, per the client's retry policy: callers
        make every call safe to repeat.
        """
        script = self._scripts[name]
        common = self.context.common_args()
        replies: list[Any] = []
        unanswered: deque[list[ScriptArg]] = deque()
        pending = iter(calls)
        failed: list[Exception] = []  # what ``calls`` itself raised: not retried, raised once all is read

        def stream(connection: Any) -> list[Any]:
            def send(args: list[ScriptArg]) -> None:
                # No health check per send: redis-py's would PING and read one reply, which here is a script's.
                connection.send_command("EVAL", script.script, 0, *args, check_health=False)

            def read_oldest() -> None:
                replies.append(_reply(connection.read_response))
                unanswered.popleft()  # only once answered: a call whose reply was lost is sent again

            for args in unanswered:  # a retry: the calls not answered yet go again, in order
                send(args)
            while not failed and (call := _next_call(pending, failed)) is not None:
                args = [*common, *call]
                unanswered.append(args)
                send(args)
                if len(unanswered) >= STREAM_WINDOW:
                    read_oldest()
            while unanswered:
                read_oldest()
            return replies

        result: list[Any] = self._on_connection(stream)
        if failed:
            raise failed[0]
        return result

    def _on_connection(self, work: Callable[[Any], _T]) -> _T:
        """``work(connection)`` on a connection from the client's pool, done again per the client's retry policy
        when the connection drops. A connection whose replies may be left unread is closed, not pooled; one
        that read an error reply is in step and goes back."""
        pool = self.client.connection_pool
        connection: Any = pool.get_connection()  # redis-py's connection methods are untyped
        try:
            result: _T = connection.retry.call_with_retry(
                lambda: work(connection), lambda _error: connection.disconnect()
            )
            return result
        except redis.ResponseError:
            raise
        except BaseException:
            connection.disconnect()
            raise
        finally:
            pool.release(connection)


def _next_call(pending: Iterator[Sequence[ScriptArg]], failed: list[Exception]) -> Sequence[ScriptArg] | None:
    """The next call's arguments, or None at the end or when building them raised (kept in ``failed``): an
    error of the caller's iterator must neither be retried as a dropped connection nor leave replies unread."""
    try:
        return next(pending)
    except StopIteration:
        return None
    except Exception as exc:
        failed.append(exc)
        return None


def _reply(read: Any) -> Any:
    try:
        return read()
    except redis.ResponseError as exc:
        return exc


async def _async_reply(read: Any) -> Any:
    try:
        return await read()
    except redis.ResponseError as exc:
        return exc


class AsyncScripts:
    """The same scripts on an asyncio Redis client."""

    def __init__(self, client: redis.asyncio.Redis, context: ScriptContext) -> None:
        self.client = client
        self.context = context
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}

    async def run(self, name: str, args: Sequence[ScriptArg], *, now_ms: int | None = None) -> Any:
        """:meth:`Scripts.run` on asyncio."""
        script = self._scripts[name]
        full_args = [*self.context.common_args(now_ms), *args]

        async def call(connection: Any) -> Any:
            await connection.send_command("EVALSHA", script.sha, 0, *full_args)
            try:
                return await connection.read_response()
            except NoScriptError:
                script.sha = await self.client.script_load(script.script)
                await connection.send_command("EVALSHA", script.sha, 0, *full_args)
                return await connection.read_response()

        return await self._on_connection(call)

    async def run_many(self, name: str, calls: Iterable[Sequence[ScriptArg]]) -> list[Any]:
        """:meth:`Scripts.run_many` on asyncio."""
        script = self._scripts[name]
        common = self.context.common_args()
        replies: list[Any] = []
        unanswered: deque[list[ScriptArg]] = deque()
        pending: Iterator[Sequence[ScriptArg]] = iter(calls)
        failed: list[Exception] = []

        async def stream(connection: Any) -> list[Any]:
            async def send(args: list[ScriptArg]) -> None:
                await connection.send_command("EVAL", script.script, 0, *args, check_health=False)

            async def read_oldest() -> None:
                replies.append(await _async_reply(connection.read_response))
                unanswered.popleft()

            for args in unanswered:
                await send(args)
            while not failed and (call := _next_call(pending, failed)) is not None:
                args = [*common, *call]
                unanswered.append(args)
                await send(args)
                if len(unanswered) >= STREAM_WINDOW:
                    await read_oldest()
            while unanswered:
                await read_oldest()
            return replies

        result: list[Any] = await self._on_connection(stream)
        if failed:
            raise failed[0]
        return result

    async def _on_connection(self, work: Callable[[Any], Awaitable[_T]]) -> _T:
        """:meth:`Scripts._on_connection` on asyncio."""
        pool = self.client.connection_pool
        connection: Any = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            result: _T = await connection.retry.call_with_retry(
                lambda: work(connection), lambda _error: connection.disconnect()
            )
            return result
        except redis.ResponseError:
            raise
        except BaseException:
            await connection.disconnect()
            raise
        finally:
            await pool.release(connection)
