"""The per-request notes shared by the gate (which records) and the handlers (which know what happened).

The gate puts an :class:`Exchange` in the ASGI scope of every ``/api`` request; handlers fill in what only
they know (event name, outcome, which account was written), and the gate turns it into a record when the
response starts.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from refold_dispatch.sandbox.recorder import Outcome

# Namespaced, as the ASGI spec asks of extension keys in the scope.
SCOPE_KEY = "refold_sandbox.exchange"


class Exchange:
    """What one ``/api`` request carried and what became of it."""

    __slots__ = (
        "account_id",
        "event",
        "fault",
        "idempotency_key",
        "key_valid",
        "linked_account_id",
        "name",
        "outcome",
        "request_id",
        "udf",
    )

    def __init__(self, request_id: str, linked_account_id: str | None, idempotency_key: str | None) -> None:
        self.request_id = request_id
        self.linked_account_id = linked_account_id
        self.idempotency_key = idempotency_key
        self.key_valid = False
        self.outcome: Outcome | None = None
        self.event: str | None = None
        self.fault: str | None = None
        self.account_id: str | None = None
        self.name: str | None = None
        self.udf: dict[str, str] | None = None


def exchange_of(scope: MutableMapping[str, Any]) -> Exchange | None:
    """The request's exchange; ``None`` outside ``/api`` (admin routes)."""
    found = scope.get(SCOPE_KEY)
    return found if isinstance(found, Exchange) else None
