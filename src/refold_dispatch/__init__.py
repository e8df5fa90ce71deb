"""refold-dispatch: reliable background delivery of events and linked-account data to Refold."""

from refold_dispatch.config import Settings, get_settings
from refold_dispatch.errors import (
    AuthError,
    ConfigurationError,
    DeadLetteredError,
    EnqueueError,
    IdempotencyConflictError,
    PermanentError,
    RateLimitedError,
    RefoldDispatchError,
    RefoldError,
    TransientError,
    ValidationError,
)

__version__ = "0.1.0"

__all__ = [
    "AuthError",
    "ConfigurationError",
    "DeadLetteredError",
    "EnqueueError",
    "IdempotencyConflictError",
    "PermanentError",
    "RateLimitedError",
    "RefoldDispatchError",
    "RefoldError",
    "Settings",
    "TransientError",
    "ValidationError",
    "__version__",
    "get_settings",
]
