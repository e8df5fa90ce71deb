"""What Refold answers, as typed values: one pydantic model per successful response.

Every result carries the HTTP ``status_code`` and Refold's ``request_id`` (from the ``x-request-id`` or
``request-id`` header, else the body) because the worker records both in its delivery ledger; they are
excluded from serialisation, which is the response body's shape. Models tolerate fields they do not know
(``extra="allow"``): Refold adds fields without notice, and a new field must not fail a delivery that
succeeded.
Field names are snake_case; Refold's camelCase names are accepted as aliases.

Session tokens are credentials: :class:`SessionToken` keeps them as :class:`~pydantic.SecretStr` and hides
unknown fields from its ``repr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

__all__ = [
    "DeleteResult",
    "LinkedAccount",
    "LinkedAccountPage",
    "RefoldResult",
    "SessionToken",
    "TriggerEventResult",
    "UdfEntry",
]


class _RefoldModel(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class RefoldResult(_RefoldModel):
    """Fields every result shares: what the worker writes to its delivery ledger."""

    status_code: int = Field(exclude=True, description="HTTP status of the response.")
    request_id: str | None = Field(default=None, exclude=True, description="Refold's id for the request.")


class TriggerEventResult(RefoldResult):
    """Refold queued the event (``{"message": "Webhook Fired Success"}``); no execution id comes back.

    A 2xx means the event was accepted even when the body is empty or not JSON (then ``message`` is None and
    ``body_text`` keeps the start of it): failing there would make the worker send the event again.
    """

    message: str | None = None
    body_text: str | None = Field(default=None, description="The raw body when it was not a JSON object.")


class UdfEntry(_RefoldModel):
    """One user-defined field as Refold stores it."""

    key_name: str
    key_value: str | None = None

    @field_validator("key_value", mode="before")
    @classmethod
    def _number_as_text(cls, value: object) -> object:
        # The spec types key_value as a string, but a number stored by an older client is still a valid value.
        if isinstance(value, bool | int | float):
            return str(value)
        return value


class LinkedAccount(RefoldResult):
    """A linked account (Refold's ``LinkedAccount`` schema), plus ``new_account`` when an upsert created it.

    Every field is optional because Refold strips some of them on some routes; ``environment`` stays a plain
    string so a new environment name on Refold's side cannot fail a successful upsert.
    """

    id: str | None = Field(default=None, alias="_id")
    associated_org: str | None = None
    account_id: str | None = None
    name: str | None = None
    environment: str | None = None
    udf: list[UdfEntry] = Field(default_factory=list)
    is_seed: bool | None = None
    tenant_account_id: str | None = None
    integrations: list[dict[str, Any]] | None = None
    created_at: datetime | None = Field(default=None, alias="createdAt")
    updated_at: datetime | None = Field(default=None, alias="updatedAt")
    new_account: bool | None = None

    @field_validator("udf", mode="before")
    @classmethod
    def _udf_object_as_entries(cls, value: object) -> object:
        # Older responses (and our own requests) use an object of key/values; read it as the list form.
        if value is None:
            return []
        if isinstance(value, Mapping):
            return [{"key_name": key, "key_value": item} for key, item in value.items()]
        return value


class LinkedAccountPage(RefoldResult):
    """One page of ``GET /linked-account``: the accounts plus Refold's pagination metadata."""

    docs: list[LinkedAccount]
    total_docs: int | None = Field(default=None, alias="totalDocs")
    limit: int | None = None
    page: int | None = None
    total_pages: int | None = Field(default=None, alias="totalPages")
    has_next_page: bool = Field(default=False, alias="hasNextPage")
    has_prev_page: bool = Field(default=False, alias="hasPrevPage")
    next_page: int | None = Field(default=None, alias="nextPage")
    prev_page: int | None = Field(default=None, alias="prevPage")
    paging_counter: int | None = Field(default=None, alias="pagingCounter")


class DeleteResult(RefoldResult):
    """Refold deleted the account (``{"message": "User deleted successfully"}``)."""

    message: str | None = None


class SessionToken(RefoldResult):
    """A session token for a linked account's frontend.

    ``token`` and ``refresh_token`` are credentials: read them with :meth:`token_value` and
    :meth:`refresh_token_value`. ``expires_at`` is absolute (aware UTC), computed from ``expires_in`` and the
    time the response was received, because a relative lifetime is wrong as soon as it is stored.
    """

    token: SecretStr
    refresh_token: SecretStr | None = None
    expires_in: int | None = Field(default=None, ge=0)
    refresh_expires_in: int | None = Field(default=None, ge=0)
    is_api_token: bool | None = None
    received_at: datetime = Field(description="When the response arrived (aware UTC); expiries count from it.")

    @field_validator("token")
    @classmethod
    def _token_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("token is empty")
        return value

    @field_validator("received_at")
    @classmethod
    def _received_at_aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("received_at must be timezone-aware")
        return value.astimezone(UTC)

    @property
    def expires_at(self) -> datetime | None:
        """When the token stops working (aware UTC), or None when Refold did not say."""
        if self.expires_in is None:
            return None
        return self.received_at + timedelta(seconds=self.expires_in)

    @property
    def refresh_expires_at(self) -> datetime | None:
        """When the refresh token stops working (aware UTC), or None when Refold did not say."""
        if self.refresh_expires_in is None:
            return None
        return self.received_at + timedelta(seconds=self.refresh_expires_in)

    def token_value(self) -> str:
        """The raw session token, to hand to the frontend. Never log it."""
        return self.token.get_secret_value()

    def refresh_token_value(self) -> str | None:
        """The raw refresh token, if Refold sent one. Never log it."""
        return None if self.refresh_token is None else self.refresh_token.get_secret_value()

    def is_expired(self, now: datetime, *, leeway: timedelta = timedelta(0)) -> bool:
        """Whether the token has expired at ``now`` (aware), counting ``leeway`` as already gone."""
        expires_at = self.expires_at
        return expires_at is not None and now + leeway >= expires_at

    def __repr_args__(self) -> Any:
        # Unknown fields of a token response may be credentials too (an access token under a new name): show
        # their names only.
        for name, value in super().__repr_args__():
            if name in type(self).model_fields:
                yield name, value
        if self.model_extra:
            yield "extra_fields", sorted(self.model_extra)
