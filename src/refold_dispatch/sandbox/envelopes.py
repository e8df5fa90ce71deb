"""Refold's error envelope, and the exception handlers that answer with it.

Every sandbox error on an ``/api`` route looks like Refold's documented one::

    {"status_code": 404, "http_error_type": "NOT_FOUND", "error_code": "INVALID_EVENT",
     "message": "Trigger not found", "request_id": "req_..."}

Handlers raise :class:`ApiError`; one exception handler turns it into that body, so the envelope is built in
exactly one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from refold_dispatch.sandbox.exchange import exchange_of

# Spelled as Refold spells them (the upper-cased HTTP reason phrase), for the statuses the sandbox answers.
HTTP_ERROR_TYPES: Mapping[int, str] = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_SERVER_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}


def http_error_type(status: int) -> str:
    """Refold's ``http_error_type`` for a status: the reason phrase in upper snake case."""
    known = HTTP_ERROR_TYPES.get(status)
    if known is not None:
        return known
    try:
        return HTTPStatus(status).phrase.upper().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "ERROR"


class ApiError(Exception):
    """An error answer on an ``/api`` route, rendered as Refold's envelope by :func:`api_error_handler`."""

    def __init__(self, status: int, error_code: str, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.headers = headers


def error_body(status: int, error_code: str, message: str, request_id: str | None) -> dict[str, Any]:
    """The envelope itself; ``request_id`` is included whenever the request has one."""
    body: dict[str, Any] = {
        "status_code": status,
        "http_error_type": http_error_type(status),
        "error_code": error_code,
        "message": message,
    }
    if request_id is not None:
        body["request_id"] = request_id
    return body


def error_response(
    status: int,
    error_code: str,
    message: str,
    request_id: str | None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    return JSONResponse(error_body(status, error_code, message, request_id), status, headers=headers)


def api_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette exception handler for :class:`ApiError`."""
    if not isinstance(exc, ApiError):  # pragma: no cover - registered for ApiError only
        raise exc
    exchange = exchange_of(request.scope)
    request_id = exchange.request_id if exchange is not None else None
    return error_response(exc.status, exc.error_code, exc.message, request_id, exc.headers)


def http_error_handler(request: Request, exc: Exception) -> Response:
    """Routing errors (unknown path, wrong method): Refold's envelope on ``/api``, plain JSON elsewhere."""
    if not isinstance(exc, HTTPException):  # pragma: no cover - registered for HTTPException only
        raise exc
    exchange = exchange_of(request.scope)
    if exchange is None:
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)
    code = "ROUTE_NOT_FOUND" if exc.status_code == 404 else http_error_type(exc.status_code)
    return error_response(exc.status_code, code, exc.detail, exchange.request_id, exc.headers)
