"""RefoldClient and AsyncRefoldClient on httpx.MockTransport: what goes out, what comes back, what is raised.

The transport records every request, so "nothing was sent" is asserted directly, and the async client is held
to the same requests and results as the sync one.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

import refold_dispatch
from refold_dispatch import client as client_module
from refold_dispatch.client import DEFAULT_PAGE_SIZE, AsyncRefoldClient, RefoldClient
from refold_dispatch.config import Settings
from refold_dispatch.errors import (
    AuthError,
    ConfigurationError,
    PermanentError,
    RateLimitedError,
    RefoldError,
    TransientError,
    ValidationError,
)
from refold_dispatch.models import (
    DeleteResult,
    LinkedAccount,
    LinkedAccountPage,
    SessionToken,
    TriggerEventResult,
)
from refold_dispatch.validation import (
    MAX_ID_LENGTH,
    MAX_PAYLOAD_DEPTH,
    normalise_udf,
    validate_event_name,
    validate_idempotency_key,
    validate_linked_account_id,
    validate_payload,
    validate_your_app,
)

API_KEY = "tk_test_client_7d2a"
BASE_URL = "https://refold.test"
TRIGGER_PATH = "/api/v2/public/event/trigger"
ACCOUNT_PATH = "/api/v2/public/linked-account"
SESSION_PATH = "/api/v2/public/session-token"
FIXED_NOW = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)

ACCOUNT_BODY: dict[str, Any] = {
    "_id": "6650f1a2b3c4d5e6f7a8b9c0",
    "associated_org": "org_42",
    "account_id": "acct-1",
    "name": "Acme Ltd",
    "environment": "test",
    "udf": [{"key_name": "plan", "key_value": "pro", "_id": "u1"}],
    "createdAt": "2026-06-01T10:00:00.000Z",
    "updatedAt": "2026-06-02T11:30:00.000Z",
    "new_account": True,
    "__v": 0,
}
TOKEN_BODY: dict[str, Any] = {
    "token": "eyJhbGciOi.session.token",
    "refresh_token": "eyJhbGciOi.refresh.token",
    "expires_in": 86400,
    "refresh_expires_in": 604800,
}


def fixed_clock() -> datetime:
    return FIXED_NOW


def canned_response(request: httpx.Request) -> httpx.Response:
    """A well-behaved Refold: the documented 200 body for each operation we call."""
    path = request.url.path
    headers = {"x-request-id": f"req-{request.method.lower()}"}
    if path == TRIGGER_PATH:
        return httpx.Response(200, json={"message": "Webhook Fired Success"}, headers=headers)
    if path == SESSION_PATH:
        return httpx.Response(200, json=TOKEN_BODY, headers=headers)
    if path == ACCOUNT_PATH and request.method == "GET":
        page = {"docs": [ACCOUNT_BODY], "totalDocs": 1, "page": 1, "hasNextPage": False, "nextPage": None}
        return httpx.Response(200, json=page, headers=headers)
    if path.startswith(ACCOUNT_PATH) and request.method == "DELETE":
        return httpx.Response(200, json={"message": "User deleted successfully"}, headers=headers)
    if path.startswith(ACCOUNT_PATH):
        return httpx.Response(200, json=ACCOUNT_BODY, headers=headers)
    return httpx.Response(404, json={"message": "no such route"})


class Recorder:
    """A MockTransport handler that keeps every request and answers with ``respond`` (canned by default)."""

    def __init__(self, respond: Callable[[httpx.Request], httpx.Response] = canned_response) -> None:
        self.requests: list[httpx.Request] = []
        self._respond = respond

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self._respond(request)

    @property
    def last(self) -> httpx.Request:
        assert self.requests, "no request was sent"
        return self.requests[-1]

    def body(self, index: int = -1) -> Any:
        return json.loads(self.requests[index].content)


def replying(
    status: int, body: Any = None, *, content: bytes | None = None, headers: dict[str, str] | None = None
) -> Recorder:
    def respond(request: httpx.Request) -> httpx.Response:
        if content is not None:
            return httpx.Response(status, content=content, headers=headers)
        if body is None:
            return httpx.Response(status, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    return Recorder(respond)


def raising(exc: Exception) -> Recorder:
    def respond(request: httpx.Request) -> httpx.Response:
        raise exc

    return Recorder(respond)


def make_client(recorder: Recorder | None = None, **kwargs: Any) -> RefoldClient:
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("base_url", BASE_URL)
    kwargs.setdefault("clock", fixed_clock)
    return RefoldClient(transport=httpx.MockTransport(recorder or Recorder()), **kwargs)


def make_async_client(recorder: Recorder | None = None, **kwargs: Any) -> AsyncRefoldClient:
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("base_url", BASE_URL)
    kwargs.setdefault("clock", fixed_clock)
    return AsyncRefoldClient(transport=httpx.MockTransport(recorder or Recorder()), **kwargs)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def client(recorder: Recorder) -> Iterator[RefoldClient]:
    with make_client(recorder) as refold:
        yield refold


# --- construction and settings ---------------------------------------------------------------------------


def test_explicit_key_and_url_do_not_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden() -> Settings:
        raise AssertionError("get_settings() must not be called when api_key and base_url are given")

    monkeypatch.setattr(client_module, "get_settings", forbidden)
    with make_client() as refold:
        assert refold.base_url == BASE_URL
        assert refold.environment == "test"


def test_without_settings_or_a_full_pair_settings_come_from_get_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from_env = Settings(_env_file=None, api_key=SecretStr("pk_live_from_env"), base_url="https://env.test")
    monkeypatch.setattr(client_module, "get_settings", lambda: from_env)
    recorder = Recorder()
    with RefoldClient(transport=httpx.MockTransport(recorder)) as refold:
        assert refold.environment == "production"
        refold.trigger_event("signup", "acct-1")
    assert recorder.last.url.host == "env.test"
    assert recorder.last.headers["x-api-key"] == "pk_live_from_env"


def test_explicit_arguments_override_settings() -> None:
    settings = Settings(_env_file=None, api_key=SecretStr("tk_from_settings"), base_url="https://settings.test")
    recorder = Recorder()
    with RefoldClient(
        settings,
        api_key="tk_explicit",
        base_url="https://explicit.test/",
        transport=httpx.MockTransport(recorder),
    ) as refold:
        refold.trigger_event("signup", "acct-1")
    assert str(recorder.last.url) == f"https://explicit.test{TRIGGER_PATH}"
    assert recorder.last.headers["x-api-key"] == "tk_explicit"


def test_paths_come_from_settings() -> None:
    settings = Settings(
        _env_file=None,
        api_key=SecretStr(API_KEY),
        base_url="https://proxy.test/refold",
        trigger_event_path="/v9/fire",
        linked_account_path="/v9/accounts/",
        session_token_path="/v9/tokens",
    )
    recorder = Recorder(lambda request: httpx.Response(200, json=ACCOUNT_BODY | TOKEN_BODY | {"docs": []}))
    with RefoldClient(settings, transport=httpx.MockTransport(recorder)) as refold:
        refold.trigger_event("signup", "acct-1")
        refold.upsert_linked_account("acct-1")
        refold.get_linked_account("acct-1")
        refold.list_linked_accounts()
        refold.session_token("acct-1")
    paths = [request.url.path for request in recorder.requests]
    assert paths == [
        "/refold/v9/fire",
        "/refold/v9/accounts/",
        "/refold/v9/accounts/acct-1",
        "/refold/v9/accounts/",
        "/refold/v9/tokens",
    ]


@pytest.mark.parametrize(
    ("api_key", "reason"),
    [
        (None, "not set"),
        ("changeme", "placeholder"),
        ("<your key>", "placeholder"),
        ("tk_with space", "spaces"),
        ("tk_line\nbreak", "control"),
        ("tk_caf\u00e9", "non-ASCII"),
    ],
)
def test_a_missing_placeholder_or_malformed_key_is_a_configuration_error(api_key: str | None, reason: str) -> None:
    settings = Settings(_env_file=None, api_key=None, base_url=BASE_URL)
    with pytest.raises(ConfigurationError, match=reason) as caught:
        RefoldClient(settings, api_key=api_key, transport=httpx.MockTransport(Recorder()))
    if api_key:
        assert api_key not in str(caught.value)


def test_surrounding_whitespace_around_the_key_is_dropped(recorder: Recorder) -> None:
    # Given a key read from a mounted secret file, with its trailing newline
    with make_client(recorder, api_key=f"  {API_KEY}\n") as refold:
        # When a request is sent
        refold.trigger_event("signup", "acct-1")
    # Then the header carries the key alone
    assert recorder.last.headers["x-api-key"] == API_KEY


def test_a_base_url_without_scheme_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="http"):
        make_client(base_url="refold.test")


def test_a_relative_path_setting_is_a_configuration_error() -> None:
    settings = Settings(_env_file=None, api_key=SecretStr(API_KEY), trigger_event_path="api/v2/public/event")
    with pytest.raises(ConfigurationError, match="TRIGGER_EVENT_PATH"):
        RefoldClient(settings, transport=httpx.MockTransport(Recorder()))


def test_timeouts_come_from_settings(recorder: Recorder) -> None:
    settings = Settings(
        _env_file=None,
        api_key=SecretStr(API_KEY),
        connect_timeout=1.5,
        read_timeout=2.5,
        write_timeout=3.5,
        pool_timeout=4.5,
    )
    with RefoldClient(settings, transport=httpx.MockTransport(recorder)) as refold:
        refold.trigger_event("signup", "acct-1")
    assert recorder.last.extensions["timeout"] == {"connect": 1.5, "read": 2.5, "write": 3.5, "pool": 4.5}


def test_an_explicit_timeout_wins(recorder: Recorder) -> None:
    with make_client(recorder, timeout=httpx.Timeout(0.25)) as refold:
        refold.trigger_event("signup", "acct-1")
    assert recorder.last.extensions["timeout"] == {"connect": 0.25, "read": 0.25, "write": 0.25, "pool": 0.25}


def test_one_pooled_http_client_serves_every_request(monkeypatch: pytest.MonkeyPatch, recorder: Recorder) -> None:
    created: list[httpx.Client] = []
    real_client = httpx.Client

    class CountingClient(real_client):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            created.append(self)

    monkeypatch.setattr(httpx, "Client", CountingClient)
    refold = make_client(recorder)
    for _ in range(3):
        refold.trigger_event("signup", "acct-1")
    refold.get_linked_account("acct-1")
    assert len(created) == 1
    assert len(recorder.requests) == 4
    refold.close()
    assert created[0].is_closed


def test_requests_carry_the_timeouts_and_no_cookies_from_earlier_responses() -> None:
    def set_cookie(request: httpx.Request) -> httpx.Response:
        response = canned_response(request)
        response.headers["Set-Cookie"] = "session=abc; Path=/"
        return response

    recorder = Recorder(set_cookie)
    refold = make_client(recorder, timeout=httpx.Timeout(connect=1.5, read=2.5, write=3.5, pool=4.5))
    refold.trigger_event("signup", "acct-1")
    refold.trigger_event("signup", "acct-1")
    assert recorder.last.extensions["timeout"] == {"connect": 1.5, "read": 2.5, "write": 3.5, "pool": 4.5}
    assert "cookie" not in recorder.last.headers
    assert {str(request.url) for request in recorder.requests} == {f"{BASE_URL}/api/v2/public/event/trigger"}


@pytest.mark.parametrize("name", ["HTTPS_PROXY", "http_proxy", "ALL_PROXY"])
def test_a_proxy_in_the_environment_routes_requests_through_httpx_client(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "http://proxy.invalid:3128")
    sent_by_client: list[httpx.Request] = []
    original_send = httpx.Client.send

    def counting_send(self: httpx.Client, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        sent_by_client.append(request)
        return original_send(self, request, **kwargs)

    monkeypatch.setattr(httpx.Client, "send", counting_send)
    refold = make_client(Recorder(), base_url="http://refold.test")
    with contextlib.suppress(TransientError):  # where the proxy applies, it does not exist
        refold.trigger_event("signup", "acct-1")
    assert len(sent_by_client) == 1  # the path that applies httpx's proxy rules


def test_the_context_manager_closes_the_pool() -> None:
    with make_client() as refold:
        pass
    with pytest.raises(RuntimeError, match="closed"):
        refold.trigger_event("signup", "acct-1")


def test_repr_names_the_url_and_environment_but_not_the_key() -> None:
    with make_client() as refold:
        assert repr(refold) == f"RefoldClient(base_url='{BASE_URL}', environment='test')"
        assert API_KEY not in repr(refold)
        assert API_KEY not in str(refold)


# --- headers common to every request ----------------------------------------------------------------------

EVERY_OPERATION: list[tuple[str, Callable[[RefoldClient], object]]] = [
    ("trigger_event", lambda refold: refold.trigger_event("signup", "acct-1")),
    ("upsert_linked_account", lambda refold: refold.upsert_linked_account("acct-1")),
    ("get_linked_account", lambda refold: refold.get_linked_account("acct-1")),
    ("delete_linked_account", lambda refold: refold.delete_linked_account("acct-1")),
    ("list_linked_accounts", lambda refold: refold.list_linked_accounts()),
    ("session_token", lambda refold: refold.session_token("acct-1")),
]


@pytest.mark.parametrize(("name", "call"), EVERY_OPERATION, ids=[name for name, _ in EVERY_OPERATION])
def test_every_request_carries_the_standard_headers(
    name: str, call: Callable[[RefoldClient], object], client: RefoldClient, recorder: Recorder
) -> None:
    call(client)
    headers = recorder.last.headers
    assert headers["x-api-key"] == API_KEY
    assert headers["content-type"] == "application/json"
    assert headers["accept"] == "application/json"
    assert headers["user-agent"] == f"refold-dispatch/{refold_dispatch.__version__}"
    assert "idempotency-key" not in headers
    assert "authorization" not in headers


# --- trigger_event ----------------------------------------------------------------------------------------


def test_trigger_event_request(client: RefoldClient, recorder: Recorder) -> None:
    client.trigger_event(
        "order.created",
        "acct-1",
        {"order_id": 42, "items": [{"sku": "A", "qty": 2}], "note": None, "paid": True, "total": 9.5},
        config_id="cfg-1",
        slug="shopify",
        instance_tag="nightly",
        idempotency_key="idem-123",
    )
    request = recorder.last
    assert request.method == "POST"
    assert str(request.url) == f"{BASE_URL}{TRIGGER_PATH}"
    assert request.headers["linked_account_id"] == "acct-1"
    assert request.headers["config_id"] == "cfg-1"
    assert request.headers["slug"] == "shopify"
    assert request.headers["instance_tag"] == "nightly"
    assert request.headers["idempotency-key"] == "idem-123"
    assert recorder.body() == {
        "event": "order.created",
        "payload": {
            "order_id": 42,
            "items": [{"sku": "A", "qty": 2}],
            "note": None,
            "paid": True,
            "total": 9.5,
        },
    }


def test_trigger_event_sends_an_empty_object_without_payload_and_no_optional_headers(
    client: RefoldClient, recorder: Recorder
) -> None:
    client.trigger_event("signup", "acct-1")
    assert recorder.body() == {"event": "signup", "payload": {}}
    for header in ("config_id", "slug", "instance_tag", "idempotency-key"):
        assert header not in recorder.last.headers


def test_trigger_event_sends_unicode_payloads_as_utf8(client: RefoldClient, recorder: Recorder) -> None:
    client.trigger_event("signup", "acct-1", {"city": "Zürich", "greeting": "こんにちは"})
    assert "Zürich".encode() in recorder.last.content
    assert recorder.body()["payload"] == {"city": "Zürich", "greeting": "こんにちは"}


def test_trigger_event_sends_what_was_validated(client: RefoldClient, recorder: Recorder) -> None:
    # Mappings that are not dicts are sent as objects, tuples as arrays.
    client.trigger_event("signup", "acct-1", MappingProxyType({"user": MappingProxyType({"ids": (1, 2)})}))
    assert recorder.body()["payload"] == {"user": {"ids": [1, 2]}}


def test_trigger_event_result(client: RefoldClient) -> None:
    result = client.trigger_event("signup", "acct-1")
    assert result == TriggerEventResult(status_code=200, request_id="req-post", message="Webhook Fired Success")
    assert result.model_dump() == {"message": "Webhook Fired Success", "body_text": None}


@pytest.mark.parametrize(
    ("status", "content", "message", "body_text"),
    [
        (200, b"", None, None),
        (202, b"queued", None, "queued"),
        (200, b"[1, 2]", None, "[1, 2]"),
        (200, b'{"message": {"nested": true}}', None, '{"message": {"nested": true}}'),
        (201, b'{"message": "Webhook Fired Success", "execution": "x1"}', "Webhook Fired Success", None),
    ],
)
def test_trigger_event_tolerates_any_2xx_body(
    status: int, content: bytes, message: str | None, body_text: str | None
) -> None:
    # Refold accepted the event: an unexpected body must not turn a delivered event into a failure.
    with make_client(replying(status, content=content, headers={"request-id": "r-9"})) as refold:
        result = refold.trigger_event("signup", "acct-1")
    assert result.status_code == status
    assert result.request_id == "r-9"
    assert result.message == message
    assert result.body_text == body_text


def test_trigger_event_keeps_unknown_fields() -> None:
    with make_client(replying(200, {"message": "ok", "execution_id": "e-1"})) as refold:
        result = refold.trigger_event("signup", "acct-1")
    assert result.model_extra == {"execution_id": "e-1"}


# --- upsert_linked_account --------------------------------------------------------------------------------


def test_upsert_linked_account_request_with_every_field(client: RefoldClient, recorder: Recorder) -> None:
    client.upsert_linked_account(
        "acct-1",
        name="Acme Ltd",
        udf={"plan": "pro", "seats": 12, "ratio": 0.5, "beta": True},
        your_app={"auth_credentials": {"api_key": "customer-app-key", "region": "eu"}},
        idempotency_key="idem-up-1",
    )
    request = recorder.last
    assert request.method == "PUT"
    assert request.url.path == ACCOUNT_PATH
    assert request.headers["idempotency-key"] == "idem-up-1"
    assert "linked_account_id" not in request.headers
    assert recorder.body() == {
        "linked_account_id": "acct-1",
        "name": "Acme Ltd",
        "udf": {"plan": "pro", "seats": "12", "ratio": "0.5", "beta": "True"},
        "your_app": {"auth_credentials": {"api_key": "customer-app-key", "region": "eu"}},
    }


def test_upsert_linked_account_sends_only_what_was_given(client: RefoldClient, recorder: Recorder) -> None:
    client.upsert_linked_account("acct-1")
    assert recorder.body() == {"linked_account_id": "acct-1"}


def test_upsert_linked_account_result(client: RefoldClient) -> None:
    account = client.upsert_linked_account("acct-1", name="Acme Ltd")
    assert isinstance(account, LinkedAccount)
    assert account.status_code == 200
    assert account.request_id == "req-put"
    assert account.id == "6650f1a2b3c4d5e6f7a8b9c0"
    assert account.account_id == "acct-1"
    assert account.associated_org == "org_42"
    assert account.environment == "test"
    assert account.name == "Acme Ltd"
    assert account.udf[0].key_name == "plan"
    assert account.udf[0].key_value == "pro"
    assert account.udf[0].model_extra == {"_id": "u1"}
    assert account.created_at == datetime(2026, 6, 1, 10, 0, tzinfo=UTC)
    assert account.updated_at == datetime(2026, 6, 2, 11, 30, tzinfo=UTC)
    assert account.new_account is True
    assert account.model_extra == {"__v": 0}
    assert "status_code" not in account.model_dump()


def test_linked_account_reads_udf_given_as_an_object() -> None:
    body = {"account_id": "acct-1", "udf": {"plan": "pro", "seats": 3}}
    with make_client(replying(200, body)) as refold:
        account = refold.get_linked_account("acct-1")
    assert [(entry.key_name, entry.key_value) for entry in account.udf] == [("plan", "pro"), ("seats", "3")]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "an empty body"),
        (b"<html>OK</html>", "not a JSON object"),
        (b'["acct-1"]', "not a JSON object"),
        (b'{"account_id": "acct-1", "udf": "plan=pro"}', r"not a valid LinkedAccount \(udf"),
        (b'{"account_id": "acct-1", "createdAt": "yesterday"}', "created"),
    ],
)
def test_upsert_linked_account_with_an_unreadable_2xx_body_is_permanent(content: bytes, problem: str) -> None:
    recorder = replying(200, content=content, headers={"x-request-id": "r-odd"})
    with make_client(recorder) as refold, pytest.raises(PermanentError, match=problem) as caught:
        refold.upsert_linked_account("acct-1", idempotency_key="idem-odd")
    error = caught.value
    assert error.status_code == 200
    assert error.error_code == "UNEXPECTED_RESPONSE"
    assert error.request_id == "r-odd"
    assert error.idempotency_key == "idem-odd"
    assert error.method == "PUT"
    assert error.path == ACCOUNT_PATH
    assert error.body == (content.decode() or None)


# --- get / delete / list ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("account_id", "raw_path"),
    [
        ("acct-1", "acct-1"),
        ("user@example.com", "user%40example.com"),
        ("a/b", "a%2Fb"),
        ("a b", "a%20b"),
        ("a?b#c", "a%3Fb%23c"),
        ("100%", "100%25"),
    ],
)
def test_get_linked_account_quotes_the_id_into_one_path_segment(
    account_id: str, raw_path: str, client: RefoldClient, recorder: Recorder
) -> None:
    account = client.get_linked_account(account_id)
    assert recorder.last.method == "GET"
    assert recorder.last.url.raw_path == f"{ACCOUNT_PATH}/{raw_path}".encode()
    assert recorder.last.content == b""
    assert account.account_id == "acct-1"
    assert account.request_id == "req-get"


def test_delete_linked_account(client: RefoldClient, recorder: Recorder) -> None:
    result = client.delete_linked_account("acct-1")
    assert recorder.last.method == "DELETE"
    assert recorder.last.url.path == f"{ACCOUNT_PATH}/acct-1"
    assert result == DeleteResult(status_code=200, request_id="req-delete", message="User deleted successfully")


def test_delete_linked_account_with_a_non_json_2xx_is_permanent() -> None:
    with (
        make_client(replying(200, content=b"deleted")) as refold,
        pytest.raises(PermanentError, match="JSON"),
    ):
        refold.delete_linked_account("acct-1")


def test_list_linked_accounts(client: RefoldClient, recorder: Recorder) -> None:
    page = client.list_linked_accounts(page=3, limit=20)
    assert recorder.last.method == "GET"
    assert recorder.last.url.path == ACCOUNT_PATH
    assert dict(recorder.last.url.params) == {"page": "3", "limit": "20"}
    assert isinstance(page, LinkedAccountPage)
    assert page.total_docs == 1
    assert page.has_next_page is False
    assert page.docs[0].account_id == "acct-1"
    # Each account carries the page's evidence too.
    assert page.docs[0].status_code == 200
    assert page.docs[0].request_id == "req-get"


def test_list_linked_accounts_defaults(client: RefoldClient, recorder: Recorder) -> None:
    client.list_linked_accounts()
    assert dict(recorder.last.url.params) == {"page": "1", "limit": str(DEFAULT_PAGE_SIZE)}


def test_a_page_without_docs_is_permanent() -> None:
    with make_client(replying(200, {"totalDocs": 0})) as refold, pytest.raises(PermanentError, match="docs"):
        refold.list_linked_accounts()


def paged(pages: dict[int, dict[str, Any]]) -> Recorder:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[int(request.url.params["page"])])

    return Recorder(respond)


def accounts(*ids: str) -> list[dict[str, Any]]:
    return [{"account_id": account_id} for account_id in ids]


THREE_PAGES = {
    1: {"docs": accounts("a", "b"), "page": 1, "hasNextPage": True, "nextPage": 2},
    2: {"docs": accounts("c", "d"), "page": 2, "hasNextPage": True, "nextPage": 3},
    3: {"docs": accounts("e"), "page": 3, "hasNextPage": False, "nextPage": None},
}


def test_iter_linked_accounts_follows_next_page() -> None:
    recorder = paged(THREE_PAGES)
    with make_client(recorder) as refold:
        iterator = refold.iter_linked_accounts(limit=2)
        assert recorder.requests == []  # lazy: nothing is fetched until iteration starts
        ids = [account.account_id for account in iterator]
    assert ids == ["a", "b", "c", "d", "e"]
    assert [dict(request.url.params) for request in recorder.requests] == [
        {"page": "1", "limit": "2"},
        {"page": "2", "limit": "2"},
        {"page": "3", "limit": "2"},
    ]


def test_iter_linked_accounts_counts_up_when_next_page_is_missing() -> None:
    pages = {
        1: {"docs": accounts("a"), "hasNextPage": True},
        2: {"docs": accounts("b"), "hasNextPage": False},
    }
    with make_client(paged(pages)) as refold:
        assert [account.account_id for account in refold.iter_linked_accounts()] == ["a", "b"]


def test_iter_linked_accounts_stops_on_an_empty_page() -> None:
    pages = {1: {"docs": [], "hasNextPage": True, "nextPage": 2}}
    with make_client(paged(pages)) as refold:
        assert list(refold.iter_linked_accounts()) == []


def test_iter_linked_accounts_refuses_a_page_that_does_not_advance() -> None:
    pages = {1: {"docs": accounts("a"), "hasNextPage": True, "nextPage": 1}}
    with make_client(paged(pages)) as refold, pytest.raises(PermanentError, match="did not advance"):
        list(refold.iter_linked_accounts())


def test_iter_linked_accounts_validates_the_limit_at_the_call() -> None:
    recorder = Recorder()
    with make_client(recorder) as refold, pytest.raises(ValidationError, match="limit"):
        refold.iter_linked_accounts(limit=0)
    assert recorder.requests == []


# --- session_token ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("force_refresh", "query"), [(False, "false"), (True, "true")])
def test_session_token_request(force_refresh: bool, query: str, client: RefoldClient, recorder: Recorder) -> None:
    client.session_token("acct-1", force_refresh=force_refresh)
    assert recorder.last.method == "POST"
    assert recorder.last.url.path == SESSION_PATH
    assert dict(recorder.last.url.params) == {"force_refresh": query}
    assert recorder.body() == {"linked_account_id": "acct-1"}
    assert "linked_account_id" not in recorder.last.headers


def test_session_token_result(client: RefoldClient) -> None:
    token = client.session_token("acct-1")
    assert isinstance(token, SessionToken)
    assert isinstance(token.token, SecretStr)
    assert isinstance(token.refresh_token, SecretStr)
    assert token.token_value() == TOKEN_BODY["token"]
    assert token.refresh_token_value() == TOKEN_BODY["refresh_token"]
    assert token.expires_in == 86400
    assert token.refresh_expires_in == 604800
    assert token.received_at == FIXED_NOW
    assert token.expires_at == FIXED_NOW + timedelta(days=1)
    assert token.refresh_expires_at == FIXED_NOW + timedelta(days=7)
    assert token.expires_at.tzinfo is not None
    assert token.status_code == 200
    assert token.request_id == "req-post"
    assert not token.is_expired(FIXED_NOW)
    assert token.is_expired(FIXED_NOW + timedelta(hours=23, minutes=59), leeway=timedelta(minutes=5))
    assert token.is_expired(FIXED_NOW + timedelta(days=1))
    for text in (repr(token), str(token)):
        assert TOKEN_BODY["token"] not in text
        assert TOKEN_BODY["refresh_token"] not in text


def test_session_token_expiry_is_in_utc_whatever_the_clock_zone() -> None:
    paris = datetime(2026, 7, 1, 14, 0, tzinfo=UTC).astimezone(__import__("zoneinfo").ZoneInfo("Europe/Paris"))
    with make_client(clock=lambda: paris) as refold:
        token = refold.session_token("acct-1")
    assert token.received_at.utcoffset() == timedelta(0)
    assert token.expires_at == datetime(2026, 7, 2, 14, 0, tzinfo=UTC)


def test_session_token_without_lifetimes_has_no_expiry() -> None:
    with make_client(replying(200, {"token": "t-1", "is_api_token": True})) as refold:
        token = refold.session_token("acct-1")
    assert token.expires_at is None
    assert token.refresh_token is None
    assert token.refresh_token_value() is None
    assert token.is_api_token is True
    assert not token.is_expired(FIXED_NOW + timedelta(days=3650))


def test_session_token_hides_unknown_fields_from_repr() -> None:
    with make_client(replying(200, TOKEN_BODY | {"access_token": "raw-secret-xyz"})) as refold:
        token = refold.session_token("acct-1")
    assert "raw-secret-xyz" not in repr(token)
    assert "access_token" in repr(token)


@pytest.mark.parametrize(
    "body",
    [
        {"refresh_token": "r-secret-1", "expires_in": 60},
        {"token": "", "refresh_token": "r-secret-1"},
        {"token": "t-secret-1", "expires_in": "soon"},
        {"token": ["t-secret-1"]},
    ],
)
def test_an_unreadable_session_token_is_permanent_and_does_not_echo_the_body(body: dict[str, Any]) -> None:
    with (
        make_client(replying(200, body)) as refold,
        pytest.raises(PermanentError, match="SessionToken") as caught,
    ):
        refold.session_token("acct-1")
    error = caught.value
    assert error.body is None
    assert error.__cause__ is None
    for secret in ("t-secret-1", "r-secret-1"):
        assert secret not in str(error)
        assert secret not in repr(error)


# --- errors -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "error_class", "error_code"),
    [
        (
            400,
            {"error_code": "INVALID_LINKED_ACCOUNT_ID", "message": "unknown account"},
            PermanentError,
            None,
        ),
        (401, {"message": "Invalid Credentials"}, AuthError, None),
        (403, {"error_type": "FORBIDDEN", "message": "role lacks access"}, AuthError, "FORBIDDEN"),
        (
            404,
            {"error_code": "INVALID_EVENT", "message": "Trigger not found"},
            PermanentError,
            "INVALID_EVENT",
        ),
        (408, None, TransientError, None),
        (429, {"message": "slow down"}, RateLimitedError, None),
        (500, {"message": "A valid app_id is required"}, TransientError, None),
        (503, None, TransientError, None),
    ],
)
@pytest.mark.parametrize(("name", "call"), EVERY_OPERATION, ids=[name for name, _ in EVERY_OPERATION])
def test_non_2xx_raises_the_classified_error(
    status: int,
    body: dict[str, Any] | None,
    error_class: type[RefoldError],
    error_code: str | None,
    *,
    name: str,
    call: Callable[[RefoldClient], object],
) -> None:
    recorder = replying(status, body, headers={"x-request-id": "r-err"})
    with make_client(recorder) as refold, pytest.raises(error_class) as caught:
        call(refold)
    error = caught.value
    assert type(error) is error_class
    assert error.status_code == status
    assert error.request_id == "r-err"
    assert error.method == recorder.last.method
    assert error.path == recorder.last.url.path
    if error_code:
        assert error.error_code == error_code
    assert len(recorder.requests) == 1  # one attempt: retrying is the worker's decision


def test_errors_carry_the_idempotency_key() -> None:
    with make_client(replying(500, {"message": "boom"})) as refold, pytest.raises(TransientError) as caught:
        refold.trigger_event("signup", "acct-1", idempotency_key="idem-err")
    assert caught.value.idempotency_key == "idem-err"
    assert "idem-err" in str(caught.value)


@pytest.mark.parametrize(
    ("retry_after", "max_retry_after", "expected"),
    [("7", None, 7.0), ("999999", None, 6 * 3600.0), ("999999", 30.0, 30.0), ("garbage", None, None)],
)
def test_rate_limited_carries_a_capped_retry_after(
    retry_after: str, max_retry_after: float | None, expected: float | None
) -> None:
    recorder = replying(429, {"message": "slow down"}, headers={"Retry-After": retry_after})
    with (
        make_client(recorder, max_retry_after=max_retry_after) as refold,
        pytest.raises(RateLimitedError) as caught,
    ):
        refold.trigger_event("signup", "acct-1")
    assert caught.value.retry_after == expected


def test_max_retry_after_comes_from_settings() -> None:
    settings = Settings(_env_file=None, api_key=SecretStr(API_KEY), max_retry_after_seconds=12.0)
    recorder = replying(429, headers={"Retry-After": "3600"})
    refold = RefoldClient(settings, transport=httpx.MockTransport(recorder))
    with refold, pytest.raises(RateLimitedError) as caught:
        refold.trigger_event("signup", "acct-1")
    assert caught.value.retry_after == 12.0


@pytest.mark.parametrize(
    ("exc", "error_class"),
    [
        (httpx.ConnectTimeout("connect timed out"), TransientError),
        (httpx.ReadTimeout("read timed out"), TransientError),
        (httpx.WriteTimeout("write timed out"), TransientError),
        (httpx.PoolTimeout("pool exhausted"), TransientError),
        (httpx.ConnectError("[Errno 111] Connection refused"), TransientError),
        (httpx.RemoteProtocolError("Server disconnected without sending a response."), TransientError),
        (httpx.LocalProtocolError("illegal request"), PermanentError),
        (httpx.UnsupportedProtocol("unsupported"), PermanentError),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else "",
)
def test_transport_failures_are_translated_and_chained(exc: httpx.HTTPError, error_class: type[RefoldError]) -> None:
    with make_client(raising(exc)) as refold, pytest.raises(error_class) as caught:
        refold.trigger_event("signup", "acct-1", idempotency_key="idem-net")
    error = caught.value
    assert type(error) is error_class
    assert error.__cause__ is exc
    assert error.error_code == type(exc).__name__
    assert error.method == "POST"
    assert error.path == TRIGGER_PATH
    assert error.idempotency_key == "idem-net"


def test_redirects_are_not_followed() -> None:
    # A redirect elsewhere would carry x-api-key with it; it is reported, not followed.
    recorder = replying(302, headers={"Location": "https://elsewhere.test/steal"})
    with make_client(recorder) as refold, pytest.raises(PermanentError) as caught:
        refold.trigger_event("signup", "acct-1")
    assert caught.value.status_code == 302
    assert [request.url.host for request in recorder.requests] == ["refold.test"]


# --- validation: nothing is sent ------------------------------------------------------------------------

BAD_CALLS: list[tuple[str, Callable[[RefoldClient], object], str]] = [
    ("empty event", lambda c: c.trigger_event("", "acct-1"), "event must not be empty"),
    ("whitespace event", lambda c: c.trigger_event("   ", "acct-1"), "event must not be empty"),
    ("event with newline", lambda c: c.trigger_event("sign\nup", "acct-1"), "control character"),
    ("event too long", lambda c: c.trigger_event("e" * 256, "acct-1"), "limit is 255"),
    ("event not a string", lambda c: c.trigger_event(42, "acct-1"), "must be a string"),  # type: ignore[arg-type]
    ("empty account id", lambda c: c.trigger_event("signup", ""), "linked_account_id must not be empty"),
    ("whitespace account id", lambda c: c.get_linked_account(" \t "), "must not be empty"),
    ("padded account id", lambda c: c.trigger_event("signup", " acct-1"), "leading or trailing whitespace"),
    ("account id too long", lambda c: c.delete_linked_account("a" * (MAX_ID_LENGTH + 1)), "limit is 255"),
    ("account id with NUL", lambda c: c.session_token("acct\x00-1"), "control character"),
    ("account id with DEL", lambda c: c.upsert_linked_account("acct\x7f"), "control character"),
    ("account id with C1 control", lambda c: c.upsert_linked_account("ac\x85ct"), "control character"),
    ("non-ASCII account id", lambda c: c.trigger_event("signup", "café"), "non-ASCII"),
    ("dot-dot account id", lambda c: c.get_linked_account(".."), "path segment"),
    ("account id not a string", lambda c: c.get_linked_account(7), "must be a string"),  # type: ignore[arg-type]
    ("payload a list", lambda c: c.trigger_event("signup", "acct-1", [1, 2]), "JSON object"),  # type: ignore[arg-type]
    ("payload a string", lambda c: c.trigger_event("signup", "acct-1", "{}"), "JSON object"),  # type: ignore[arg-type]
    ("payload NaN", lambda c: c.trigger_event("signup", "acct-1", {"x": float("nan")}), "JSON cannot"),
    (
        "payload inf",
        lambda c: c.trigger_event("signup", "acct-1", {"x": [float("inf")]}),
        r"payload\['x'\]\[0\]",
    ),
    ("payload datetime", lambda c: c.trigger_event("signup", "acct-1", {"at": FIXED_NOW}), "datetime"),
    ("payload set", lambda c: c.trigger_event("signup", "acct-1", {"tags": {"a"}}), "set"),
    ("payload int key", lambda c: c.trigger_event("signup", "acct-1", {"a": {1: "x"}}), "keys are strings"),
    ("payload surrogate", lambda c: c.trigger_event("signup", "acct-1", {"a": "\ud800"}), "surrogate"),
    ("empty config_id", lambda c: c.trigger_event("signup", "acct-1", config_id=""), "config_id"),
    ("slug with newline", lambda c: c.trigger_event("signup", "acct-1", slug="a\nb"), "slug"),
    (
        "instance_tag non-ASCII",
        lambda c: c.trigger_event("signup", "acct-1", instance_tag="ü"),
        "instance_tag",
    ),
    (
        "idempotency key blank",
        lambda c: c.trigger_event("signup", "acct-1", idempotency_key=" "),
        "idempotency",
    ),
    ("udf None value", lambda c: c.upsert_linked_account("acct-1", udf={"a": None}), "udf"),  # type: ignore[dict-item]
    ("udf nested", lambda c: c.upsert_linked_account("acct-1", udf={"a": {"b": 1}}), "udf"),  # type: ignore[dict-item]
    ("udf list", lambda c: c.upsert_linked_account("acct-1", udf={"a": [1]}), "udf"),  # type: ignore[dict-item]
    ("udf NaN", lambda c: c.upsert_linked_account("acct-1", udf={"a": float("nan")}), "udf"),
    ("udf empty key", lambda c: c.upsert_linked_account("acct-1", udf={"": "x"}), "udf key"),
    ("udf not a mapping", lambda c: c.upsert_linked_account("acct-1", udf=[("a", "b")]), "udf"),  # type: ignore[arg-type]
    (
        "empty your_app",
        lambda c: c.upsert_linked_account("acct-1", your_app={}),
        "your_app must not be empty",
    ),
    (
        "your_app without creds",
        lambda c: c.upsert_linked_account("acct-1", your_app={"x": 1}),
        "auth_credentials",
    ),
    (
        "your_app empty creds",
        lambda c: c.upsert_linked_account("acct-1", your_app={"auth_credentials": {}}),
        "auth_credentials",
    ),
    (
        "your_app non-string cred",
        lambda c: c.upsert_linked_account("acct-1", your_app={"auth_credentials": {"k": 1}}),
        "must be a string",
    ),
    ("blank name", lambda c: c.upsert_linked_account("acct-1", name=" "), "name must not be empty"),
    ("page zero", lambda c: c.list_linked_accounts(page=0), "page must be at least 1"),
    ("limit bool", lambda c: c.list_linked_accounts(limit=True), "limit must be an integer"),
    ("force_refresh string", lambda c: c.session_token("acct-1", "yes"), "force_refresh"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("case", "call", "message"), BAD_CALLS, ids=[case for case, _, _ in BAD_CALLS])
def test_bad_arguments_raise_before_anything_is_sent(
    case: str, call: Callable[[RefoldClient], object], message: str, client: RefoldClient, recorder: Recorder
) -> None:
    with pytest.raises(ValidationError, match=message):
        call(client)
    assert recorder.requests == [], case


def test_validation_messages_do_not_echo_credentials_or_payload_values() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_your_app({"auth_credentials": {"password": 12345678}})
    assert "12345678" not in str(caught.value)
    with pytest.raises(ValidationError) as caught:
        validate_payload({"ssn": float("nan"), "name": "Jane Doe"})
    assert "Jane Doe" not in str(caught.value)


def test_validators_return_what_is_sent() -> None:
    assert validate_linked_account_id("acct-1") == "acct-1"
    assert validate_linked_account_id("a" * MAX_ID_LENGTH) == "a" * MAX_ID_LENGTH
    assert validate_event_name("Bestellung erstellt") == "Bestellung erstellt"
    assert validate_idempotency_key("job-123:attempt") == "job-123:attempt"
    assert validate_payload(None) == {}
    assert validate_payload({"a": (1, 2), "m": MappingProxyType({"k": "v"})}) == {"a": [1, 2], "m": {"k": "v"}}
    assert normalise_udf({"n": 1, "f": 1.5, "b": False, "s": "x"}) == {
        "n": "1",
        "f": "1.5",
        "b": "False",
        "s": "x",
    }
    assert validate_your_app({"auth_credentials": {"k": "v"}, "app_id": "a1"}) == {
        "auth_credentials": {"k": "v"},
        "app_id": "a1",
    }


def test_validate_payload_bounds_size_and_depth() -> None:
    assert validate_payload({"a": "x" * 10}, max_bytes=100) == {"a": "x" * 10}
    with pytest.raises(ValidationError, match="limit is 10"):
        validate_payload({"a": "x" * 10}, max_bytes=10)
    deep: dict[str, Any] = {}
    cursor = deep
    for _ in range(MAX_PAYLOAD_DEPTH + 1):
        cursor["n"] = {}
        cursor = cursor["n"]
    with pytest.raises(ValidationError, match="nested deeper"):
        validate_payload(deep)
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    with pytest.raises(ValidationError, match="cycle"):
        validate_payload(cycle)


# --- the async client ------------------------------------------------------------------------------------

PARITY_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    (
        "trigger_event",
        ("order.created", "acct-1", {"order_id": 42}),
        {"config_id": "cfg-1", "slug": "shopify", "instance_tag": "t", "idempotency_key": "idem-1"},
    ),
    (
        "upsert_linked_account",
        ("acct-1",),
        {
            "name": "Acme",
            "udf": {"seats": 3},
            "your_app": {"auth_credentials": {"k": "v"}},
            "idempotency_key": "i",
        },
    ),
    ("get_linked_account", ("a/b",), {}),
    ("delete_linked_account", ("acct-1",), {}),
    ("list_linked_accounts", (2, 10), {}),
    ("session_token", ("acct-1",), {"force_refresh": True}),
]


def request_fingerprint(request: httpx.Request) -> tuple[str, str, list[tuple[str, str]], bytes]:
    return request.method, str(request.url), sorted(request.headers.multi_items()), request.content


@pytest.mark.parametrize(("method", "args", "kwargs"), PARITY_CALLS, ids=[call[0] for call in PARITY_CALLS])
async def test_async_client_sends_and_returns_the_same(
    method: str, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    sync_recorder, async_recorder = Recorder(), Recorder()
    with make_client(sync_recorder) as refold:
        sync_result = getattr(refold, method)(*args, **kwargs)
    async with make_async_client(async_recorder) as refold_async:
        async_result = await getattr(refold_async, method)(*args, **kwargs)
    assert request_fingerprint(async_recorder.last) == request_fingerprint(sync_recorder.last)
    assert async_result == sync_result
    assert async_result.status_code == sync_result.status_code
    assert async_result.request_id == sync_result.request_id


@pytest.mark.parametrize(
    ("recorder_factory", "error_class"),
    [
        (lambda: replying(401, {"message": "Invalid Credentials"}), AuthError),
        (lambda: replying(429, {"message": "slow"}, headers={"Retry-After": "5"}), RateLimitedError),
        (lambda: replying(503), TransientError),
        (lambda: replying(200, content=b"not json"), PermanentError),
        (lambda: raising(httpx.ReadTimeout("read timed out")), TransientError),
        (lambda: raising(httpx.ConnectError("refused")), TransientError),
        (lambda: raising(httpx.UnsupportedProtocol("nope")), PermanentError),
    ],
)
async def test_async_client_raises_the_same_errors(
    recorder_factory: Callable[[], Recorder], error_class: type[RefoldError]
) -> None:
    with make_client(recorder_factory()) as refold, pytest.raises(error_class) as sync_caught:
        refold.upsert_linked_account("acct-1", idempotency_key="idem-a")
    async with make_async_client(recorder_factory()) as refold_async:
        with pytest.raises(error_class) as async_caught:
            await refold_async.upsert_linked_account("acct-1", idempotency_key="idem-a")
    assert type(async_caught.value) is type(sync_caught.value)
    assert str(async_caught.value) == str(sync_caught.value)
    assert type(async_caught.value.__cause__) is type(sync_caught.value.__cause__)


async def test_async_iter_linked_accounts_follows_next_page() -> None:
    recorder = paged(THREE_PAGES)
    async with make_async_client(recorder) as refold:
        ids = [account.account_id async for account in refold.iter_linked_accounts(limit=2)]
    assert ids == ["a", "b", "c", "d", "e"]
    assert [request.url.params["page"] for request in recorder.requests] == ["1", "2", "3"]


async def test_async_iter_linked_accounts_refuses_a_page_that_does_not_advance() -> None:
    pages = {1: {"docs": accounts("a"), "hasNextPage": True, "nextPage": 1}}
    async with make_async_client(paged(pages)) as refold:
        with pytest.raises(PermanentError, match="did not advance"):
            [account async for account in refold.iter_linked_accounts()]


@pytest.mark.parametrize(("case", "call", "message"), BAD_CALLS, ids=[case for case, _, _ in BAD_CALLS])
async def test_async_bad_arguments_raise_before_anything_is_sent(
    case: str, call: Callable[[Any], Any], message: str
) -> None:
    recorder = Recorder()
    async with make_async_client(recorder) as refold:
        with pytest.raises(ValidationError, match=message):
            await call(refold)
    assert recorder.requests == [], case


async def test_async_client_uses_settings_timeouts_and_closes() -> None:
    recorder = Recorder()
    settings = Settings(_env_file=None, api_key=SecretStr(API_KEY), connect_timeout=1.0, read_timeout=2.0)
    refold = AsyncRefoldClient(settings, transport=httpx.MockTransport(recorder))
    await refold.trigger_event("signup", "acct-1")
    assert recorder.last.extensions["timeout"]["read"] == 2.0
    assert recorder.last.headers["x-api-key"] == API_KEY
    assert repr(refold) == "AsyncRefoldClient(base_url='https://app.refold.ai', environment='test')"
    await refold.close()
    with pytest.raises(RuntimeError, match="closed"):
        await refold.trigger_event("signup", "acct-1")


def test_the_workers_request_for_a_job_equals_the_public_builders() -> None:
    """The worker sends enqueued jobs through _build_job_request (no second validation): it must build exactly
    the request the validated public methods build, so the contract tests cover it too."""
    from refold_dispatch.jobs import trigger_event_job, upsert_linked_account_job

    endpoints = client_module.Endpoints.from_settings(Settings(_env_file=None))  # type: ignore[call-arg]
    event = trigger_event_job(
        "order.created", "acct/1", {"n": [1, {"x": None}]}, idempotency_key="k1", config_id="c", slug="s",
        instance_tag="t",
    )  # fmt: skip
    assert client_module._build_job_request(endpoints, event) == client_module._build_trigger_event(
        endpoints, "order.created", "acct/1", {"n": [1, {"x": None}]}, config_id="c", slug="s", instance_tag="t",
        idempotency_key="k1",
    )  # fmt: skip
    for upsert in (
        upsert_linked_account_job("acct/1", idempotency_key="k2"),
        upsert_linked_account_job(
            "acct/1", name="Acme", udf={"plan": "pro"}, your_app={"auth_credentials": {"k": "v"}}, idempotency_key="k3"
        ),
    ):
        p = upsert.params
        assert client_module._build_job_request(endpoints, upsert) == client_module._build_upsert_linked_account(
            endpoints, "acct/1", name=p.name, udf=p.udf, your_app=p.your_app, idempotency_key=upsert.idempotency_key
        )
