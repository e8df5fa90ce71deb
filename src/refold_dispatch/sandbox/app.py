"""The sandbox's Starlette application: Refold's routes, the admin routes, and the gate in front of them."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware

from refold_dispatch.sandbox.api import RefoldApi
from refold_dispatch.sandbox.config import SandboxConfig
from refold_dispatch.sandbox.control import AdminInputError, ControlApi, admin_error_handler
from refold_dispatch.sandbox.envelopes import ApiError, api_error_handler, http_error_handler
from refold_dispatch.sandbox.gate import ApiGate
from refold_dispatch.sandbox.runtime import SandboxRuntime


def create_app(
    config: SandboxConfig | None = None,
    *,
    clock: Callable[[], float] = time.time,
    monotonic_ns: Callable[[], int] = time.monotonic_ns,
) -> Starlette:
    """Build a sandbox app. Its live state is ``app.state.sandbox`` (a :class:`SandboxRuntime`).

    ``clock`` (epoch seconds, for records, accounts and token expiry) and ``monotonic_ns`` (for the rate
    limiter) are injectable so in-process tests can control time.
    """
    runtime = SandboxRuntime(config or SandboxConfig(), clock=clock, monotonic_ns=monotonic_ns)
    app = Starlette(
        routes=[*RefoldApi(runtime).routes(), *ControlApi(runtime).routes()],
        middleware=[Middleware(ApiGate, runtime=runtime)],
        exception_handlers={
            ApiError: api_error_handler,
            AdminInputError: admin_error_handler,
            HTTPException: http_error_handler,
        },
    )
    app.state.sandbox = runtime
    return app
