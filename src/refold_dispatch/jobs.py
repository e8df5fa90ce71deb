"""Jobs: what a web app asks us to deliver, validated before Redis is touched.

A :class:`Job` is immutable: its id and idempotency key are minted once, at enqueue (a caller's key wins), and
never change across retries or replays. Its ``params`` are one of the two Refold operations the dispatcher
speaks. The job's JSON (``Job.to_json``) is what Redis stores and what a dead letter keeps; its
``fingerprint`` tells "the same job enqueued twice" from "the same key reused for a different job".
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr
from pydantic import ValidationError as PydanticValidationError

from refold_dispatch.errors import ValidationError
from refold_dispatch.validation import (
    normalise_udf,
    validate_account_name,
    validate_event_name,
    validate_header_value,
    validate_idempotency_key,
    validate_linked_account_id,
    validate_payload,
    validate_your_app,
)

EVENT = "event"
UPSERT = "upsert"
_Model = TypeVar("_Model", bound=BaseModel)


class TriggerEventParams(BaseModel):
    """``POST /api/v2/public/event/trigger``: fire an event for one linked account."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["event"] = "event"
    event: str
    linked_account_id: str
    payload: dict[str, Any] = Field(default_factory=dict)
    config_id: str | None = None
    slug: str | None = None
    instance_tag: str | None = None


class UpsertLinkedAccountParams(BaseModel):
    """``PUT /api/v2/public/linked-account``: create or update a linked account."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["upsert"] = "upsert"
    linked_account_id: str
    name: str | None = None
    udf: dict[str, str] | None = None
    your_app: dict[str, Any] | None = None


JobParams = Annotated[TriggerEventParams | UpsertLinkedAccountParams, Field(discriminator="kind")]


class Job(BaseModel):
    """One unit of delivery: an id, an idempotency key, when it was made, and what to send."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    idempotency_key: str
    created_at: float
    params: JobParams
    # All three derive from the payload's canonical JSON, made once while validating (the enqueue hot path).
    _payload_bytes: int | None = PrivateAttr(default=None)
    _fingerprint: str | None = PrivateAttr(default=None)
    _payload_json: str | None = PrivateAttr(default=None)

    def __eq__(self, other: object) -> bool:
        # Equal jobs have equal fields; the private size cache is not part of a job's identity.
        if not isinstance(other, Job):
            return NotImplemented
        return (self.id, self.idempotency_key, self.created_at, self.params) == (
            other.id,
            other.idempotency_key,
            other.created_at,
            other.params,
        )

    def __hash__(self) -> int:
        return hash((self.id, self.idempotency_key))

    @property
    def kind(self) -> str:
        return self.params.kind

    @property
    def linked_account_id(self) -> str:
        return self.params.linked_account_id

    def to_json(self) -> str:
        """The job as stored in Redis. A trigger-event job built here has its payload's canonical JSON at hand
        (made while validating): the record is assembled around it rather than serialised again, the same JSON
        value as ``model_dump_json`` (a test pins the two), on the enqueue hot path."""
        params = self.params
        payload_json: str | None = self._private().get("_payload_json")
        if payload_json is None or not isinstance(params, TriggerEventParams):
            return self.model_dump_json()
        return (
            f'{{"id":{_json_text(self.id)},"idempotency_key":{_json_text(self.idempotency_key)},'
            f'"created_at":{self.created_at!r},"params":{{"kind":"event","event":{_json_text(params.event)},'
            f'"linked_account_id":{_json_text(params.linked_account_id)},"payload":{payload_json},'
            f'"config_id":{_json_or_null(params.config_id)},"slug":{_json_or_null(params.slug)},'
            f'"instance_tag":{_json_or_null(params.instance_tag)}}}}}'
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        try:
            return cls.model_validate_json(text)
        except PydanticValidationError as exc:
            raise ValidationError(
                f"not a valid job record: {exc.error_count()} problem(s): {exc.errors()[0]['msg']}"
            ) from exc

    def fingerprint(self) -> str:
        """Hash of what would be sent: equal for the same job enqueued twice (whatever the payload's key order),
        different for another job. Replay recomputes it from the stored job, so it is a pure function of
        ``params``."""
        # Private attributes are read from pydantic's dict directly: ``self._fingerprint`` goes through
        # ``__getattr__`` after a failed lookup, several times slower, and this runs per job at enqueue.
        cached = self._private()
        fingerprint: str | None = cached.get("_fingerprint")
        if fingerprint is None:
            params = self.params
            if isinstance(params, TriggerEventParams):
                fingerprint = _event_fingerprint(params, canonical_json(params.payload))
            else:
                canonical = json.dumps(params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
                fingerprint = _digest(canonical)
            cached["_fingerprint"] = fingerprint
        return fingerprint

    def payload_size(self) -> int:
        """The payload's size as compact UTF-8 JSON (what the size limit counts)."""
        cached = self._private()
        size: int | None = cached.get("_payload_bytes")
        if size is None:
            payload = self.params.payload if isinstance(self.params, TriggerEventParams) else None
            size = len(canonical_json(payload).encode()) if payload is not None else 0
            cached["_payload_bytes"] = size
        return size

    def _private(self) -> dict[str, Any]:
        private = self.__pydantic_private__
        if private is None:  # a job assembled without its private cache (see _assemble)
            private = {}
            object.__setattr__(self, "__pydantic_private__", private)
        return private


def _assemble(model: type[_Model], values: dict[str, Any], private: dict[str, Any] | None = None) -> _Model:
    """``model.model_construct(**values)`` without its per-call bookkeeping (defaults, aliases, private
    defaults): ``values`` must name every field, already validated. Enqueue builds two models per job on the
    web request path, and this is several times cheaper; a test pins the result equal to ``model_construct``'s."""
    instance = model.__new__(model)
    object.__setattr__(instance, "__dict__", values)
    object.__setattr__(instance, "__pydantic_fields_set__", set(values))
    object.__setattr__(instance, "__pydantic_extra__", None)
    object.__setattr__(instance, "__pydantic_private__", private)
    return instance


# Encoders built once: ``json.dumps`` with options builds a new encoder on every call, and these run per job on
# the enqueue path. ``encode`` keeps no state between calls, so one instance serves every thread.
_CANONICAL_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"))
_COMPACT_ENCODER = json.JSONEncoder(separators=(",", ":"))


# A str as a JSON string literal, non-ASCII kept (as pydantic writes it): json's C encoder, no per-call options.
_json_text: Callable[[str], str] = json.encoder.encode_basestring


def _json_or_null(value: str | None) -> str:
    return "null" if value is None else _json_text(value)


def canonical_json(value: object) -> str:
    """Compact JSON with sorted keys: the form sizes and fingerprints are computed from."""
    return _CANONICAL_ENCODER.encode(value)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _event_fingerprint(params: TriggerEventParams, payload_json: str) -> str:
    head = [params.kind, params.event, params.linked_account_id, params.config_id, params.slug, params.instance_tag]
    return _digest(_COMPACT_ENCODER.encode(head) + payload_json)


def _checked_payload(payload: object, max_bytes: int | None) -> tuple[dict[str, Any], str, int]:
    """The payload as a fresh plain-JSON dict, its canonical JSON, and that JSON's size in UTF-8 bytes.

    Fast path: one C-accelerated dump and load, kept only if the round trip changed nothing (no int keys turned
    into strings, no tuples into lists). Anything else takes the thorough walk of ``validate_payload``, which
    names exactly what is wrong (or converts what is harmless).
    """
    fresh: Any = None
    if isinstance(payload, dict):
        try:
            text = canonical_json(payload)
            size = len(text.encode())  # a lone surrogate fails here, not at send time
            fresh = json.loads(text) if "NaN" not in text and "Infinity" not in text else None
        except (TypeError, ValueError, RecursionError):
            fresh = None
        if fresh is not None and fresh != payload:
            fresh = None
    if fresh is None:
        fresh = validate_payload(payload)
        text = canonical_json(fresh)
        size = len(text.encode())
    if max_bytes is not None and size > max_bytes:
        raise ValidationError(f"payload is {size} bytes as JSON; the limit is {max_bytes}")
    return fresh, text, size


def new_job_id() -> str:
    """Job ids are also Celery task ids, so Flower shows one task per job across all its attempts."""
    return _new_ids()[0]


def _new_ids() -> tuple[str, str]:
    """A random (version 4) UUID for the job and a minted idempotency key, from one read of the OS's random
    source: ``uuid4()`` twice costs two system calls and two UUID objects on the web request path. (Not
    ``random``: its state is copied into every forked web worker, which would then mint the same ids.)"""
    raw = bytearray(os.urandom(32))
    raw[6] = (raw[6] & 0x0F) | 0x40  # version 4
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw[:16].hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", "rd-" + raw[16:].hex()


def _new_job(
    params: TriggerEventParams | UpsertLinkedAccountParams,
    idempotency_key: str | None,
    private: dict[str, Any] | None = None,
) -> Job:
    job_id, minted_key = _new_ids()
    key = minted_key if idempotency_key is None else validate_idempotency_key(idempotency_key)
    # Every field was validated by hand just now: pydantic need not validate it all again.
    values = {"id": job_id, "idempotency_key": key, "created_at": time.time(), "params": params}
    return _assemble(Job, values, private or {})


def _optional_header(argument: str, value: object) -> str | None:
    return None if value is None else validate_header_value(argument, value)


def trigger_event_job(
    event: str,
    linked_account_id: str,
    payload: dict[str, Any] | None = None,
    *,
    idempotency_key: str | None = None,
    config_id: str | None = None,
    slug: str | None = None,
    instance_tag: str | None = None,
    max_payload_bytes: int | None = None,
) -> Job:
    """Validate and build a trigger-event job; raises :class:`ValidationError` on bad input."""
    checked_payload, payload_json, payload_bytes = _checked_payload(payload, max_payload_bytes)
    params = _assemble(
        TriggerEventParams,
        {
            "kind": EVENT,
            "event": validate_event_name(event),
            "linked_account_id": validate_linked_account_id(linked_account_id),
            "payload": checked_payload,
            "config_id": _optional_header("config_id", config_id),
            "slug": _optional_header("slug", slug),
            "instance_tag": _optional_header("instance_tag", instance_tag),
        },
    )
    cache = {
        "_payload_bytes": payload_bytes,
        "_fingerprint": _event_fingerprint(params, payload_json),
        "_payload_json": payload_json,
    }
    return _new_job(params, idempotency_key, cache)


def upsert_linked_account_job(
    linked_account_id: str,
    *,
    name: str | None = None,
    udf: dict[str, Any] | None = None,
    your_app: dict[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> Job:
    """Validate and build an upsert-linked-account job; raises :class:`ValidationError` on bad input."""
    params = UpsertLinkedAccountParams(
        linked_account_id=validate_linked_account_id(linked_account_id),
        name=None if name is None else validate_account_name(name),
        udf=None if udf is None else normalise_udf(udf),
        your_app=None if your_app is None else validate_your_app(your_app),
    )
    return _new_job(params, idempotency_key)
