"""A small client for the sandbox's ``/_sandbox`` admin endpoints, for tests, demos and benchmarks."""

from __future__ import annotations

from collections.abc import Iterable
from types import TracebackType
from typing import Any, Self

import httpx

# Admin calls are local and tiny; a generous timeout still fails a wedged sandbox within seconds.
DEFAULT_ADMIN_TIMEOUT = 10.0


class SandboxAdmin:
    """Synchronous admin client. Close it (or use it as a context manager) when done."""

    def __init__(self, base_url: str, *, timeout: float = DEFAULT_ADMIN_TIMEOUT) -> None:
        self._client = httpx.Client(base_url=f"{base_url.rstrip('/')}/_sandbox", timeout=timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _json(self, response: httpx.Response) -> Any:
        response.raise_for_status()
        return response.json()

    def health(self) -> bool:
        """Whether the sandbox answers ``{"ok": true}``."""
        return bool(self._json(self._client.get("/health")).get("ok"))

    def requests(
        self,
        *,
        since_seq: int = 0,
        path: str | None = None,
        outcome: str | None = None,
        linked_account_id: str | None = None,
        idempotency_key: str | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Recorded ``/api`` requests after ``since_seq``, oldest first, filtered."""
        params: dict[str, str | int] = {"since_seq": since_seq}
        filters = {
            "path": path,
            "outcome": outcome,
            "linked_account_id": linked_account_id,
            "idempotency_key": idempotency_key,
            "limit": limit,
        }
        params.update({key: value for key, value in filters.items() if value is not None})
        records: list[dict[str, Any]] = self._json(self._client.get("/requests", params=params))
        return records

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._json(self._client.get("/stats"))
        return stats

    def faults(self) -> dict[str, Any]:
        faults: dict[str, Any] = self._json(self._client.get("/faults"))
        return faults

    def set_faults(self, **changes: Any) -> dict[str, Any]:
        """Change some fault settings (``error_rate=0.2``, ``hang_rate=0``...); returns them all."""
        faults: dict[str, Any] = self._json(self._client.put("/faults", json=changes))
        return faults

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = self._json(self._client.get("/config"))
        return config

    def set_config(self, **changes: Any) -> dict[str, Any]:
        """Change runtime settings (``rate_limit``, ``rate_burst``, ``known_events``...); returns them all."""
        if isinstance(changes.get("known_events"), (set, frozenset, tuple)):
            changes["known_events"] = sorted(changes["known_events"])
        config: dict[str, Any] = self._json(self._client.put("/config", json=changes))
        return config

    def seed_accounts(self, ids: Iterable[str]) -> int:
        """Create linked accounts; returns how many were new."""
        created: int = self._json(self._client.post("/accounts", json={"ids": list(ids)}))["created"]
        return created

    def reset(self, *, restore_config: bool = False) -> None:
        """Clear records, accounts, tokens and limiter history (and the config too, if asked)."""
        self._json(self._client.post("/reset", json={"restore_config": restore_config}))
