"""refold-dispatch: reliable background delivery of events and linked-account data to Refold.

Web apps enqueue with :class:`Dispatcher` / :class:`AsyncDispatcher`; Celery workers
(``celery -A refold_dispatch.worker worker``) deliver. Importing this package does not import Celery.
"""

from refold_dispatch.client import AsyncRefoldClient, RefoldClient
from refold_dispatch.config import Settings, get_settings
from refold_dispatch.dispatcher import AsyncDispatcher, Dispatcher, Receipt
from refold_dispatch.dlq import DeadLetter, DeadLetterFilter, DeadLetterQueue, ReplayResult
from refold_dispatch.errors import (
    AuthError,
    ConfigurationError,
    DeadLetteredError,
    DeadLetterNotFoundError,
    EnqueueError,
    IdempotencyConflictError,
    PartialEnqueueError,
    PermanentError,
    RateLimitedError,
    RefoldDispatchError,
    RefoldError,
    TransientError,
    ValidationError,
)
from refold_dispatch.jobs import Job, trigger_event_job, upsert_linked_account_job
from refold_dispatch.models import LinkedAccount, LinkedAccountPage, SessionToken, TriggerEventResult

__version__ = "0.1.0"

__all__ = [
    "AsyncDispatcher",
    "AsyncRefoldClient",
    "AuthError",
    "ConfigurationError",
    "DeadLetter",
    "DeadLetterFilter",
    "DeadLetterNotFoundError",
    "DeadLetterQueue",
    "DeadLetteredError",
    "Dispatcher",
    "EnqueueError",
    "IdempotencyConflictError",
    "Job",
    "LinkedAccount",
    "LinkedAccountPage",
    "PartialEnqueueError",
    "PermanentError",
    "RateLimitedError",
    "Receipt",
    "RefoldClient",
    "RefoldDispatchError",
    "RefoldError",
    "ReplayResult",
    "SessionToken",
    "Settings",
    "TransientError",
    "TriggerEventResult",
    "ValidationError",
    "__version__",
    "get_settings",
    "trigger_event_job",
    "upsert_linked_account_job",
]
