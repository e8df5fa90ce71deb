"""Input checks shared by the Refold client and the enqueue API, run before anything is sent or stored.

Every function takes the caller's value, raises :class:`~refold_dispatch.errors.ValidationError` with a
message that names the argument and the rule it broke, and otherwise returns the value to send (unchanged,
or in the exact form it will travel in). Messages quote ids and names (they are not secrets) but never
payload values, which may hold personal data.

Values that travel in HTTP headers (linked account ids, ``config_id``, ``slug``, ``instance_tag``, the
idempotency key) must be printable ASCII without surrounding whitespace: HTTP headers carry ASCII only,
servers strip surrounding whitespace (so Refold would see a different id), and an illegal header value makes
the HTTP library raise an error that quotes every header it was given.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from refold_dispatch.errors import ValidationError

__all__ = [
    "MAX_HEADER_VALUE_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_PAYLOAD_DEPTH",
    "normalise_udf",
    "validate_account_name",
    "validate_event_name",
    "validate_header_value",
    "validate_idempotency_key",
    "validate_linked_account_id",
    "validate_page_number",
    "validate_page_size",
    "validate_payload",
    "validate_your_app",
]

# Refold stores ids as strings without a documented limit; 255 is the common database key width, and anything
# longer is almost certainly a payload passed in the wrong argument.
MAX_ID_LENGTH = 255
# Header values other than ids (config_id, slug, instance_tag, idempotency keys) are labels, not documents.
MAX_HEADER_VALUE_LENGTH = 255
# Real workflow payloads nest a handful of levels; far deeper is a cycle or a mistake, and stopping early
# keeps the walk clear of Python's recursion limit.
MAX_PAYLOAD_DEPTH = 64
# How much of an offending id or name to quote in a message: enough to recognise it, not a wall of text.
_QUOTE_CHARS = 60

# Ids that a URL path would collapse ("/linked-account/.." is the parent collection, not an account).
_DOT_SEGMENTS = frozenset({".", ".."})
# Printable ASCII without surrounding spaces: what nearly every label is. One C-level match accepts it (the
# enqueue hot path); anything else takes the character-by-character checks, which name what is wrong.
_PLAIN_ASCII_LABEL = re.compile(r"[!-~](?:[ -~]*[!-~])?")

JsonScalar = str | int | float | bool | None


def _quote(value: str) -> str:
    return repr(value if len(value) <= _QUOTE_CHARS else value[:_QUOTE_CHARS] + "…")


def _require_str(argument: str, value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError(f"{argument} must be a string, got {type(value).__name__}")
    return value


def _require_utf8(argument: str, value: str) -> None:
    # A lone surrogate cannot be encoded as UTF-8: it would fail at send time, far from the caller's mistake.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError(f"{argument} contains a lone surrogate and cannot be encoded as UTF-8") from None


def _check_label(argument: str, value: object, *, max_length: int) -> str:
    """A non-empty single-line string: no control characters, no surrounding whitespace, bounded length."""
    text = _require_str(argument, value)
    if len(text) <= max_length and _PLAIN_ASCII_LABEL.fullmatch(text):
        return text
    if not text.strip():
        raise ValidationError(f"{argument} must not be empty or whitespace")
    if len(text) > max_length:
        raise ValidationError(f"{argument} is {len(text)} characters long; the limit is {max_length}")
    for position, char in enumerate(text):
        if unicodedata.category(char) == "Cc":
            raise ValidationError(
                f"{argument} {_quote(text)} contains a control character (U+{ord(char):04X}) at position {position}"
            )
    if text != text.strip():
        raise ValidationError(f"{argument} {_quote(text)} has leading or trailing whitespace")
    _require_utf8(argument, text)
    return text


def validate_header_value(argument: str, value: object, *, max_length: int = MAX_HEADER_VALUE_LENGTH) -> str:
    """A value Refold receives in an HTTP header: a non-empty label of printable ASCII."""
    text = _check_label(argument, value, max_length=max_length)
    if _PLAIN_ASCII_LABEL.fullmatch(text):
        return text
    for position, char in enumerate(text):
        if not " " <= char <= "~":
            raise ValidationError(
                f"{argument} {_quote(text)} contains a non-ASCII character at position {position}; "
                "it travels in an HTTP header, which carries ASCII only"
            )
    return text


def validate_linked_account_id(value: object, *, argument: str = "linked_account_id") -> str:
    """A linked account id: 1-255 printable ASCII characters, no surrounding whitespace, not ``.``/``..``."""
    text = validate_header_value(argument, value, max_length=MAX_ID_LENGTH)
    if text in _DOT_SEGMENTS:
        raise ValidationError(f"{argument} {text!r} would be read as a URL path segment, not an id")
    return text


def validate_idempotency_key(value: object) -> str:
    """A caller-supplied idempotency key: it is sent as the ``Idempotency-Key`` header on every attempt."""
    return validate_header_value("idempotency_key", value)


def validate_event_name(value: object) -> str:
    """The name of an event defined in Refold's dashboard: non-empty, single-line, at most 255 characters."""
    return _check_label("event", value, max_length=MAX_ID_LENGTH)


def validate_account_name(value: object) -> str:
    """A linked account's display name. Omit it (None) to leave the stored name unchanged."""
    return _check_label("name", value, max_length=MAX_ID_LENGTH)


def _positive_int(argument: str, value: object) -> int:
    # bool is an int subclass, but page=True is a bug, not page 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(f"{argument} must be an integer, got {type(value).__name__}")
    if value < 1:
        raise ValidationError(f"{argument} must be at least 1, got {value}")
    return value


def validate_page_number(value: object) -> int:
    """A 1-based page number for Refold's paginated lists."""
    return _positive_int("page", value)


def validate_page_size(value: object) -> int:
    """How many items per page: a positive integer (Refold documents no maximum)."""
    return _positive_int("limit", value)


def _json_copy(value: object, where: str, depth: int) -> Any:
    """A plain-JSON copy of ``value`` (mappings as dicts, sequences as lists), or a ValidationError naming the
    first thing that would not survive a JSON round trip unchanged.

    Copying rather than only checking means json.dumps never meets a Mapping that is not a dict, and a caller
    mutating its payload after the call cannot change what was validated.
    """
    if depth > MAX_PAYLOAD_DEPTH:
        raise ValidationError(f"{where} is nested deeper than {MAX_PAYLOAD_DEPTH} levels (a cycle?)")
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{where} is {value!r}, which JSON cannot represent")
        return value
    if isinstance(value, str):
        _require_utf8(where, value)
        return value
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            # json.dumps would silently turn 1 into "1": the receiver would see different keys than were sent.
            if not isinstance(key, str):
                raise ValidationError(f"{where} has a {type(key).__name__} key {key!r}; JSON object keys are strings")
            _require_utf8(f"{where} key", key)
            copy[key] = _json_copy(item, f"{where}[{key!r}]", depth + 1)
        return copy
    if isinstance(value, list | tuple):
        return [_json_copy(item, f"{where}[{index}]", depth + 1) for index, item in enumerate(value)]
    raise ValidationError(f"{where} is a {type(value).__name__}, which is not JSON; convert it before sending")


def validate_payload(value: object, *, max_bytes: int | None = None) -> dict[str, Any]:
    """An event payload: a JSON object (a mapping with string keys) of JSON values; None means ``{}``.

    Returns a plain-JSON copy (dicts and lists) of what was validated, which is what is sent.
    ``max_bytes`` bounds the compact UTF-8 JSON size; the client leaves it unset, the enqueue API passes its
    configured limit so oversized jobs are refused at the door.
    """
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(f"payload must be a JSON object (a dict), got {type(value).__name__}")
    payload: dict[str, Any] = _json_copy(value, "payload", 0)
    if max_bytes is not None:
        size = len(json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))
        if size > max_bytes:
            raise ValidationError(f"payload is {size} bytes as JSON; the limit is {max_bytes}")
    return payload


def normalise_udf(value: object) -> dict[str, str]:
    """User-defined fields as Refold's spec types them: string keys to string values.

    Numbers and booleans are accepted and sent as ``str(value)`` (so ``True`` becomes ``"True"``); None,
    containers and other objects are rejected because there is no single string form a caller would expect.
    """
    if not isinstance(value, Mapping):
        raise ValidationError(f"udf must be a mapping of names to values, got {type(value).__name__}")
    normalised: dict[str, str] = {}
    for key, item in value.items():
        name = _check_label("udf key", key, max_length=MAX_ID_LENGTH)
        if isinstance(item, str):
            _require_utf8(f"udf[{name!r}]", item)
            normalised[name] = item
        elif isinstance(item, float) and not math.isfinite(item):
            raise ValidationError(f"udf[{name!r}] is {item!r}, which has no meaningful string form")
        elif isinstance(item, bool | int | float):
            normalised[name] = str(item)
        else:
            raise ValidationError(
                f"udf[{name!r}] is a {type(item).__name__}; udf values must be str, int, float or bool"
            )
    return normalised


def validate_your_app(value: object) -> dict[str, Any]:
    """``your_app`` for an upsert: a mapping holding a non-empty ``auth_credentials`` mapping of strings.

    Refold rejects an empty ``your_app`` and one without ``auth_credentials``; other keys pass through as
    JSON.
    """
    if not isinstance(value, Mapping):
        raise ValidationError(f"your_app must be a mapping, got {type(value).__name__}")
    if not value:
        raise ValidationError("your_app must not be empty: omit it, or give it auth_credentials")
    credentials = value.get("auth_credentials")
    if not isinstance(credentials, Mapping) or not credentials:
        raise ValidationError("your_app must hold a non-empty auth_credentials mapping")
    for key, item in credentials.items():
        name = _check_label("your_app.auth_credentials key", key, max_length=MAX_ID_LENGTH)
        if not isinstance(item, str):
            # The value itself is a credential: name its type, never show it.
            raise ValidationError(f"your_app.auth_credentials[{name!r}] must be a string, got {type(item).__name__}")
        _require_utf8(f"your_app.auth_credentials[{name!r}]", item)
    your_app: dict[str, Any] = _json_copy(value, "your_app", 0)
    return your_app
