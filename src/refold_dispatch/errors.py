"""Every exception refold-dispatch raises, under one root.

::

    RefoldDispatchError                  root: catch this to catch everything we raise
    ├── ConfigurationError               settings missing or inconsistent (startup)
    ├── ValidationError                  bad input to the client or the enqueue API; nothing was sent or stored
    ├── IdempotencyConflictError         same idempotency key, different job
    ├── EnqueueError                     Redis did not store the job; no receipt was issued
    ├── DeadLetteredError                a job ended in the dead-letter queue (the task's FAILURE outcome)
    ├── DeadLetterNotFoundError          no dead letter with that id
    ├── DevStackError                    `refold-dispatch dev` cannot start its stack (in devstack.py)
    └── RefoldError                      Refold (or the road to it) failed a request
        ├── TransientError               worth retrying: timeouts, network errors, 408, 429, 5xx
        │   └── RateLimitedError         429: everyone backs off, honouring Retry-After
        └── PermanentError               retrying cannot help: other 4xx
            └── AuthError                401/403: the key is wrong, of the other environment, or lacks a role

httpx exceptions become ours in exactly one place, :func:`error_from_transport`, and HTTP error responses in
:func:`error_from_response`; both are pure functions, so the whole classification is tested by a table.
Errors carry evidence (status, error code, message, request id, Retry-After, idempotency key) and never the API
key: no request headers are kept on them.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from refold_dispatch.dispatcher import Receipt

# A Retry-After beyond this is capped: a misconfigured server asking for days must not park jobs for days.
MAX_RETRY_AFTER_SECONDS = 6 * 3600.0
# Bodies are kept on errors as evidence, but bounded so a large HTML error page cannot bloat dead letters.
MAX_ERROR_BODY_CHARS = 2000


class RefoldDispatchError(Exception):
    """Root of every exception refold-dispatch raises."""


class ConfigurationError(RefoldDispatchError):
    """Settings are missing or inconsistent."""


class ValidationError(RefoldDispatchError, ValueError):
    """Input was rejected before anything was sent to Refold or stored in Redis."""


class IdempotencyConflictError(RefoldDispatchError):
    """An idempotency key was reused for a different job within the retention window."""

    def __init__(self, idempotency_key: str, existing_job_id: str) -> None:
        super().__init__(
            f"idempotency key {idempotency_key!r} was already used for job {existing_job_id} with a different "
            "payload; use a new key for a different job"
        )
        self.idempotency_key = idempotency_key
        self.existing_job_id = existing_job_id


class EnqueueError(RefoldDispatchError):
    """Redis did not confirm the job was stored; no receipt was issued. The message says whether anything may
    have been stored; ``idempotency_keys`` are the jobs' keys, with which enqueueing again is always safe."""

    def __init__(self, message: str, *, idempotency_keys: list[str] | None = None) -> None:
        super().__init__(message)
        self.idempotency_keys = idempotency_keys or []


class PartialEnqueueError(RefoldDispatchError):
    """``enqueue_many`` stopped part-way because taking the next job from its iterable raised (a row that did not
    validate, say). Every job before that one is stored (``receipts``, in order); nothing from it on was taken.
    ``position`` is the failing item's 0-based index; the exception it raised is ``__cause__``. Enqueueing the
    remaining jobs later is safe: stored keys answer ``duplicate=True``."""

    def __init__(
        self,
        receipts: list[Receipt],
        position: int,
        cause: BaseException,
        conflict: IdempotencyConflictError | None = None,
    ) -> None:
        message = (
            f"enqueue_many stopped at item {position}: {type(cause).__name__}: {cause}; the {len(receipts)} jobs "
            "before it are stored (see .receipts), none from it on"
        )
        if conflict is not None:
            message += f"; also, among the stored ones: {conflict}"
        super().__init__(message)
        self.receipts = receipts
        self.position = position
        self.conflict = conflict


class DeadLetteredError(RefoldDispatchError):
    """A job was moved to the dead-letter queue. Raised by the Celery task so Flower shows FAILURE."""

    def __init__(self, job_id: str, reason: str, detail: str = "") -> None:
        # args mirror the constructor so Celery can rebuild the exception from its JSON form (and match it
        # against the task's ``throws``, which keeps an expected dead-lettering free of tracebacks).
        super().__init__(job_id, reason, detail)
        self.job_id = job_id
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"job {self.job_id} dead-lettered ({self.reason}){': ' + self.detail if self.detail else ''}"


class DeadLetterNotFoundError(RefoldDispatchError, KeyError):
    """No dead letter exists with the given id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "dead letter not found"


class RefoldError(RefoldDispatchError):
    """A request to Refold failed. Carries the evidence needed to debug it, never the API key."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        idempotency_key: str | None = None,
        body: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_code = error_code
        self.request_id = request_id
        self.retry_after = retry_after
        self.idempotency_key = idempotency_key
        self.body = body
        self.method = method
        self.path = path

    def __str__(self) -> str:
        parts = [self.message]
        if self.method and self.path:
            parts.append(f"{self.method} {self.path}")
        if self.status_code is not None:
            parts.append(f"status={self.status_code}")
        if self.error_code:
            parts.append(f"error_code={self.error_code}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        if self.retry_after is not None:
            parts.append(f"retry_after={self.retry_after:g}s")
        if self.idempotency_key:
            parts.append(f"idempotency_key={self.idempotency_key}")
        return " | ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def evidence(self) -> dict[str, Any]:
        """A JSON-safe summary for logs and dead letters."""
        return {
            "type": type(self).__name__,
            "message": self.message,
            "status_code": self.status_code,
            "error_code": self.error_code,
            "request_id": self.request_id,
            "retry_after": self.retry_after,
        }


class TransientError(RefoldError):
    """Worth retrying: the request may succeed later."""

    retryable = True


class RateLimitedError(TransientError):
    """Refold answered 429: every worker pauses, honouring Retry-After when given."""


class PermanentError(RefoldError):
    """Retrying the same request cannot succeed."""


class AuthError(PermanentError):
    """401 or 403: the API key is invalid, belongs to the other environment, or lacks access."""


def parse_retry_after(
    value: str | None, *, now: float | None = None, cap: float = MAX_RETRY_AFTER_SECONDS
) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date), capped; None if absent/bad."""
    if value is None:
        return None
    text = value.strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), cap)


def _first_text(body: Mapping[str, Any], *names: str) -> str | None:
    for name in names:
        value = body.get(name)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
    return None


def error_from_response(
    response: httpx.Response,
    *,
    idempotency_key: str | None = None,
    max_retry_after: float = MAX_RETRY_AFTER_SECONDS,
) -> RefoldError:
    """Classify a non-2xx response into our error tree, pulling evidence from Refold's uneven error bodies."""
    status = response.status_code
    text = response.text[:MAX_ERROR_BODY_CHARS] if response.content else ""
    parsed: Any = None
    if text:
        try:
            parsed = json.loads(response.content)
        except ValueError:
            parsed = None
    body: Mapping[str, Any] = parsed if isinstance(parsed, Mapping) else {}
    message = _first_text(body, "message", "detail", "error_description") or response.reason_phrase or "HTTP error"
    error_code = _first_text(body, "error_code", "error", "error_type")
    request_id = (
        _first_text(body, "request_id", "requestId")
        or response.headers.get("x-request-id")
        or response.headers.get("request-id")
    )
    retry_after = parse_retry_after(response.headers.get("retry-after"), cap=max_retry_after)
    error_class = classify_status(status)
    return error_class(
        message,
        status_code=status,
        error_code=error_code,
        request_id=request_id,
        retry_after=retry_after,
        idempotency_key=idempotency_key,
        body=text or None,
        method=response.request.method if _has_request(response) else None,
        path=response.request.url.path if _has_request(response) else None,
    )


def _has_request(response: httpx.Response) -> bool:
    try:
        response.request  # noqa: B018 - property raises when the response was built without a request
    except RuntimeError:
        return False
    return True


def classify_status(status: int) -> type[RefoldError]:
    """The error class for an HTTP status: the retry decision's table, in one place."""
    if status == 429:
        return RateLimitedError
    if status == 408 or status >= 500:
        return TransientError
    if status in (401, 403):
        return AuthError
    return PermanentError


def error_from_transport(
    exc: httpx.HTTPError,
    *,
    method: str | None = None,
    path: str | None = None,
    idempotency_key: str | None = None,
) -> RefoldError:
    """Translate an httpx transport failure: timeouts and network errors are transient, the rest permanent."""
    transient = isinstance(exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError)
    error_class = TransientError if transient else PermanentError
    kind = type(exc).__name__
    detail = str(exc) or kind
    return error_class(
        f"{kind}: {detail}",
        error_code=kind,
        idempotency_key=idempotency_key,
        method=method,
        path=path,
    )
