"""The gate every ``/api`` request passes: request id, latency, auth, rate limit, faults, then recording.

A pure ASGI middleware (not Starlette's ``BaseHTTPMiddleware``, which costs a task and a stream per request),
so the sandbox stays far faster than anything it is used to measure. In order:

1. mint a request id, put an :class:`Exchange` in the scope, add ``x-request-id`` to the response;
2. fixed latency (``latency_ms``), for every API request;
3. ``x-api-key`` check: 401 ``INVALID_CREDENTIALS``;
4. GCRA per API key: 429 ``RATE_LIMITED`` (with ``Retry-After`` when configured);
5. the fault draw: 5xx / spurious 429 / hang then 504 answer without processing; slow sleeps, then processes;
6. the route handler;
7. a record when the response starts (so for accepted writes, record order is the order applied).

Admin routes (``/_sandbox``) pass straight through: no key, no limit, no faults, no records.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import time

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from refold_dispatch.sandbox.envelopes import error_response
from refold_dispatch.sandbox.exchange import SCOPE_KEY, Exchange
from refold_dispatch.sandbox.faults import Fault
from refold_dispatch.sandbox.recorder import Outcome, RequestRecord
from refold_dispatch.sandbox.runtime import SandboxRuntime

logger = logging.getLogger(__name__)

API_PREFIX = "/api/"
REQUEST_ID_HEADER = b"x-request-id"


class ApiGate:
    """ASGI middleware implementing the gate described in the module docstring."""

    def __init__(self, app: ASGIApp, runtime: SandboxRuntime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            await self.app(scope, receive, send)
            return
        runtime = self.runtime
        received_at = runtime.clock()
        started = time.perf_counter()

        api_key: bytes | None = None
        linked_account_id: str | None = None
        idempotency_key: str | None = None
        # Servers lower-case header names; one pass picks out the three the sandbox cares about.
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                api_key = value
            elif name == b"linked_account_id":
                linked_account_id = value.decode("latin-1")
            elif name == b"idempotency-key":
                idempotency_key = value.decode("latin-1")

        exchange = Exchange(runtime.next_request_id(), linked_account_id, idempotency_key)
        scope[SCOPE_KEY] = exchange
        request_id_bytes = exchange.request_id.encode()
        recorded = False

        async def send_and_record(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start":
                status: int = message["status"]
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id_bytes)]
                # Recorded before awaiting the send: nothing else runs between a handler applying a write
                # and this line, so record order is apply order.
                self._record(scope, exchange, status, received_at, started)
                recorded = True
            await send(message)

        try:
            response = await self._screen(exchange, api_key)
            if response is None:
                await self.app(scope, receive, send_and_record)
            else:
                await response(scope, receive, send_and_record)
        except Exception:
            logger.exception("sandbox handler failed for %s %s", scope["method"], scope["path"])
            if recorded:
                raise
            exchange.outcome = "rejected"
            failure = error_response(500, "INTERNAL_ERROR", "Sandbox handler failed", exchange.request_id)
            await failure(scope, receive, send_and_record)

    async def _screen(self, exchange: Exchange, api_key: bytes | None) -> Response | None:
        """Steps 2-5: an early answer, or ``None`` to let the handler process the request."""
        runtime = self.runtime
        config = runtime.config
        faults = config.faults
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000.0)

        exchange.key_valid = api_key is not None and hmac.compare_digest(api_key, runtime.api_key)
        if not exchange.key_valid:
            exchange.outcome = "rejected"
            return error_response(401, "INVALID_CREDENTIALS", "Invalid Credentials", exchange.request_id)

        if config.rate_limit_enabled:
            admission = runtime.limiter.acquire(config.api_key)
            if not admission.allowed:
                exchange.outcome = "rate_limited"
                headers = {"Retry-After": admission.retry_after_header} if config.retry_after_header else None
                return error_response(429, "RATE_LIMITED", "Too many requests", exchange.request_id, headers=headers)

        fault = runtime.faults.draw() if faults.active else None
        if fault is None:
            return None
        exchange.fault = fault.kind
        if fault.delay > 0:
            await asyncio.sleep(fault.delay)
        if fault.status is None:  # slow: late, but processed
            return None
        exchange.outcome = "fault"
        return self._fault_response(fault, exchange.request_id)

    def _fault_response(self, fault: Fault, request_id: str) -> Response:
        status = fault.status or 500
        if fault.kind == "rate_429":
            retry_after = self.runtime.config.faults.retry_after_429
            headers = None if retry_after is None else {"Retry-After": str(math.ceil(retry_after))}
            return error_response(429, "RATE_LIMITED", "Too many requests", request_id, headers=headers)
        if fault.kind == "hang":
            return error_response(status, "GATEWAY_TIMEOUT", "Upstream request timed out", request_id)
        return error_response(status, "SANDBOX_FAULT", "Injected server error", request_id)

    def _record(self, scope: Scope, exchange: Exchange, status: int, received_at: float, started: float) -> None:
        outcome: Outcome = exchange.outcome or ("ok" if 200 <= status < 300 else "rejected")
        self.runtime.recorder.append(
            RequestRecord(
                seq=0,
                time=received_at,
                method=scope["method"],
                path=scope["path"],
                status=status,
                outcome=outcome,
                request_id=exchange.request_id,
                key_valid=exchange.key_valid,
                linked_account_id=exchange.linked_account_id,
                idempotency_key=exchange.idempotency_key,
                event=exchange.event,
                fault=exchange.fault,
                account_id=exchange.account_id,
                name=exchange.name,
                udf=exchange.udf,
                duration_ms=(time.perf_counter() - started) * 1000.0,
            )
        )
