"""The live sandbox: its current configuration and every piece of state, in one object.

One :class:`SandboxRuntime` per app. Configuration changes arrive whole (validated into a new frozen
:class:`SandboxConfig`) and are swapped in with one assignment, so a request sees either the old or the new
configuration, never a mix. Everything runs on the server's single event-loop thread: no locks.
"""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from refold_dispatch.sandbox.config import SandboxConfig
from refold_dispatch.sandbox.faults import FaultConfig, FaultInjector
from refold_dispatch.sandbox.ratelimit import Gcra
from refold_dispatch.sandbox.recorder import Recorder
from refold_dispatch.sandbox.state import AccountStore, TokenStore

# The settings the admin endpoint may change while the server runs. The key and the recorder's bound are
# fixed for the life of the server: changing them mid-run would make records incomparable.
RUNTIME_SETTINGS = frozenset(
    {
        "rate_limit",
        "rate_burst",
        "rate_limit_enabled",
        "retry_after_header",
        "require_known_accounts",
        "known_events",
        "token_ttl_seconds",
        "refresh_token_ttl_seconds",
    }
)


class SandboxRuntime:
    """Configuration plus state: accounts, tokens, recorded requests, limiter and fault injector."""

    def __init__(
        self,
        config: SandboxConfig,
        *,
        clock: Callable[[], float] = time.time,
        monotonic_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.initial_config = config
        self.config = config
        self.clock = clock
        self.api_key = config.api_key.encode()
        self.accounts = AccountStore()
        self.tokens = TokenStore()
        self.recorder = Recorder(config.max_recorded)
        self.limiter = Gcra(config.rate_limit, config.rate_burst, clock=monotonic_ns)
        self.faults = FaultInjector(config.faults)
        # A per-process prefix keeps ids from two sandbox runs apart in logs; the counter keeps minting cheap.
        self._request_id_prefix = f"req_{secrets.token_hex(4)}"
        self._request_ids = itertools.count(1)

    def next_request_id(self) -> str:
        return f"{self._request_id_prefix}{next(self._request_ids):010d}"

    def update_config(self, changes: Mapping[str, Any]) -> SandboxConfig:
        """Validate and apply runtime setting changes; raises ``ValueError`` (pydantic's) when invalid."""
        unknown = set(changes) - RUNTIME_SETTINGS
        if unknown:
            raise ValueError(f"not changeable at runtime: {', '.join(sorted(unknown))}")
        current = self.config
        updated = SandboxConfig.model_validate({**current.model_dump(), **changes})
        if (updated.rate_limit, updated.rate_burst) != (current.rate_limit, current.rate_burst):
            self.limiter.configure(updated.rate_limit, updated.rate_burst)
        self.config = updated
        return updated

    def update_faults(self, changes: Mapping[str, Any]) -> FaultConfig:
        """Validate and apply fault changes (fields not given keep their value); a given seed reseeds."""
        updated = FaultConfig.model_validate({**self.config.faults.model_dump(), **changes})
        self.config = self.config.model_copy(update={"faults": updated})
        self.faults.replace(updated, reseed="seed" in changes)
        return updated

    def seed_accounts(self, account_ids: Iterable[str]) -> int:
        return self.accounts.seed(account_ids, self.clock())

    def reset(self, *, restore_config: bool = False) -> None:
        """Forget records, accounts, tokens and limiter history; optionally go back to the initial config."""
        self.recorder.clear()
        self.accounts.clear()
        self.tokens.clear()
        if restore_config:
            self.config = self.initial_config
            self.limiter.configure(self.config.rate_limit, self.config.rate_burst)
            self.faults.replace(self.config.faults, reseed=True)
        else:
            self.limiter.reset()
