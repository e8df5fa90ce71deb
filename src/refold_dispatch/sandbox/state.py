"""The sandbox's Refold-side data: linked accounts and session tokens, in memory.

Plain dictionaries touched only from the server's event-loop thread, so no locks. Times are epoch seconds from
the caller (the runtime's clock), which keeps this module free of hidden time and easy to test.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


def iso_timestamp(epoch: float) -> str:
    """Epoch seconds as Refold (MongoDB via JSON) writes dates: ``2026-07-01T12:00:00.000Z``."""
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Account:
    """One linked account. ``udf`` keeps insertion order, as Refold's array does."""

    object_id: str
    account_id: str
    name: str
    udf: dict[str, str]
    created_at: float
    updated_at: float

    def to_json(self, org_id: str, environment: str) -> dict[str, Any]:
        """The account as Refold returns it (``integrations`` omitted: the sandbox has none)."""
        return {
            "_id": self.object_id,
            "associated_org": org_id,
            "account_id": self.account_id,
            "environment": environment,
            "name": self.name,
            "udf": [{"key_name": key, "key_value": value} for key, value in self.udf.items()],
            "createdAt": iso_timestamp(self.created_at),
            "updatedAt": iso_timestamp(self.updated_at),
        }


class AccountStore:
    """Linked accounts by id, in creation order (which is the order listings page through)."""

    def __init__(self) -> None:
        self._accounts: dict[str, Account] = {}
        # Ids shaped like MongoDB ObjectIds (24 hex digits): clients that validate the shape keep working.
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._accounts)

    def __contains__(self, account_id: object) -> bool:
        return account_id in self._accounts

    def get(self, account_id: str) -> Account | None:
        return self._accounts.get(account_id)

    def _new(self, account_id: str, name: str | None, udf: Mapping[str, str] | None, now: float) -> Account:
        account = Account(
            object_id=f"{int(now) & 0xFFFFFFFF:08x}{next(self._ids):016x}",
            account_id=account_id,
            name=account_id if name is None else name,
            udf=dict(udf or {}),
            created_at=now,
            updated_at=now,
        )
        self._accounts[account_id] = account
        return account

    def upsert(
        self, account_id: str, name: str | None, udf: Mapping[str, str] | None, now: float
    ) -> tuple[Account, bool]:
        """Create or update; returns the account and whether it was created. A given ``udf`` replaces the
        account's whole set (a PUT), so the last upsert applied is exactly what the account holds."""
        account = self._accounts.get(account_id)
        if account is None:
            return self._new(account_id, name, udf, now), True
        if name is not None:
            account.name = name
        if udf is not None:
            account.udf = dict(udf)
        account.updated_at = now
        return account, False

    def create(self, account_id: str, name: str | None, udf: Mapping[str, str] | None, now: float) -> Account | None:
        """Create a new account; ``None`` when the id is taken."""
        if account_id in self._accounts:
            return None
        return self._new(account_id, name, udf, now)

    def seed(self, account_ids: Iterable[str], now: float) -> int:
        """Create every missing account; returns how many were new."""
        created = 0
        for account_id in account_ids:
            if account_id not in self._accounts:
                self._new(account_id, None, None, now)
                created += 1
        return created

    def delete(self, account_id: str) -> bool:
        return self._accounts.pop(account_id, None) is not None

    def page(self, page: int, limit: int) -> list[Account]:
        """One page (1-based) of accounts in creation order."""
        start = (page - 1) * limit
        return list(itertools.islice(self._accounts.values(), start, start + limit))

    def clear(self) -> None:
        self._accounts.clear()


@dataclass(frozen=True, slots=True)
class SessionToken:
    """A minted session token and its expiries (epoch seconds)."""

    token: str
    refresh_token: str
    expires_at: float
    refresh_expires_at: float

    def to_json(self, now: float) -> dict[str, Any]:
        """Refold's response; the lifetimes count down from now, so a reused token reports what is left."""
        return {
            "token": self.token,
            "refresh_token": self.refresh_token,
            "expires_in": max(0, int(self.expires_at - now)),
            "refresh_expires_in": max(0, int(self.refresh_expires_at - now)),
        }


@dataclass(slots=True)
class TokenStore:
    """The current session token per linked account."""

    _tokens: dict[str, SessionToken] = field(default_factory=dict)

    def issue(
        self, account_id: str, now: float, ttl: float, refresh_ttl: float, *, force_refresh: bool
    ) -> SessionToken:
        """The account's valid token, or a freshly minted one when there is none or ``force_refresh``."""
        current = self._tokens.get(account_id)
        if current is not None and not force_refresh and current.expires_at > now:
            return current
        minted = SessionToken(
            token=f"sbx_st_{secrets.token_urlsafe(24)}",
            refresh_token=f"sbx_rt_{secrets.token_urlsafe(24)}",
            expires_at=now + ttl,
            refresh_expires_at=now + refresh_ttl,
        )
        self._tokens[account_id] = minted
        return minted

    def revoke(self, account_id: str) -> None:
        self._tokens.pop(account_id, None)

    def clear(self) -> None:
        self._tokens.clear()
