"""The error tree and its two translation functions, driven by tables of what Refold and httpx produce."""

from __future__ import annotations

import email.utils
import json
from typing import Any

import httpx
import pytest

from refold_dispatch.errors import (
    MAX_ERROR_BODY_CHARS,
    MAX_RETRY_AFTER_SECONDS,
    AuthError,
    PermanentError,
    RateLimitedError,
    RefoldDispatchError,
    RefoldError,
    TransientError,
    ValidationError,
    classify_status,
    error_from_response,
    error_from_transport,
    parse_retry_after,
)

REQUEST = httpx.Request("POST", "https://app.refold.ai/api/v2/public/event/trigger")
NOW = 1_750_000_000.0


def response(
    status: int,
    body: Any = None,
    *,
    text: str | None = None,
    headers: dict[str, str] | None = None,
    with_request: bool = True,
) -> httpx.Response:
    content = text.encode() if text is not None else (json.dumps(body).encode() if body is not None else b"")
    return httpx.Response(status, content=content, headers=headers, request=REQUEST if with_request else None)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (400, PermanentError),
        (401, AuthError),
        (403, AuthError),
        (404, PermanentError),
        (408, TransientError),
        (409, PermanentError),
        (422, PermanentError),
        (429, RateLimitedError),
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (504, TransientError),
        (599, TransientError),
        (302, PermanentError),
    ],
)
def test_classify_status(status: int, expected: type[RefoldError]) -> None:
    assert classify_status(status) is expected


def test_tree_has_one_root_with_retryable_and_permanent_branches() -> None:
    assert issubclass(RefoldError, RefoldDispatchError)
    assert issubclass(ValidationError, RefoldDispatchError)
    assert issubclass(ValidationError, ValueError)
    assert TransientError.retryable
    assert RateLimitedError.retryable
    assert not PermanentError.retryable
    assert not AuthError.retryable
    assert issubclass(AuthError, PermanentError)


@pytest.mark.parametrize(
    ("case", "resp", "expected"),
    [
        (
            "unknown event: error_code, message, status_code",
            response(
                404,
                {
                    "status_code": 404,
                    "http_error_type": "NOT_FOUND",
                    "error_code": "INVALID_EVENT",
                    "message": "Trigger not found",
                },
            ),
            (PermanentError, "Trigger not found", "INVALID_EVENT", None),
        ),
        (
            "code under 'error' and request_id in the body",
            response(400, {"error": "INVALID_LINKED_ACCOUNT_ID", "message": "No account", "request_id": "b-1"}),
            (PermanentError, "No account", "INVALID_LINKED_ACCOUNT_ID", "b-1"),
        ),
        (
            "code under 'error_type' and request id in x-request-id",
            response(
                401,
                {"error_type": "UNAUTHORIZED", "message": "Invalid Credentials"},
                headers={"x-request-id": "h-1"},
            ),
            (AuthError, "Invalid Credentials", "UNAUTHORIZED", "h-1"),
        ),
        (
            "error_code wins over error and error_type",
            response(403, {"error_code": "A", "error": "B", "error_type": "C", "message": "role"}),
            (AuthError, "role", "A", None),
        ),
        (
            "request id in the request-id header",
            response(500, {"message": "A valid app_id is required"}, headers={"request-id": "h-2"}),
            (TransientError, "A valid app_id is required", None, "h-2"),
        ),
        (
            "body request_id wins over the header",
            response(500, {"message": "boom", "request_id": "b-2"}, headers={"x-request-id": "h-3"}),
            (TransientError, "boom", None, "b-2"),
        ),
        (
            "numeric codes become text",
            response(400, {"error_code": 1234, "message": "Duplicate Auth key_name not allowed"}),
            (PermanentError, "Duplicate Auth key_name not allowed", "1234", None),
        ),
        (
            "non-JSON body (an HTML page from a proxy) falls back to the reason phrase",
            response(502, text="<html><body>Bad Gateway</body></html>"),
            (TransientError, "Bad Gateway", None, None),
        ),
        (
            "JSON that is not an object",
            response(400, ["not", "an", "object"]),
            (PermanentError, "Bad Request", None, None),
        ),
        (
            "empty body",
            response(429),
            (RateLimitedError, "Too Many Requests", None, None),
        ),
        (
            "message under 'detail'",
            response(422, {"detail": "payload too large"}),
            (PermanentError, "payload too large", None, None),
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_error_from_response(
    case: str, resp: httpx.Response, expected: tuple[type[RefoldError], str, str | None, str | None]
) -> None:
    error_class, message, error_code, request_id = expected
    error = error_from_response(resp, idempotency_key="idem-1")
    assert type(error) is error_class, case
    assert error.message == message
    assert error.error_code == error_code
    assert error.request_id == request_id
    assert error.status_code == resp.status_code
    assert error.idempotency_key == "idem-1"
    assert error.method == "POST"
    assert error.path == "/api/v2/public/event/trigger"
    # Evidence is in str() for logs and in evidence() for dead letters.
    assert f"status={resp.status_code}" in str(error)
    assert error.evidence()["status_code"] == resp.status_code


def test_error_from_response_keeps_a_bounded_body() -> None:
    huge = "x" * (MAX_ERROR_BODY_CHARS * 3)
    error = error_from_response(response(500, text=huge))
    assert error.body is not None
    assert len(error.body) == MAX_ERROR_BODY_CHARS


def test_error_from_response_without_a_request_has_no_method_or_path() -> None:
    error = error_from_response(response(500, {"message": "boom"}, with_request=False))
    assert error.method is None
    assert error.path is None
    assert error.message == "boom"


def test_error_keeps_no_request_headers() -> None:
    request = httpx.Request("POST", "https://app.refold.ai/x", headers={"x-api-key": "tk_never_kept"})
    resp = httpx.Response(401, json={"message": "Invalid Credentials"}, request=request)
    error = error_from_response(resp)
    assert "tk_never_kept" not in repr(vars(error))


HTTP_DATE_IN_90_S = email.utils.formatdate(NOW + 90, usegmt=True)
HTTP_DATE_IN_PAST = email.utils.formatdate(NOW - 90, usegmt=True)


@pytest.mark.parametrize(
    ("header", "cap", "expected"),
    [
        (None, MAX_RETRY_AFTER_SECONDS, None),
        ("", MAX_RETRY_AFTER_SECONDS, None),
        ("   ", MAX_RETRY_AFTER_SECONDS, None),
        ("30", MAX_RETRY_AFTER_SECONDS, 30.0),
        (" 2.5 ", MAX_RETRY_AFTER_SECONDS, 2.5),
        ("0", MAX_RETRY_AFTER_SECONDS, 0.0),
        ("-5", MAX_RETRY_AFTER_SECONDS, 0.0),
        (HTTP_DATE_IN_90_S, MAX_RETRY_AFTER_SECONDS, 90.0),
        (HTTP_DATE_IN_PAST, MAX_RETRY_AFTER_SECONDS, 0.0),
        ("soon", MAX_RETRY_AFTER_SECONDS, None),
        ("Wed, 99 Foo 2015 07:28:00 GMT", MAX_RETRY_AFTER_SECONDS, None),
        ("nan", MAX_RETRY_AFTER_SECONDS, None),
        ("999999999", MAX_RETRY_AFTER_SECONDS, MAX_RETRY_AFTER_SECONDS),
        ("1e400", MAX_RETRY_AFTER_SECONDS, MAX_RETRY_AFTER_SECONDS),
        ("600", 60.0, 60.0),
    ],
)
def test_parse_retry_after(header: str | None, cap: float, expected: float | None) -> None:
    result = parse_retry_after(header, now=NOW, cap=cap)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected, abs=1.0)


@pytest.mark.parametrize(
    ("retry_after", "max_retry_after", "expected"),
    [
        ("12", MAX_RETRY_AFTER_SECONDS, 12.0),
        ("86400", MAX_RETRY_AFTER_SECONDS, MAX_RETRY_AFTER_SECONDS),
        ("86400", 300.0, 300.0),
        ("garbage", MAX_RETRY_AFTER_SECONDS, None),
    ],
)
def test_error_from_response_reads_retry_after(
    retry_after: str, max_retry_after: float, expected: float | None
) -> None:
    resp = response(429, {"message": "slow down"}, headers={"Retry-After": retry_after})
    error = error_from_response(resp, max_retry_after=max_retry_after)
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == expected


def test_error_from_response_reads_an_http_date_retry_after() -> None:
    when = email.utils.formatdate(usegmt=True)  # "now", to the second
    error = error_from_response(response(503, headers={"Retry-After": when}))
    assert isinstance(error, TransientError)
    assert error.retry_after is not None
    assert 0.0 <= error.retry_after <= 1.0


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (httpx.ConnectTimeout("connect timed out"), TransientError),
        (httpx.ReadTimeout("read timed out"), TransientError),
        (httpx.WriteTimeout("write timed out"), TransientError),
        (httpx.PoolTimeout("no connection free"), TransientError),
        (httpx.ConnectError("[Errno 111] Connection refused"), TransientError),
        (httpx.ReadError("connection reset"), TransientError),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), TransientError),
        (httpx.LocalProtocolError("bad request line"), PermanentError),
        (httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."), PermanentError),
        (httpx.DecodingError("bad gzip"), PermanentError),
        (httpx.TooManyRedirects("too many"), PermanentError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.__name__,
)
def test_error_from_transport(exc: httpx.HTTPError, expected: type[RefoldError]) -> None:
    error = error_from_transport(exc, method="POST", path="/api/v2/public/event/trigger", idempotency_key="k")
    assert type(error) is expected
    assert error.error_code == type(exc).__name__
    assert type(exc).__name__ in error.message
    assert str(exc) in error.message
    assert error.status_code is None
    assert error.method == "POST"
    assert error.path == "/api/v2/public/event/trigger"
    assert error.idempotency_key == "k"


def test_error_from_transport_names_the_exception_when_it_has_no_message() -> None:
    error = error_from_transport(httpx.ReadTimeout(""))
    assert error.message == "ReadTimeout: ReadTimeout"


def test_str_and_repr_carry_the_evidence() -> None:
    error = RateLimitedError(
        "slow down",
        status_code=429,
        error_code="RATE_LIMITED",
        request_id="r-1",
        retry_after=2.0,
        idempotency_key="idem-9",
        method="POST",
        path="/api/v2/public/event/trigger",
    )
    text = str(error)
    for fragment in ("slow down", "POST /api/v2/public/event/trigger", "status=429", "RATE_LIMITED", "r-1"):
        assert fragment in text
    assert "retry_after=2s" in text
    assert "idempotency_key=idem-9" in text
    assert repr(error).startswith("RateLimitedError(")
    assert error.evidence() == {
        "type": "RateLimitedError",
        "message": "slow down",
        "status_code": 429,
        "error_code": "RATE_LIMITED",
        "request_id": "r-1",
        "retry_after": 2.0,
    }
