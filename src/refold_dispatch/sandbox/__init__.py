"""A local stand-in for Refold's public API: a real HTTP server (Starlette on uvicorn) for dev, demos, tests
and benchmarks, with no account and no network.

It speaks Refold's paths, headers, status codes and error envelopes for events, linked accounts and session
tokens; enforces the API key and a GCRA rate limit; injects faults on demand; and records every request so a
test can ask what was delivered, how often, and how fast. See :mod:`refold_dispatch.sandbox.control` for the
``/_sandbox`` admin endpoints.

Needs the ``sandbox`` extra (``starlette``, ``uvicorn[standard]``).
"""

from refold_dispatch.sandbox.admin import SandboxAdmin
from refold_dispatch.sandbox.app import create_app
from refold_dispatch.sandbox.config import DEFAULT_API_KEY, DEFAULT_KNOWN_EVENTS, SandboxConfig
from refold_dispatch.sandbox.faults import FaultConfig
from refold_dispatch.sandbox.ratelimit import Gcra
from refold_dispatch.sandbox.recorder import RequestRecord, max_in_window
from refold_dispatch.sandbox.server import DEFAULT_HOST, DEFAULT_PORT, SandboxServer, run_sandbox

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_HOST",
    "DEFAULT_KNOWN_EVENTS",
    "DEFAULT_PORT",
    "FaultConfig",
    "Gcra",
    "RequestRecord",
    "SandboxAdmin",
    "SandboxConfig",
    "SandboxServer",
    "create_app",
    "max_in_window",
    "run_sandbox",
]
