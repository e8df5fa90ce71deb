"""The public names are a promise: this test pins them, and proves importing them stays light."""

from __future__ import annotations

import subprocess
import sys

import refold_dispatch
from tests.support import ROOT

EXPECTED = {
    "AsyncDispatcher", "AsyncRefoldClient", "AuthError", "ConfigurationError", "DeadLetter", "DeadLetterFilter",
    "DeadLetterNotFoundError", "DeadLetterQueue", "DeadLetteredError", "Dispatcher", "EnqueueError",
    "IdempotencyConflictError", "Job", "LinkedAccount", "LinkedAccountPage", "PartialEnqueueError", "PermanentError",
    "RateLimitedError", "Receipt", "RefoldClient", "RefoldDispatchError", "RefoldError", "ReplayResult", "SessionToken",
    "Settings", "TransientError", "TriggerEventResult", "ValidationError", "__version__", "get_settings",
    "trigger_event_job", "upsert_linked_account_job",
}  # fmt: skip


def test_public_names_are_pinned() -> None:
    assert set(refold_dispatch.__all__) == EXPECTED
    for name in EXPECTED:
        assert hasattr(refold_dispatch, name), name


def test_every_error_descends_from_the_root() -> None:
    for name in EXPECTED:
        value = getattr(refold_dispatch, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, refold_dispatch.RefoldDispatchError), name


def test_web_apps_do_not_import_celery() -> None:
    code = "import sys, refold_dispatch; print('celery' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "False"
