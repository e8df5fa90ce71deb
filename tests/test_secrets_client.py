"""The API key never leaves the client except in the x-api-key header.

A recognisable canary key goes through every operation and every outcome (success, each HTTP error class, an
unreadable 2xx, each transport failure), on the sync and async clients, on MockTransport and on the real
httpx transport against a local HTTP server (so httpx's and httpcore's own DEBUG logs are in play). Then the
canary is looked for everywhere it could leak: repr and str of the client, the results and the exceptions
(with their whole chain and formatted traceback), pickled exceptions, captured logs and captured output.
"""

from __future__ import annotations

import json
import logging
import pickle
import threading
import traceback
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from refold_dispatch.client import AsyncRefoldClient, RefoldClient
from refold_dispatch.config import Settings
from refold_dispatch.errors import ConfigurationError, RefoldDispatchError

CANARY = "tk_SECRET_canary_8c1f"
BASE_URL = "https://refold.test"

SUCCESS_BODIES: dict[str, Any] = {
    "trigger_event": {"message": "Webhook Fired Success"},
    "upsert_linked_account": {"account_id": "acct-1", "udf": [{"key_name": "plan", "key_value": "pro"}]},
    "get_linked_account": {"account_id": "acct-1"},
    "delete_linked_account": {"message": "User deleted successfully"},
    "list_linked_accounts": {"docs": [{"account_id": "acct-1"}], "hasNextPage": False},
    "session_token": {"token": "t", "refresh_token": "r", "expires_in": 60, "refresh_expires_in": 120},
}

OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "trigger_event": lambda c: c.trigger_event("signup", "acct-1", {"a": 1}, slug="s", idempotency_key="idem-1"),
    "upsert_linked_account": lambda c: c.upsert_linked_account(
        "acct-1", name="Acme", udf={"plan": "pro"}, your_app={"auth_credentials": {"k": "v"}}, idempotency_key="i"
    ),
    "get_linked_account": lambda c: c.get_linked_account("acct-1"),
    "delete_linked_account": lambda c: c.delete_linked_account("acct-1"),
    "list_linked_accounts": lambda c: c.list_linked_accounts(),
    "session_token": lambda c: c.session_token("acct-1", force_refresh=True),
}

# What a response can be: the documented success, every error class, and a 2xx nobody can read.
OUTCOMES: dict[str, Callable[[str], httpx.Response]] = {
    "success": lambda operation: httpx.Response(200, json=SUCCESS_BODIES[operation], headers={"x-request-id": "r"}),
    "400": lambda _: httpx.Response(400, json={"error_code": "INVALID_LINKED_ACCOUNT_ID", "message": "no"}),
    "401": lambda _: httpx.Response(401, json={"message": "Invalid Credentials"}),
    "403": lambda _: httpx.Response(403, json={"error_type": "FORBIDDEN", "message": "role"}),
    "404": lambda _: httpx.Response(404, json={"error": "INVALID_EVENT", "message": "Trigger not found"}),
    "408": lambda _: httpx.Response(408),
    "429": lambda _: httpx.Response(429, json={"message": "slow"}, headers={"Retry-After": "3"}),
    "500": lambda _: httpx.Response(500, text="<html>Internal Server Error</html>"),
    "503": lambda _: httpx.Response(503, headers={"Retry-After": "Wed, 21 Oct 2037 07:28:00 GMT"}),
    "unreadable 2xx": lambda _: httpx.Response(200, content=b"<html>ok</html>"),
}

TRANSPORT_FAILURES: list[type[httpx.TransportError]] = [
    httpx.ConnectTimeout,
    httpx.ReadTimeout,
    httpx.WriteTimeout,
    httpx.PoolTimeout,
    httpx.ConnectError,
    httpx.ReadError,
    httpx.RemoteProtocolError,
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
]


def exception_texts(error: BaseException) -> list[str]:
    """Every rendering of an exception and of everything chained to it."""
    texts = ["".join(traceback.format_exception(error))]
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [repr(current), str(current), repr(getattr(current, "args", ()))]
        texts.append(repr(vars(current)))
        if isinstance(current, RefoldDispatchError):
            texts.append(pickle.dumps(current).decode("latin-1"))
            evidence = getattr(current, "evidence", None)
            if callable(evidence):
                texts.append(json.dumps(evidence()))
        current = current.__cause__ or current.__context__
    return texts


def result_texts(result: Any) -> list[str]:
    texts = [repr(result), str(result)]
    if hasattr(result, "model_dump_json"):
        texts.append(result.model_dump_json())
        texts.append(repr(result.model_dump()))
    return texts


@pytest.fixture
def leak_check(caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> Iterator[list[str]]:
    """Collects texts during the test; afterwards asserts the canary is in none of them, nor in logs or output."""
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "refold_dispatch"):
        caplog.set_level(logging.DEBUG, logger=name)
    texts: list[str] = []
    yield texts
    captured = capsys.readouterr()
    everything = [*texts, caplog.text, captured.out, captured.err]
    everything += [record.getMessage() for record in caplog.records]
    leaks = [text[:200] for text in everything if CANARY in text]
    assert leaks == []
    assert texts, "the test checked nothing"


def sync_client(respond: Callable[[httpx.Request], httpx.Response]) -> RefoldClient:
    return RefoldClient(api_key=CANARY, base_url=BASE_URL, transport=httpx.MockTransport(respond))


def async_client(respond: Callable[[httpx.Request], httpx.Response]) -> AsyncRefoldClient:
    return AsyncRefoldClient(api_key=CANARY, base_url=BASE_URL, transport=httpx.MockTransport(respond))


def answering(operation: str, outcome: str, seen: list[httpx.Request]) -> Callable[[httpx.Request], httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return OUTCOMES[outcome](operation)

    return respond


def failing(exc_class: type[httpx.TransportError]) -> Callable[[httpx.Request], httpx.Response]:
    def respond(request: httpx.Request) -> httpx.Response:
        raise exc_class(f"{exc_class.__name__} talking to {request.url}", request=request)

    return respond


@pytest.mark.parametrize("outcome", list(OUTCOMES))
@pytest.mark.parametrize("operation", list(OPERATIONS))
def test_sync_client_never_shows_the_key(operation: str, outcome: str, leak_check: list[str]) -> None:
    seen: list[httpx.Request] = []
    with sync_client(answering(operation, outcome, seen)) as refold:
        leak_check += [repr(refold), str(refold)]
        try:
            result = OPERATIONS[operation](refold)
        except RefoldDispatchError as error:
            leak_check += exception_texts(error)
        else:
            leak_check += result_texts(result)
    # The key did go out, in its header and nowhere else in the request.
    (request,) = seen
    assert request.headers["x-api-key"] == CANARY
    assert CANARY not in str(request.url)
    assert CANARY.encode() not in request.content


@pytest.mark.parametrize("outcome", list(OUTCOMES))
@pytest.mark.parametrize("operation", list(OPERATIONS))
async def test_async_client_never_shows_the_key(operation: str, outcome: str, leak_check: list[str]) -> None:
    seen: list[httpx.Request] = []
    async with async_client(answering(operation, outcome, seen)) as refold:
        leak_check += [repr(refold), str(refold)]
        try:
            result = await OPERATIONS[operation](refold)
        except RefoldDispatchError as error:
            leak_check += exception_texts(error)
        else:
            leak_check += result_texts(result)
    assert seen[0].headers["x-api-key"] == CANARY


@pytest.mark.parametrize("exc_class", TRANSPORT_FAILURES, ids=lambda cls: cls.__name__)
async def test_transport_failures_never_show_the_key(
    exc_class: type[httpx.TransportError], leak_check: list[str]
) -> None:
    with sync_client(failing(exc_class)) as refold, pytest.raises(RefoldDispatchError) as sync_caught:
        refold.trigger_event("signup", "acct-1", idempotency_key="idem-1")
    async with async_client(failing(exc_class)) as refold_async:
        with pytest.raises(RefoldDispatchError) as async_caught:
            await refold_async.upsert_linked_account("acct-1")
    assert isinstance(sync_caught.value.__cause__, exc_class)
    leak_check += exception_texts(sync_caught.value) + exception_texts(async_caught.value)


def test_pagination_never_shows_the_key(leak_check: list[str]) -> None:
    pages = {
        "1": {"docs": [{"account_id": "a"}], "hasNextPage": True, "nextPage": 2},
        "2": {"docs": [{"account_id": "b"}], "hasNextPage": True, "nextPage": 2},  # does not advance
    }

    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=pages[request.url.params["page"]])

    with sync_client(respond) as refold, pytest.raises(RefoldDispatchError) as caught:
        leak_check += [repr(account) for account in refold.iter_linked_accounts()]
    leak_check += exception_texts(caught.value)


def test_validation_errors_never_show_the_key(leak_check: list[str]) -> None:
    with sync_client(answering("trigger_event", "success", [])) as refold:
        for call in (
            lambda: refold.trigger_event("", "acct-1"),
            lambda: refold.trigger_event("signup", "acct-1", {"x": float("nan")}),
            lambda: refold.upsert_linked_account("acct-1", your_app={}),
        ):
            with pytest.raises(RefoldDispatchError) as caught:
                call()
            leak_check += exception_texts(caught.value)


@pytest.mark.parametrize(
    "malformed_key",
    [f"{CANARY}\r\nX-Injected: 1", f"{CANARY} trailing words", f"{CANARY}\u00e9"],
    ids=["header injection", "interior space", "non-ASCII"],
)
def test_a_malformed_key_is_refused_without_being_quoted(malformed_key: str, leak_check: list[str]) -> None:
    # httpx/h11 would raise "Illegal header value b'<the key>'" at send time; the client refuses it first.
    with pytest.raises(ConfigurationError) as caught:
        RefoldClient(api_key=malformed_key, base_url=BASE_URL, transport=httpx.MockTransport(OUTCOMES["401"]))
    leak_check += exception_texts(caught.value)


def test_settings_carrying_the_key_do_not_show_it(leak_check: list[str]) -> None:
    settings = Settings(_env_file=None, api_key=SecretStr(CANARY), base_url=BASE_URL)  # type: ignore[call-arg]
    with RefoldClient(settings, transport=httpx.MockTransport(answering("get_linked_account", "success", []))) as r:
        leak_check += [repr(settings), str(settings), settings.model_dump_json(), repr(r)]
        leak_check += result_texts(r.get_linked_account("acct-1"))


class _CannedRefold(BaseHTTPRequestHandler):
    """A local HTTP server standing in for Refold, so the real httpx/httpcore stack (and its logging) runs."""

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        self.server.seen_keys.append(self.headers.get("x-api-key"))  # type: ignore[attr-defined]
        if self.path.startswith("/api/v2/public/event/trigger"):
            status, body = 200, {"message": "Webhook Fired Success"}
        else:
            status, body = 401, {"message": "Invalid Credentials", "error_type": "UNAUTHORIZED"}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_PUT = do_GET = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test asserts on captured output."""


@pytest.fixture
def local_refold() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _CannedRefold)
    server.seen_keys = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_the_real_http_stack_never_logs_the_key(
    local_refold: ThreadingHTTPServer, leak_check: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    host, port = local_refold.server_address[:2]
    with RefoldClient(api_key=CANARY, base_url=f"http://{host!s}:{port}") as refold:
        leak_check += result_texts(refold.trigger_event("signup", "acct-1", idempotency_key="idem-1"))
        with pytest.raises(RefoldDispatchError) as caught:
            refold.upsert_linked_account("acct-1")
        leak_check += exception_texts(caught.value)
    # A port nobody listens on: a real ConnectError through httpcore.
    with ThreadingHTTPServer(("127.0.0.1", 0), _CannedRefold) as closed:
        closed_port = closed.server_address[1]
    with RefoldClient(api_key=CANARY, base_url=f"http://127.0.0.1:{closed_port}") as refold:
        with pytest.raises(RefoldDispatchError) as caught:
            refold.trigger_event("signup", "acct-1")
        leak_check += exception_texts(caught.value)
    assert local_refold.seen_keys == [CANARY, CANARY]  # type: ignore[attr-defined]
    # httpx and httpcore did log (at DEBUG) while the key went by: the check above was not vacuous.
    assert any(record.name.startswith(("httpx", "httpcore")) for record in caplog.records)
