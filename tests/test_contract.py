"""Every request the client can build, validated against Refold's OpenAPI 3.1 spec with openapi-core.

The spec is Refold's (``../shared/refold-openapi.yaml`` beside the repository is the authority;
``REFOLD_OPENAPI_SPEC`` overrides the path). A copy is kept in ``tests/contract/`` so these tests run wherever
the repository is cloned, and they fail, naming the fix, if the copy has drifted from the authority.

Requests are captured from the real client on an ``httpx.MockTransport`` and handed to openapi-core through a
small adapter for its request protocol, so what is validated is exactly what would go on the wire. Negative
tests prove the validator would catch a wrong body, a bad query value or a missing key header.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_core import Config, OpenAPI
from openapi_core.datatypes import RequestParameters
from openapi_core.templating.paths.exceptions import OperationNotFound
from openapi_core.templating.paths.finders import APICallPathFinder
from openapi_core.validation.request.exceptions import (
    ParameterValidationError,
    RequestBodyValidationError,
    SecurityValidationError,
)
from openapi_core.validation.request.validators import V31RequestValidator
from openapi_core.validation.response.exceptions import InvalidData
from openapi_core.validation.response.validators import V31ResponseValidator
from pydantic import SecretStr
from werkzeug.datastructures import Headers, ImmutableMultiDict

from refold_dispatch.client import RefoldClient
from refold_dispatch.config import DEFAULT_BASE_URL, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
AUTHORITY_PATH = Path(os.environ.get("REFOLD_OPENAPI_SPEC", REPO_ROOT.parent / "shared" / "refold-openapi.yaml"))
VENDORED_PATH = REPO_ROOT / "tests" / "contract" / "refold-openapi.yaml"
API_KEY = "tk_contract_test_key"

# Refold's spec names its security schemes "Org API Key" and "Linked Account Token"; OpenAPI allows only
# [a-zA-Z0-9._-] in component names, so the strict spec check rejects the file. Requests still validate
# against it, so the check is switched off and test_spec_defects_are_only_the_known_ones pins the defect instead.
KNOWN_SPEC_DEFECT = "does not match '^[a-zA-Z0-9._-]+$'"


class HttpxOpenAPIRequest:
    """openapi-core's request protocol over an ``httpx.Request``: host_url, path, method, parameters, body."""

    def __init__(self, request: httpx.Request) -> None:
        self._request = request
        cookies = SimpleCookie(request.headers.get("cookie", ""))
        self.parameters = RequestParameters(
            query=ImmutableMultiDict(list(request.url.params.multi_items())),
            header=Headers(list(request.headers.multi_items())),
            cookie=ImmutableMultiDict({name: morsel.value for name, morsel in cookies.items()}),
        )

    @property
    def host_url(self) -> str:
        return f"{self._request.url.scheme}://{self._request.url.netloc.decode('ascii')}"

    @property
    def path(self) -> str:
        # The path as sent (percent-encoded), so an id holding "/" stays one {linked_account_id} segment.
        return self._request.url.raw_path.decode("ascii").split("?", 1)[0]

    @property
    def method(self) -> str:
        return self._request.method.lower()

    @property
    def body(self) -> bytes | None:
        return self._request.content or None

    @property
    def content_type(self) -> str:
        return self._request.headers.get("content-type", "").lower()


class HttpxOpenAPIResponse:
    """openapi-core's response protocol over an ``httpx.Response``."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status_code(self) -> int:
        return self._response.status_code

    @property
    def content_type(self) -> str:
        return self._response.headers.get("content-type", "").lower()

    @property
    def headers(self) -> Headers:
        return Headers(list(self._response.headers.multi_items()))

    @property
    def data(self) -> bytes | None:
        return self._response.content or None


@pytest.fixture(scope="module")
def spec_path() -> Path:
    """Refold's spec where it is present (and the kept copy must equal it), else the kept copy."""
    if AUTHORITY_PATH.is_file():
        assert VENDORED_PATH.read_bytes() == AUTHORITY_PATH.read_bytes(), (
            f"{VENDORED_PATH} has drifted from Refold's spec at {AUTHORITY_PATH}: copy it over and rerun"
        )
        return AUTHORITY_PATH
    return VENDORED_PATH


@pytest.fixture(scope="module")
def openapi(spec_path: Path) -> OpenAPI:
    config = Config(
        spec_validator_cls=None,
        request_validator_cls=V31RequestValidator,
        response_validator_cls=V31ResponseValidator,
    )
    return OpenAPI.from_file_path(str(spec_path), config=config)


# Documented 200 bodies (from refold-api.md), so parsing tests elsewhere read realistic shapes.
ACCOUNT = {
    "_id": "6650f1a2b3c4d5e6f7a8b9c0",
    "associated_org": "org_42",
    "account_id": "acct-1",
    "name": "Acme Ltd",
    "environment": "test",
    "udf": [{"key_name": "plan", "key_value": "pro"}],
    "createdAt": "2026-06-01T10:00:00.000Z",
    "updatedAt": "2026-06-02T11:30:00.000Z",
    "new_account": True,
}
DOCUMENTED_BODIES: dict[tuple[str, str], Any] = {
    ("POST", "/api/v2/public/event/trigger"): {"message": "Webhook Fired Success"},
    ("PUT", "/api/v2/public/linked-account"): ACCOUNT,
    ("GET", "/api/v2/public/linked-account"): {
        "docs": [ACCOUNT],
        "totalDocs": 1,
        "limit": 50,
        "page": 1,
        "totalPages": 1,
        "hasNextPage": False,
        "hasPrevPage": False,
        # Refold sends "nextPage": null on the last page; see test_spec_rejects_a_null_next_page for why the
        # documented body here leaves the nulls out.
        "pagingCounter": 1,
    },
    ("GET", "account"): ACCOUNT,
    ("DELETE", "account"): {"message": "User deleted successfully"},
    ("POST", "/api/v2/public/session-token"): {
        "token": "eyJ.session",
        "refresh_token": "eyJ.refresh",
        "expires_in": 86400,
        "refresh_expires_in": 604800,
    },
}


def documented_response(request: httpx.Request) -> httpx.Response:
    key = (request.method, request.url.path)
    if key not in DOCUMENTED_BODIES:
        key = (request.method, "account")
    return httpx.Response(200, json=DOCUMENTED_BODIES[key])


class Capture:
    def __init__(self) -> None:
        self.exchanges: list[tuple[httpx.Request, httpx.Response]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        response = documented_response(request)
        self.exchanges.append((request, response))
        return response


@pytest.fixture
def capture() -> Capture:
    return Capture()


@pytest.fixture
def client(capture: Capture) -> Iterator[RefoldClient]:
    # The spec's server URL is the default base URL: the validator matches requests against it.
    settings = Settings(_env_file=None, api_key=SecretStr(API_KEY), base_url=DEFAULT_BASE_URL)
    with RefoldClient(settings, transport=httpx.MockTransport(capture)) as refold:
        yield refold


EVERY_REQUEST: list[tuple[str, str, Callable[[RefoldClient], object]]] = [
    (
        "trigger_event with every optional header",
        "triggerEvent",
        lambda c: c.trigger_event(
            "order.created",
            "acct-1",
            {"order_id": 42, "lines": [{"sku": "A", "qty": 2}], "gift": False, "note": None},
            config_id="cfg-1",
            slug="shopify",
            instance_tag="nightly-import",
            idempotency_key="idem-1",
        ),
    ),
    ("trigger_event minimal", "triggerEvent", lambda c: c.trigger_event("signup", "acct-1")),
    (
        "upsert_linked_account with every field",
        "upsertLinkedAccount",
        lambda c: c.upsert_linked_account(
            "acct-1",
            name="Acme Ltd",
            udf={"plan": "pro", "seats": 12, "ratio": 0.5, "beta": True},
            your_app={"auth_credentials": {"api_key": "customer-key", "region": "eu"}},
            idempotency_key="idem-2",
        ),
    ),
    ("upsert_linked_account minimal", "upsertLinkedAccount", lambda c: c.upsert_linked_account("acct-1")),
    ("get_linked_account", "getLinkedAccountById", lambda c: c.get_linked_account("acct-1")),
    ("get_linked_account with a slash", "getLinkedAccountById", lambda c: c.get_linked_account("team/a b")),
    ("delete_linked_account", "deleteLinkedAccount", lambda c: c.delete_linked_account("acct-1")),
    ("list_linked_accounts", "listLinkedAccounts", lambda c: c.list_linked_accounts(page=2, limit=25)),
    (
        "session_token force_refresh=false",
        "generateSessionTokenForLinkedAccount",
        lambda c: c.session_token("acct-1"),
    ),
    (
        "session_token force_refresh=true",
        "generateSessionTokenForLinkedAccount",
        lambda c: c.session_token("acct-1", force_refresh=True),
    ),
]


@pytest.mark.parametrize(("case", "operation_id", "call"), EVERY_REQUEST, ids=[case for case, _, _ in EVERY_REQUEST])
def test_request_matches_the_spec(
    case: str,
    operation_id: str,
    call: Callable[[RefoldClient], object],
    *,
    openapi: OpenAPI,
    client: RefoldClient,
    capture: Capture,
) -> None:
    call(client)
    ((request, response),) = capture.exchanges
    adapted = HttpxOpenAPIRequest(request)
    openapi.validate_request(adapted)
    # The request resolved to the operation we meant, not a neighbouring alias route.
    found = APICallPathFinder(openapi.spec).find(adapted.method, adapted.host_url + adapted.path)
    assert found.operation["operationId"] == operation_id, case
    # And the documented answer the parsing tests rely on matches the spec's response schema.
    openapi.validate_response(adapted, HttpxOpenAPIResponse(response))


def captured(client: RefoldClient, capture: Capture, call: Callable[[RefoldClient], object]) -> httpx.Request:
    call(client)
    return capture.exchanges[-1][0]


def rebuilt(
    request: httpx.Request, *, content: bytes | None = None, drop: str | None = None, **params: str
) -> httpx.Request:
    headers = [(name, value) for name, value in request.headers.multi_items() if name.lower() != (drop or "")]
    url = request.url.copy_merge_params(params) if params else request.url
    body = request.content if content is None else content
    headers = [(name, value) for name, value in headers if name.lower() != "content-length"]
    return httpx.Request(request.method, url, headers=headers, content=body)


def test_the_validator_catches_a_non_string_udf_value(openapi: OpenAPI, client: RefoldClient, capture: Capture) -> None:
    # Given a valid upsert, when its udf value is sent as a number (what normalise_udf exists to prevent)
    good = captured(client, capture, lambda c: c.upsert_linked_account("acct-1", udf={"seats": 12}))
    openapi.validate_request(HttpxOpenAPIRequest(good))
    bad = rebuilt(good, content=b'{"linked_account_id":"acct-1","udf":{"seats":12}}')
    # Then the spec rejects the body
    with pytest.raises(RequestBodyValidationError):
        openapi.validate_request(HttpxOpenAPIRequest(bad))


def test_the_validator_catches_a_session_token_body_without_its_required_id(
    openapi: OpenAPI, client: RefoldClient, capture: Capture
) -> None:
    good = captured(client, capture, lambda c: c.session_token("acct-1"))
    bad = rebuilt(good, content=b'{"account_id":"acct-1"}')
    with pytest.raises(RequestBodyValidationError):
        openapi.validate_request(HttpxOpenAPIRequest(bad))


def test_the_validator_catches_a_force_refresh_outside_its_enum(
    openapi: OpenAPI, client: RefoldClient, capture: Capture
) -> None:
    good = captured(client, capture, lambda c: c.session_token("acct-1", force_refresh=True))
    bad = rebuilt(good, force_refresh="yes")
    with pytest.raises(ParameterValidationError):
        openapi.validate_request(HttpxOpenAPIRequest(bad))


def test_the_validator_catches_a_missing_api_key_header(
    openapi: OpenAPI, client: RefoldClient, capture: Capture
) -> None:
    # delete is admin-only: the x-api-key header is the one accepted credential.
    good = captured(client, capture, lambda c: c.delete_linked_account("acct-1"))
    bad = rebuilt(good, drop="x-api-key")
    with pytest.raises(SecurityValidationError):
        openapi.validate_request(HttpxOpenAPIRequest(bad))


def test_the_validator_catches_a_wrong_route(openapi: OpenAPI, client: RefoldClient, capture: Capture) -> None:
    good = captured(client, capture, lambda c: c.trigger_event("signup", "acct-1"))
    bad = httpx.Request("PATCH", good.url, headers=good.headers, content=good.content)
    with pytest.raises(OperationNotFound):
        openapi.validate_request(HttpxOpenAPIRequest(bad))


def test_spec_defects_are_only_the_known_ones(spec_path: Path) -> None:
    # Strict spec validation is off for the tests above; this keeps an eye on what it would say.
    from jsonschema_path import SchemaPath
    from openapi_spec_validator import OpenAPIV31SpecValidator

    errors = list(OpenAPIV31SpecValidator(SchemaPath.from_file_path(str(spec_path))).iter_errors())
    unexpected = [str(error).splitlines()[0] for error in errors if KNOWN_SPEC_DEFECT not in str(error)]
    assert unexpected == []


@pytest.mark.xfail(
    reason="spec defect: PaginationMetadata uses OpenAPI 3.0 'nullable: true', which 3.1 ignores, so the null "
    "nextPage/prevPage Refold sends on the last page fails the schema. LinkedAccountPage accepts null; when "
    "the spec is fixed this test passes and strict xfail flags it for removal.",
    raises=InvalidData,
    strict=True,
)
def test_spec_rejects_a_null_next_page(openapi: OpenAPI, client: RefoldClient, capture: Capture) -> None:
    request = captured(client, capture, lambda c: c.list_linked_accounts())
    last_page = {"docs": [], "hasNextPage": False, "nextPage": None, "prevPage": None}
    openapi.validate_response(HttpxOpenAPIRequest(request), HttpxOpenAPIResponse(httpx.Response(200, json=last_page)))
