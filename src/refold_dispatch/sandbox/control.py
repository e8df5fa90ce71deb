"""The sandbox's own admin endpoints under ``/_sandbox``: inspect records, change faults and limits, reset.

No API key, no rate limit, no faults, no recording: the gate lets these through untouched, so a test can
always see and steer the sandbox however hostile the sandbox is being to the client under test.

=======  ==========================  ==========================================================
GET      /_sandbox/health            ``{"ok": true}``
GET      /_sandbox/requests          records; query ``since_seq, path, outcome, linked_account_id,
                                     idempotency_key, limit``
GET      /_sandbox/stats             totals, deliveries per idempotency key, duplicates, peak 1 s rate
GET/PUT  /_sandbox/faults            read / partially replace the fault configuration
GET/PUT  /_sandbox/config            read / partially replace the runtime settings (never the key)
POST     /_sandbox/accounts          ``{"ids": [...]}``: create linked accounts
POST     /_sandbox/reset             clear records, accounts, tokens, limiter;
                                     ``{"restore_config": true}`` also restores the startup config
=======  ==========================  ==========================================================
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from refold_dispatch.sandbox.recorder import OUTCOMES
from refold_dispatch.sandbox.runtime import SandboxRuntime

ADMIN_PREFIX = "/_sandbox"
# A page of records large enough for most tests in one call, small enough to keep one response quick.
DEFAULT_RECORDS_LIMIT = 10_000


class AdminInputError(Exception):
    """Bad input to an admin endpoint; answered as 400 (or 422 for invalid settings) by the handler below."""

    def __init__(self, message: str, status: int = 400, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


def admin_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for :class:`AdminInputError`: ``{"error": ..., "detail": ...}``."""
    if not isinstance(exc, AdminInputError):  # pragma: no cover - registered for AdminInputError only
        raise exc
    body: dict[str, Any] = {"error": str(exc)}
    if exc.detail is not None:
        body["detail"] = exc.detail
    return JSONResponse(body, exc.status)


async def _optional_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise AdminInputError("body is not valid JSON") from exc
    if not isinstance(body, dict):
        raise AdminInputError("body must be a JSON object")
    return body


def _int_query(request: Request, name: str, default: int | None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise AdminInputError(f"{name} must be an integer") from exc
    if value < 0:
        raise AdminInputError(f"{name} must not be negative")
    return value


def _invalid_settings(exc: ValidationError) -> AdminInputError:
    return AdminInputError(
        "invalid settings", 422, exc.errors(include_url=False, include_context=False, include_input=False)
    )


def _public_config(runtime: SandboxRuntime) -> dict[str, Any]:
    """The live configuration, without the API key (only which environment it selects)."""
    config = runtime.config
    dumped = config.model_dump(mode="json", exclude={"api_key"})
    dumped["known_events"] = sorted(config.known_events)
    dumped["environment"] = config.environment
    return dumped


class ControlApi:
    """Admin endpoint handlers bound to one runtime."""

    def __init__(self, runtime: SandboxRuntime) -> None:
        self.runtime = runtime

    def routes(self) -> list[Route]:
        return [
            Route(f"{ADMIN_PREFIX}/health", self.health, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/requests", self.requests, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/stats", self.stats, methods=["GET"]),
            Route(f"{ADMIN_PREFIX}/faults", self.faults, methods=["GET", "PUT"]),
            Route(f"{ADMIN_PREFIX}/config", self.config, methods=["GET", "PUT"]),
            Route(f"{ADMIN_PREFIX}/accounts", self.accounts, methods=["POST"]),
            Route(f"{ADMIN_PREFIX}/reset", self.reset, methods=["POST"]),
        ]

    async def health(self, request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def requests(self, request: Request) -> Response:
        outcome = request.query_params.get("outcome") or None
        if outcome is not None and outcome not in OUTCOMES:
            raise AdminInputError(f"outcome must be one of {', '.join(OUTCOMES)}")
        records = self.runtime.recorder.query(
            since_seq=_int_query(request, "since_seq", 0) or 0,
            path=request.query_params.get("path") or None,
            outcome=outcome,
            linked_account_id=request.query_params.get("linked_account_id") or None,
            idempotency_key=request.query_params.get("idempotency_key") or None,
            limit=_int_query(request, "limit", DEFAULT_RECORDS_LIMIT),
        )
        return JSONResponse([record.to_json() for record in records])

    async def stats(self, request: Request) -> Response:
        runtime = self.runtime
        return JSONResponse({**runtime.recorder.stats(), "accounts": len(runtime.accounts)})

    async def faults(self, request: Request) -> Response:
        runtime = self.runtime
        if request.method == "PUT":
            changes = await _optional_object(request)
            try:
                runtime.update_faults(changes)
            except ValidationError as exc:
                raise _invalid_settings(exc) from exc
        return JSONResponse(runtime.config.faults.model_dump(mode="json"))

    async def config(self, request: Request) -> Response:
        runtime = self.runtime
        if request.method == "PUT":
            changes = await _optional_object(request)
            try:
                runtime.update_config(changes)
            except ValidationError as exc:
                raise _invalid_settings(exc) from exc
            except ValueError as exc:
                raise AdminInputError(str(exc)) from exc
        return JSONResponse(_public_config(runtime))

    async def accounts(self, request: Request) -> Response:
        ids = (await _optional_object(request)).get("ids")
        if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
            raise AdminInputError("ids must be a list of non-empty strings")
        runtime = self.runtime
        created = runtime.seed_accounts(ids)
        return JSONResponse({"created": created, "accounts": len(runtime.accounts)})

    async def reset(self, request: Request) -> Response:
        restore = (await _optional_object(request)).get("restore_config", False)
        if not isinstance(restore, bool):
            raise AdminInputError("restore_config must be a boolean")
        self.runtime.reset(restore_config=restore)
        return JSONResponse({"ok": True})
