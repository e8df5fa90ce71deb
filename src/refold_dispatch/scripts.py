"""The Redis Lua scripts behind every state change, loaded once and run by SHA.

State that must change together changes in one script, so a crash or a second worker can never see half of it.
Each script is ``lua/lib.lua`` (shared definitions, documented there) followed by the script's own body; every
script takes the same seven leading arguments (:meth:`ScriptContext.common_args`) and its own after them. Script
bodies document their arguments and results at the top. redis-py's ``Script`` reloads a script after a Redis
restart empties the script cache, so callers never see ``NOSCRIPT``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis
import redis.asyncio

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


# Scripts that also need the flow-control functions (lua/flow.lua). Redis runs a script's whole text on every
# call, defining each local function anew, so the hot enqueue script carries only what it uses.
_FLOW_SCRIPTS = frozenset({"begin", "finish", "acquire", "report"})


@cache
def script_source(name: str) -> str:
    """The full text of one script: the shared library (and flow control where used), then its body."""
    if name not in SCRIPT_NAMES:
        raise KeyError(f"no script named {name!r}; known: {', '.join(SCRIPT_NAMES)}")
    folder = resources.files("refold_dispatch") / "lua"
    parts = ["lib.lua", "flow.lua", f"{name}.lua"] if name in _FLOW_SCRIPTS else ["lib.lua", f"{name}.lua"]
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

    def run(
        self,
        name: str,
        args: Sequence[ScriptArg],
        *,
        now_ms: int | None = None,
        pipeline: redis.client.Pipeline | None = None,
    ) -> Any:
        return self._scripts[name](keys=[], args=[*self.context.common_args(now_ms), *args], client=pipeline)


class AsyncScripts:
    """The same scripts on an asyncio Redis client."""

    def __init__(self, client: redis.asyncio.Redis, context: ScriptContext) -> None:
        self.client = client
        self.context = context
        self._scripts = {name: client.register_script(script_source(name)) for name in SCRIPT_NAMES}

    async def run(
        self,
        name: str,
        args: Sequence[ScriptArg],
        *,
        now_ms: int | None = None,
        pipeline: redis.asyncio.client.Pipeline | None = None,
    ) -> Any:
        return await self._scripts[name](keys=[], args=[*self.context.common_args(now_ms), *args], client=pipeline)
