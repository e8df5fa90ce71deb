"""Serving the sandbox: :func:`run_sandbox` (blocking, for the CLI) and :class:`SandboxServer` (a background
thread, for tests and embedding).

Both run uvicorn with its fastest pieces when installed (uvloop, httptools), no access log and warnings only:
per-request logging would make the sandbox, not the client, what a benchmark measures.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn
from starlette.applications import Starlette
from uvicorn.config import LOGGING_CONFIG

from refold_dispatch.sandbox.admin import SandboxAdmin
from refold_dispatch.sandbox.app import create_app
from refold_dispatch.sandbox.config import SandboxConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
# A cold start (imports done) takes well under a second; ten covers a loaded CI machine.
DEFAULT_STARTUP_TIMEOUT = 10.0
# In-flight requests (a hang fault, say) get this long to finish at shutdown before they are cancelled.
DEFAULT_SHUTDOWN_GRACE_SECONDS = 1
# How often start-up progress is checked: short, so tests do not wait on the poll.
_POLL_INTERVAL = 0.005


def _uvicorn_config(
    app: Starlette,
    host: str,
    port: int,
    *,
    log_config: dict[str, Any] | None = LOGGING_CONFIG,
    timeout_graceful_shutdown: int | None = None,
) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        lifespan="off",  # the app has no startup work; skipping lifespan skips its log noise too
        access_log=False,
        log_level="warning",
        log_config=log_config,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
    )


def run_sandbox(config: SandboxConfig | None = None, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> None:
    """Serve the sandbox until interrupted (Ctrl-C / SIGTERM)."""
    uvicorn.Server(_uvicorn_config(create_app(config), host, port)).run()


class SandboxServer:
    """A sandbox served from a background thread, on a free port by default.

    ::

        with SandboxServer(SandboxConfig(rate_limit_enabled=False)) as sandbox:
            sandbox.admin.seed_accounts(["acct_1"])
            httpx.post(f"{sandbox.url}/api/v2/public/event/trigger", ...)
            assert sandbox.admin.stats()["by_outcome"]["delivered"] == 1
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        host: str = DEFAULT_HOST,
        port: int = 0,
        *,
        startup_timeout: float = DEFAULT_STARTUP_TIMEOUT,
        shutdown_grace_seconds: int = DEFAULT_SHUTDOWN_GRACE_SECONDS,
    ) -> None:
        self.config = config or SandboxConfig()
        self.host = host
        self.app = create_app(self.config)
        self._startup_timeout = startup_timeout
        # log_config=None leaves the host process's logging configuration alone.
        self._server = uvicorn.Server(
            _uvicorn_config(self.app, host, port, log_config=None, timeout_graceful_shutdown=shutdown_grace_seconds)
        )
        self._thread: threading.Thread | None = None
        self._started_once = False
        self._url: str | None = None
        self._admin: SandboxAdmin | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:53117``; point the Refold client's base URL here."""
        if self._url is None:
            raise RuntimeError("the sandbox server is not running")
        return self._url

    @property
    def admin(self) -> SandboxAdmin:
        if self._admin is None:
            raise RuntimeError("the sandbox server is not running")
        return self._admin

    def start(self) -> Self:
        """Start serving and return once the server answers its health check."""
        if self._started_once:
            raise RuntimeError("a SandboxServer starts once; create a new one to serve again")
        self._started_once = True
        self._thread = threading.Thread(target=self._server.run, name="refold-sandbox", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self._startup_timeout
        try:
            while not self._server.started:
                if not self._thread.is_alive():
                    raise RuntimeError(f"the sandbox server failed to start on {self.host}")
                self._check_deadline(deadline)
                time.sleep(_POLL_INTERVAL)
            port = self._server.servers[0].sockets[0].getsockname()[1]
            host = f"[{self.host}]" if ":" in self.host else self.host
            self._url = f"http://{host}:{port}"
            self._admin = SandboxAdmin(self._url)
            self._wait_healthy(self._admin, deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _check_deadline(self, deadline: float) -> None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the sandbox server did not start within {self._startup_timeout} s")

    def _wait_healthy(self, admin: SandboxAdmin, deadline: float) -> None:
        while True:
            try:
                if admin.health():
                    return
            except httpx.TransportError:
                pass
            self._check_deadline(deadline)
            time.sleep(_POLL_INTERVAL)

    def stop(self) -> None:
        """Stop serving and wait for the thread; safe to call more than once."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        thread, self._thread = self._thread, None
        if thread is not None:
            self._server.should_exit = True
            thread.join(self._startup_timeout)
            if thread.is_alive():  # pragma: no cover - only when a handler ignores cancellation
                self._server.force_exit = True
                thread.join(self._startup_timeout)
        self._url = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
