"""Refold's public operations as the sandbox plays them: events, linked accounts, session tokens.

Paths, status codes and bodies follow ``refold-openapi.yaml``. Auth, rate limiting, faults and recording have
already happened in the gate; handlers validate, apply, note on the :class:`Exchange` what happened, and
answer. A handler never awaits after applying a write, so the gate records writes in the order applied.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from refold_dispatch.sandbox.envelopes import ApiError
from refold_dispatch.sandbox.exchange import SCOPE_KEY, Exchange
from refold_dispatch.sandbox.runtime import SandboxRuntime
from refold_dispatch.sandbox.state import Account

PUBLIC = "/api/v2/public"
# Encoded once: it is the answer to nearly every request a benchmark sends.
WEBHOOK_FIRED = b'{"message":"Webhook Fired Success"}'
# mongoose-paginate's default page size, which Refold's listing uses.
DEFAULT_PAGE_LIMIT = 10


def _exchange(request: Request) -> Exchange:
    exchange: Exchange = request.scope[SCOPE_KEY]
    return exchange


def _bad_request(message: str, error_code: str = "INVALID_REQUEST") -> ApiError:
    return ApiError(400, error_code, message)


def _account_not_found(status: int = 400) -> ApiError:
    return ApiError(status, "INVALID_LINKED_ACCOUNT_ID", "Linked account not found")


async def _json_object(request: Request) -> dict[str, Any]:
    """The body as a JSON object; malformed JSON or another JSON type is a 400."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad_request("Request body is not valid JSON", "INVALID_JSON") from exc
    if not isinstance(body, dict):
        raise _bad_request("Request body must be a JSON object", "INVALID_JSON")
    return body


def _positive_int(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise _bad_request(f"{name} must be a positive integer")
    return value


class AccountWrite:
    """A validated linked-account write body (flat, or nested under ``payload``, which wins)."""

    __slots__ = ("account_id", "name", "udf")

    def __init__(self, body: dict[str, Any]) -> None:
        nested = body.get("payload")
        fields = {**body, **nested} if isinstance(nested, dict) else body
        account_id = fields.get("account_id") or fields.get("linked_account_id")
        if not isinstance(account_id, str) or not account_id:
            raise _bad_request("linked_account_id is required", "MISSING_LINKED_ACCOUNT_ID")
        name = fields.get("name")
        if name is not None and not isinstance(name, str):
            raise _bad_request("name must be a string")
        udf = fields.get("udf")
        if udf is not None and (not isinstance(udf, dict) or not all(isinstance(value, str) for value in udf.values())):
            raise _bad_request("udf must be an object of string values")
        self.account_id: str = account_id
        self.name: str | None = name
        self.udf: dict[str, str] | None = udf
        your_app = fields.get("your_app")
        if your_app is not None:
            if not isinstance(your_app, dict) or not your_app:
                raise _bad_request("your_app must not be empty")
            if not isinstance(your_app.get("auth_credentials"), dict):
                # Refold answers this case with a 500, not a 400; the sandbox does the same so clients
                # learn to treat it as permanent by its message rather than by status.
                raise ApiError(500, "INVALID_APP_ID", "A valid app_id is required")

    def note_on(self, exchange: Exchange) -> None:
        exchange.account_id = self.account_id
        exchange.name = self.name
        exchange.udf = self.udf


class RefoldApi:
    """The Refold operations, bound to one runtime."""

    def __init__(self, runtime: SandboxRuntime) -> None:
        self.runtime = runtime

    def routes(self) -> list[Route]:
        # The literal /event/trigger must come before the /event/{slug} alias that would also match it.
        return [
            Route(f"{PUBLIC}/event/trigger", self.trigger_event, methods=["POST"]),
            Route(f"{PUBLIC}/event", self.trigger_event, methods=["POST"]),
            Route(f"{PUBLIC}/event/{{slug}}", self.trigger_event, methods=["POST"]),
            Route(
                f"{PUBLIC}/linked-account",
                self.linked_accounts,
                methods=["GET", "PUT", "POST"],
            ),
            Route(
                f"{PUBLIC}/linked-account/{{linked_account_id}}",
                self.linked_account,
                methods=["GET", "DELETE"],
            ),
            Route(f"{PUBLIC}/session-token", self.session_token, methods=["POST"]),
        ]

    def _account_json(self, account: Account) -> dict[str, Any]:
        config = self.runtime.config
        return account.to_json(config.org_id, config.environment)

    async def trigger_event(self, request: Request) -> Response:
        """``POST /event/trigger`` and its aliases ``/event`` and ``/event/{slug}``."""
        exchange = _exchange(request)
        body = await _json_object(request)
        event = body.get("event") or body.get("trigger")
        if isinstance(event, str):
            exchange.event = event
        runtime = self.runtime
        config = runtime.config
        linked_account_id = exchange.linked_account_id
        if not linked_account_id:
            raise _bad_request("linked_account_id header is required", "MISSING_LINKED_ACCOUNT_ID")
        if not isinstance(event, str) or not event:
            raise _bad_request("event is required", "MISSING_EVENT")
        if config.require_known_accounts and linked_account_id not in runtime.accounts:
            raise _account_not_found()
        if not config.accepts_event(event):
            raise ApiError(404, "INVALID_EVENT", "Trigger not found")
        exchange.outcome = "delivered"
        return Response(WEBHOOK_FIRED, media_type="application/json")

    async def linked_accounts(self, request: Request) -> Response:
        """``GET`` (list), ``PUT`` (upsert) and ``POST`` (create) on ``/linked-account``."""
        if request.method == "GET":
            return self._list_accounts(request)
        exchange = _exchange(request)
        write = AccountWrite(await _json_object(request))
        write.note_on(exchange)
        runtime = self.runtime
        now = runtime.clock()
        if request.method == "POST":
            created = runtime.accounts.create(write.account_id, write.name, write.udf, now)
            if created is None:
                raise _bad_request("Linked account already exists", "DUPLICATE_LINKED_ACCOUNT")
            exchange.outcome = "delivered"
            return JSONResponse(self._account_json(created))
        account, is_new = runtime.accounts.upsert(write.account_id, write.name, write.udf, now)
        exchange.outcome = "delivered"
        return JSONResponse({**self._account_json(account), "new_account": is_new})

    def _list_accounts(self, request: Request) -> Response:
        page = _positive_int(request, "page", 1)
        limit = _positive_int(request, "limit", DEFAULT_PAGE_LIMIT)
        accounts = self.runtime.accounts
        total = len(accounts)
        # mongoose-paginate reports one (empty) page when there are no documents.
        total_pages = max(1, math.ceil(total / limit))
        has_next = page < total_pages
        has_prev = page > 1
        return JSONResponse(
            {
                "docs": [self._account_json(account) for account in accounts.page(page, limit)],
                "totalDocs": total,
                "limit": limit,
                "page": page,
                "totalPages": total_pages,
                "pagingCounter": (page - 1) * limit + 1,
                "hasPrevPage": has_prev,
                "hasNextPage": has_next,
                "prevPage": page - 1 if has_prev else None,
                "nextPage": page + 1 if has_next else None,
            }
        )

    async def linked_account(self, request: Request) -> Response:
        """``GET`` and ``DELETE`` on ``/linked-account/{linked_account_id}``."""
        account_id: str = request.path_params["linked_account_id"]
        _exchange(request).account_id = account_id
        runtime = self.runtime
        if request.method == "DELETE":
            if not runtime.accounts.delete(account_id):
                raise _account_not_found(404)
            runtime.tokens.revoke(account_id)
            return JSONResponse({"message": "User deleted successfully"})
        account = runtime.accounts.get(account_id)
        if account is None:
            raise _account_not_found(404)
        return JSONResponse(self._account_json(account))

    async def session_token(self, request: Request) -> Response:
        """``POST /session-token?force_refresh=true|false``: reuse the valid token unless forced."""
        force = request.query_params.get("force_refresh", "false").lower()
        if force not in {"true", "false"}:
            raise _bad_request("force_refresh must be 'true' or 'false'")
        body = await _json_object(request)
        account_id = body.get("linked_account_id")
        if not isinstance(account_id, str) or not account_id:
            raise _bad_request("linked_account_id is required", "MISSING_LINKED_ACCOUNT_ID")
        _exchange(request).account_id = account_id
        runtime = self.runtime
        if account_id not in runtime.accounts:
            raise _account_not_found()
        config = runtime.config
        now = runtime.clock()
        token = runtime.tokens.issue(
            account_id,
            now,
            config.token_ttl_seconds,
            config.refresh_token_ttl_seconds,
            force_refresh=force == "true",
        )
        return JSONResponse(token.to_json(now))
