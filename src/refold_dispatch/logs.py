"""Structured logging: one line per delivery attempt, as key=value for people or JSON for log pipelines.

structlog renders our events and hands them to the standard library, so Celery's own log handling (files,
``--loglevel``, Flower) keeps working. ``REFOLD_LOG_FORMAT=json`` switches to one JSON object per line.
Nothing we log carries the API key or a payload; :func:`redact` is the last line of defence for free text.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

from refold_dispatch.config import Settings

_state = {"configured": False}
# Loggers whose per-request or per-task INFO lines repeat our delivery_attempt line; warnings and errors stay.
# Celery's "Task ...[id] received" line stays: it tells which worker took a message before any attempt ends
# (the reliability suite reads it to know what a killed worker held).
QUIETED_LOGGERS = ("httpx", "celery.app.trace")


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` masked."""
    if not secret:
        return text
    return text.replace(secret, "[redacted]")


def _secret_scrubber(secret: str | None) -> Any:
    def scrub(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        if secret:
            for key, value in event_dict.items():
                if isinstance(value, str) and secret in value:
                    event_dict[key] = redact(value, secret)
        return event_dict

    return scrub


def configure_logging(settings: Settings) -> None:
    """Configure structlog once per process (idempotent)."""
    if _state["configured"]:
        return
    secret = settings.api_key.get_secret_value() if settings.api_key else None
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if settings.log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _secret_scrubber(secret),
            renderer,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(settings.log_level.upper())),
        cache_logger_on_first_use=True,
    )
    # httpx logs every request at INFO, Celery every task finished; our one line per attempt already says it,
    # with more evidence.
    for chatty in QUIETED_LOGGERS:
        logging.getLogger(chatty).setLevel(logging.WARNING)
    _state["configured"] = True
