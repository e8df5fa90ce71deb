"""Jobs: what a web app asks us to deliver, validated before Redis is touched.

A :class:`Job` is immutable: its id and idempotency key are minted once, at enqueue (a caller's key wins), and
never change across retries or replays. Its ``params`` are one of the two Refold operations the dispatcher
speaks. The job's JSON (``Job.to_json``) is what Redis stores and what a dead letter keeps; its
``fingerprint`` tells "the same job enqueued twice" from "the same key reused for a different job".
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Annotated, Any, Literal

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
    # Measured once while validating, so the hot enqueue path serialises the payload only once more.
    _payload_bytes: int | None = PrivateAttr(default=None)

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
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str | bytes) -> Job:
        try:
            return cls.model_validate_json(text)
        except PydanticValidationError as exc:
            raise ValidationError(
                f"not a valid job record: {exc.error_count()} problem(s): {exc.errors()[0]['msg']}"
            ) from exc

    def fingerprint(self) -> str:
        """Hash of what would be sent: equal for the same job enqueued twice, different for another job."""
        canonical = json.dumps(self.params.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:32]

    def payload_size(self) -> int:
        """The payload's size as compact UTF-8 JSON (what the size limit counts)."""
        if self._payload_bytes is None:
            payload = self.params.payload if isinstance(self.params, TriggerEventParams) else None
            self._payload_bytes = _json_size(payload) if payload is not None else 0
        return self._payload_bytes


def _json_size(value: object) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def new_job_id() -> str:
    """Job ids are also Celery task ids, so Flower shows one task per job across all its attempts."""
    return str(uuid.uuid4())


def _optional_header(argument: str, value: object) -> str | None:
    return None if value is None else validate_header_value(argument, value)


def _key_or_mint(idempotency_key: str | None) -> str:
    return validate_idempotency_key(idempotency_key) if idempotency_key is not None else f"rd-{uuid.uuid4().hex}"


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
    checked_payload = validate_payload(payload)
    size = _json_size(checked_payload)
    if max_payload_bytes is not None and size > max_payload_bytes:
        raise ValidationError(f"payload is {size} bytes as JSON; the limit is {max_payload_bytes}")
    params = TriggerEventParams(
        event=validate_event_name(event),
        linked_account_id=validate_linked_account_id(linked_account_id),
        payload=checked_payload,
        config_id=_optional_header("config_id", config_id),
        slug=_optional_header("slug", slug),
        instance_tag=_optional_header("instance_tag", instance_tag),
    )
    job = Job(id=new_job_id(), idempotency_key=_key_or_mint(idempotency_key), created_at=time.time(), params=params)
    job._payload_bytes = size
    return job


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
    return Job(id=new_job_id(), idempotency_key=_key_or_mint(idempotency_key), created_at=time.time(), params=params)
