"""Contract tests for the sandbox: a real server (uvicorn on a free port) spoken to over HTTP with httpx.

One server per module; every test starts from a reset (records, accounts, tokens, limiter, and the startup
configuration). The module's configuration turns the rate limiter off; the tests about limiting turn it on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from refold_dispatch.sandbox import FaultConfig, SandboxConfig, SandboxServer

pytestmark = pytest.mark.integration

API_KEY = "tk_contract_key"
PUBLIC = "/api/v2/public"
TRIGGER = f"{PUBLIC}/event/trigger"
ACCOUNTS = f"{PUBLIC}/linked-account"
SESSION = f"{PUBLIC}/session-token"
# Small enough to keep the suite quick, large enough to measure against scheduling noise.
SHORT_DELAY = 0.2


def headers(account: str | None = "acct_1", key: str | None = API_KEY, **extra: str) -> dict[str, str]:
    found = {"linked_account_id": account, "x-api-key": key, **extra}
    return {name: value for name, value in found.items() if value is not None}


def event(name: str = "order.created", **payload: Any) -> dict[str, Any]:
    return {"event": name, "payload": payload}


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key != "request_id"}


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    config = SandboxConfig(api_key=API_KEY, rate_limit_enabled=False)
    with SandboxServer(config) as running:
        yield running


@pytest.fixture
def sandbox(server: SandboxServer) -> SandboxServer:
    server.admin.reset(restore_config=True)
    return server


@pytest.fixture
def client(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.url, timeout=5.0) as http:
        yield http


# --- transport basics -------------------------------------------------------------------------------------


def test_health_and_request_ids(sandbox: SandboxServer, client: httpx.Client) -> None:
    assert sandbox.admin.health()
    sandbox.admin.seed_accounts(["acct_1"])

    ok = client.post(TRIGGER, json=event(), headers=headers())
    error = client.post(TRIGGER, json=event("nope"), headers=headers())

    assert ok.headers["x-request-id"].startswith("req_")
    assert error.headers["x-request-id"] != ok.headers["x-request-id"]
    assert error.json()["request_id"] == error.headers["x-request-id"]
    assert [r["request_id"] for r in sandbox.admin.requests()] == [
        ok.headers["x-request-id"],
        error.headers["x-request-id"],
    ]


@pytest.mark.parametrize("key", [None, "tk_wrong", ""])
def test_missing_or_wrong_key_is_401(sandbox: SandboxServer, client: httpx.Client, key: str | None) -> None:
    response = client.post(TRIGGER, json=event(), headers=headers(key=key))

    assert response.status_code == 401
    assert without_request_id(response.json()) == {
        "status_code": 401,
        "http_error_type": "UNAUTHORIZED",
        "error_code": "INVALID_CREDENTIALS",
        "message": "Invalid Credentials",
    }
    assert response.headers["x-request-id"] == response.json()["request_id"]
    [record] = sandbox.admin.requests()
    assert (record["key_valid"], record["outcome"], record["status"]) == (False, "rejected", 401)


def test_api_key_is_never_recorded_or_shown(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    client.post(TRIGGER, json=event(), headers=headers())
    client.put(ACCOUNTS, json={"linked_account_id": "acct_1"}, headers=headers())

    exposed = json.dumps([sandbox.admin.requests(), sandbox.admin.stats(), sandbox.admin.config()])

    assert API_KEY not in exposed
    assert all(record["key_valid"] for record in sandbox.admin.requests())


def test_unknown_route_and_wrong_method_use_the_envelope(client: httpx.Client) -> None:
    missing = client.get(f"{PUBLIC}/nothing-here", headers=headers())
    wrong_method = client.get(TRIGGER, headers=headers())

    assert missing.status_code == 404
    assert missing.json()["http_error_type"] == "NOT_FOUND"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["http_error_type"] == "METHOD_NOT_ALLOWED"
    assert "POST" in wrong_method.headers["allow"]


# --- events -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [TRIGGER, f"{PUBLIC}/event", f"{PUBLIC}/event/my-app"])
def test_trigger_routes_fire(sandbox: SandboxServer, client: httpx.Client, path: str) -> None:
    sandbox.admin.seed_accounts(["acct_1"])

    response = client.post(path, json=event(order_id=7), headers=headers(**{"Idempotency-Key": "job-1"}))

    assert response.status_code == 200
    assert response.json() == {"message": "Webhook Fired Success"}
    [record] = sandbox.admin.requests()
    assert record["path"] == path
    assert record["outcome"] == "delivered"
    assert record["event"] == "order.created"
    assert record["linked_account_id"] == "acct_1"
    assert record["idempotency_key"] == "job-1"


def test_trigger_accepts_trigger_instead_of_event(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    response = client.post(TRIGGER, json={"trigger": "invoice.paid", "payload": {}}, headers=headers())
    assert response.status_code == 200
    assert sandbox.admin.requests()[0]["event"] == "invoice.paid"


def test_unknown_event_is_404(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    response = client.post(TRIGGER, json=event("order.teleported"), headers=headers())
    assert response.status_code == 404
    assert without_request_id(response.json()) == {
        "status_code": 404,
        "http_error_type": "NOT_FOUND",
        "error_code": "INVALID_EVENT",
        "message": "Trigger not found",
    }
    assert sandbox.admin.requests()[0]["outcome"] == "rejected"


def test_unknown_account_is_400_unless_allowed(sandbox: SandboxServer, client: httpx.Client) -> None:
    response = client.post(TRIGGER, json=event(), headers=headers("acct_ghost"))
    assert response.status_code == 400
    assert without_request_id(response.json()) == {
        "status_code": 400,
        "http_error_type": "BAD_REQUEST",
        "error_code": "INVALID_LINKED_ACCOUNT_ID",
        "message": "Linked account not found",
    }

    sandbox.admin.set_config(require_known_accounts=False)
    assert client.post(TRIGGER, json=event(), headers=headers("acct_ghost")).status_code == 200


@pytest.mark.parametrize(
    ("body", "request_headers", "error_code"),
    [
        (event(), headers(account=None), "MISSING_LINKED_ACCOUNT_ID"),
        ({"payload": {}}, headers(), "MISSING_EVENT"),
        ([1, 2], headers(), "INVALID_JSON"),
    ],
)
def test_bad_trigger_requests_are_400(
    client: httpx.Client, body: Any, request_headers: dict[str, str], error_code: str
) -> None:
    response = client.post(TRIGGER, json=body, headers=request_headers)
    assert response.status_code == 400
    assert response.json()["error_code"] == error_code
    assert response.json()["status_code"] == 400


def test_malformed_json_is_400(client: httpx.Client) -> None:
    response = client.post(TRIGGER, content=b'{"event": ', headers={**headers(), "content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_JSON"


def test_known_events_change_at_runtime(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_config(known_events={"custom.thing"})
    assert client.post(TRIGGER, json=event("custom.thing"), headers=headers()).status_code == 200
    assert client.post(TRIGGER, json=event("order.created"), headers=headers()).status_code == 404


# --- linked accounts --------------------------------------------------------------------------------------


def test_upsert_creates_then_updates(sandbox: SandboxServer, client: httpx.Client) -> None:
    created = client.put(
        ACCOUNTS, json={"linked_account_id": "acct_9", "name": "Acme", "udf": {"plan": "pro"}}, headers=headers()
    )
    assert created.status_code == 200
    body = created.json()
    assert body["new_account"] is True
    assert body["account_id"] == "acct_9"
    assert body["environment"] == "test"
    assert body["udf"] == [{"key_name": "plan", "key_value": "pro"}]
    assert set(body) >= {"_id", "associated_org", "createdAt", "updatedAt", "name"}

    # Newer docs call the id account_id, and fields may be nested under payload.
    updated = client.put(ACCOUNTS, json={"account_id": "acct_9", "payload": {"name": "Acme Inc"}}, headers=headers())
    assert updated.status_code == 200
    assert updated.json()["new_account"] is False
    assert updated.json()["name"] == "Acme Inc"
    assert updated.json()["_id"] == body["_id"]
    assert updated.json()["createdAt"] == body["createdAt"]

    records = sandbox.admin.requests(path=ACCOUNTS)
    assert [(r["outcome"], r["account_id"], r["name"], r["udf"]) for r in records] == [
        ("delivered", "acct_9", "Acme", {"plan": "pro"}),
        ("delivered", "acct_9", "Acme Inc", None),
    ]
    assert sandbox.admin.stats()["accounts"] == 1


def test_last_upsert_applied_is_last_recorded(sandbox: SandboxServer, client: httpx.Client) -> None:
    for version in range(5):
        client.put(ACCOUNTS, json={"linked_account_id": "a", "udf": {"v": str(version)}}, headers=headers())

    last = sandbox.admin.requests(path=ACCOUNTS)[-1]
    current = client.get(f"{ACCOUNTS}/a", headers=headers()).json()

    assert current["udf"] == [{"key_name": "v", "key_value": last["udf"]["v"]}] == [{"key_name": "v", "key_value": "4"}]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"name": "no id"}, 400, "linked_account_id is required"),
        ({"linked_account_id": "a", "udf": {"n": 1}}, 400, "udf must be an object of string values"),
        ({"linked_account_id": "a", "your_app": {}}, 400, "your_app must not be empty"),
        ({"linked_account_id": "a", "your_app": {"app_id": "x"}}, 500, "A valid app_id is required"),
    ],
)
def test_upsert_validation(
    sandbox: SandboxServer, client: httpx.Client, body: dict[str, Any], status: int, message: str
) -> None:
    response = client.put(ACCOUNTS, json=body, headers=headers())
    assert response.status_code == status
    assert response.json()["message"] == message
    assert response.json()["status_code"] == status
    assert sandbox.admin.requests()[0]["outcome"] == "rejected"
    assert sandbox.admin.stats()["accounts"] == 0


def test_upsert_with_auth_credentials_is_accepted(client: httpx.Client) -> None:
    body = {"linked_account_id": "a", "your_app": {"auth_credentials": {"api_key": "x"}}}
    assert client.put(ACCOUNTS, json=body, headers=headers()).status_code == 200


def test_create_refuses_an_existing_account(client: httpx.Client) -> None:
    first = client.post(ACCOUNTS, json={"linked_account_id": "a", "name": "A"}, headers=headers())
    second = client.post(ACCOUNTS, json={"linked_account_id": "a"}, headers=headers())
    assert first.status_code == 200
    assert first.json()["name"] == "A"
    assert second.status_code == 400
    assert second.json()["http_error_type"] == "BAD_REQUEST"


def test_list_is_paginated(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts([f"acct_{i:02d}" for i in range(25)])

    last_page = client.get(ACCOUNTS, params={"page": 3, "limit": 10}, headers=headers()).json()
    first_page = client.get(ACCOUNTS, headers=headers()).json()

    assert [doc["account_id"] for doc in last_page["docs"]] == [f"acct_{i}" for i in range(20, 25)]
    assert {key: value for key, value in last_page.items() if key != "docs"} == {
        "totalDocs": 25,
        "limit": 10,
        "page": 3,
        "totalPages": 3,
        "pagingCounter": 21,
        "hasPrevPage": True,
        "hasNextPage": False,
        "prevPage": 2,
        "nextPage": None,
    }
    assert (len(first_page["docs"]), first_page["hasNextPage"], first_page["nextPage"]) == (10, True, 2)
    assert (first_page["hasPrevPage"], first_page["prevPage"]) == (False, None)
    assert client.get(ACCOUNTS, params={"page": 0}, headers=headers()).status_code == 400


def test_get_and_delete_one_account(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])

    assert client.get(f"{ACCOUNTS}/acct_1", headers=headers()).json()["account_id"] == "acct_1"
    deleted = client.delete(f"{ACCOUNTS}/acct_1", headers=headers())
    assert deleted.json() == {"message": "User deleted successfully"}
    missing = client.get(f"{ACCOUNTS}/acct_1", headers=headers())
    assert missing.status_code == 404
    assert missing.json()["http_error_type"] == "NOT_FOUND"
    assert client.delete(f"{ACCOUNTS}/acct_1", headers=headers()).status_code == 404


# --- session tokens ---------------------------------------------------------------------------------------


def test_session_token_reuse_and_force_refresh(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    body = {"linked_account_id": "acct_1"}

    first = client.post(SESSION, json=body, headers=headers()).json()
    again = client.post(SESSION, params={"force_refresh": "false"}, json=body, headers=headers()).json()
    forced = client.post(SESSION, params={"force_refresh": "true"}, json=body, headers=headers()).json()

    assert set(first) == {"token", "refresh_token", "expires_in", "refresh_expires_in"}
    assert 86_390 <= first["expires_in"] <= 86_400
    assert again["token"] == first["token"]
    assert forced["token"] != first["token"]
    assert forced["refresh_token"] != first["refresh_token"]


def test_session_token_expires(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_config(token_ttl_seconds=0)
    body = {"linked_account_id": "acct_1"}
    first = client.post(SESSION, json=body, headers=headers()).json()
    second = client.post(SESSION, json=body, headers=headers()).json()
    assert first["expires_in"] == 0
    assert second["token"] != first["token"]


def test_session_token_for_unknown_account_is_400(client: httpx.Client) -> None:
    response = client.post(SESSION, json={"linked_account_id": "acct_ghost"}, headers=headers())
    assert response.status_code == 400
    assert response.json()["error_code"] == "INVALID_LINKED_ACCOUNT_ID"


# --- rate limiting ----------------------------------------------------------------------------------------


async def _fire_at_once(url: str, count: int) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=5.0) as http:
        return await asyncio.gather(*(http.post(TRIGGER, json=event(), headers=headers()) for _ in range(count)))


async def test_burst_then_429_with_retry_after(sandbox: SandboxServer) -> None:
    # Given a limiter slow enough that nothing refills during the test: 3 at once, then one per 2 s
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_config(rate_limit_enabled=True, rate_limit=0.5, rate_burst=3)

    # When 3 + 4 requests arrive at once
    responses = await _fire_at_once(sandbox.url, 7)

    # Then exactly the burst gets through, and the rest are told how long to wait
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * 3 + [429] * 4
    for response in responses:
        if response.status_code == 429:
            assert without_request_id(response.json()) == {
                "status_code": 429,
                "http_error_type": "TOO_MANY_REQUESTS",
                "error_code": "RATE_LIMITED",
                "message": "Too many requests",
            }
            assert 1 <= int(response.headers["retry-after"]) <= 2
    stats = sandbox.admin.stats()
    assert stats["by_outcome"] == {"delivered": 3, "rate_limited": 4}


def test_rate_limit_without_retry_after_header(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_config(rate_limit_enabled=True, rate_limit=0.5, rate_burst=2, retry_after_header=False)

    statuses = [client.post(TRIGGER, json=event(), headers=headers()) for _ in range(4)]

    assert [response.status_code for response in statuses] == [200, 200, 429, 429]
    assert "retry-after" not in statuses[-1].headers


def test_rate_limit_switches_off_at_runtime(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_config(rate_limit_enabled=True, rate_limit=0.5, rate_burst=1)
    assert [client.post(TRIGGER, json=event(), headers=headers()).status_code for _ in range(2)] == [200, 429]
    sandbox.admin.set_config(rate_limit_enabled=False)
    assert [client.post(TRIGGER, json=event(), headers=headers()).status_code for _ in range(5)] == [200] * 5


# --- faults -----------------------------------------------------------------------------------------------


def test_error_fault_is_5xx_and_not_delivered(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_faults(error_rate=1.0, seed=3)

    responses = [client.post(TRIGGER, json=event(), headers=headers(**{"Idempotency-Key": f"k{i}"})) for i in range(6)]
    wrote = client.put(ACCOUNTS, json={"linked_account_id": "acct_new"}, headers=headers())

    assert {response.status_code for response in responses} <= {500, 502, 503}
    assert responses[0].json()["status_code"] == responses[0].status_code
    assert responses[0].json()["request_id"] == responses[0].headers["x-request-id"]
    assert wrote.status_code >= 500
    stats = sandbox.admin.stats()
    assert stats["by_outcome"] == {"fault": 7}
    assert stats["delivered_by_idempotency_key"] == {}
    assert stats["accounts"] == 1  # the faulted upsert was not applied
    assert {record["fault"] for record in sandbox.admin.requests()} == {"error"}


@pytest.mark.parametrize(("retry_after", "header"), [(None, None), (2.0, "2"), (0.5, "1")])
def test_spurious_429_fault(
    sandbox: SandboxServer, client: httpx.Client, retry_after: float | None, header: str | None
) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_faults(rate_429=1.0, retry_after_429=retry_after)

    response = client.post(TRIGGER, json=event(), headers=headers())

    assert response.status_code == 429
    assert response.json()["error_code"] == "RATE_LIMITED"
    assert response.headers.get("retry-after") == header
    [record] = sandbox.admin.requests()
    assert (record["outcome"], record["fault"]) == ("fault", "rate_429")


def test_hang_fault_answers_504_late_and_does_not_deliver(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_faults(hang_rate=1.0, hang_seconds=SHORT_DELAY)

    started = time.perf_counter()
    response = client.post(TRIGGER, json=event(), headers=headers(**{"Idempotency-Key": "hung"}))

    assert time.perf_counter() - started >= SHORT_DELAY
    assert response.status_code == 504
    assert response.json()["http_error_type"] == "GATEWAY_TIMEOUT"
    [record] = sandbox.admin.requests()
    assert (record["outcome"], record["fault"], record["status"]) == ("fault", "hang", 504)
    assert sandbox.admin.stats()["delivered_by_idempotency_key"] == {}


def test_hang_past_the_client_timeout_is_still_not_delivered(sandbox: SandboxServer, client: httpx.Client) -> None:
    # Given a hang longer than the client is willing to wait
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_faults(hang_rate=1.0, hang_seconds=SHORT_DELAY)

    with pytest.raises(httpx.ReadTimeout):
        client.post(TRIGGER, json=event(), headers=headers(), timeout=SHORT_DELAY / 4)

    # Then the server finishes the hang on its own and records a fault, never a delivery
    wait_until(lambda: len(sandbox.admin.requests()) == 1)
    [record] = sandbox.admin.requests()
    assert (record["outcome"], record["status"]) == ("fault", 504)


def test_slow_fault_processes_late(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_faults(slow_rate=1.0, slow_seconds=SHORT_DELAY)

    started = time.perf_counter()
    response = client.post(TRIGGER, json=event(), headers=headers(**{"Idempotency-Key": "slow"}))

    assert time.perf_counter() - started >= SHORT_DELAY
    assert response.status_code == 200
    [record] = sandbox.admin.requests()
    assert (record["outcome"], record["fault"]) == ("delivered", "slow")
    # asyncio's timer may fire a hair early on a coarse clock: allow a millisecond.
    assert record["duration_ms"] >= SHORT_DELAY * 1000 - 1


def test_latency_applies_to_every_api_request_not_admin(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    sandbox.admin.set_faults(latency_ms=SHORT_DELAY * 1000)

    for request_headers, status in [(headers(), 200), (headers(key="tk_wrong"), 401)]:
        started = time.perf_counter()
        assert client.post(TRIGGER, json=event(), headers=request_headers).status_code == status
        assert time.perf_counter() - started >= SHORT_DELAY

    started = time.perf_counter()
    assert sandbox.admin.health()
    assert time.perf_counter() - started < SHORT_DELAY


def test_faults_never_touch_admin_routes(sandbox: SandboxServer) -> None:
    sandbox.admin.set_faults(error_rate=1.0, rate_429=1.0, hang_rate=1.0, hang_seconds=5.0)
    assert sandbox.admin.health()
    assert sandbox.admin.stats()["total"] == 0


def test_faults_change_at_runtime_and_are_validated(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    assert sandbox.admin.faults() == FaultConfig().model_dump(mode="json")

    sandbox.admin.set_faults(error_rate=1.0, error_statuses=[503])
    assert client.post(TRIGGER, json=event(), headers=headers()).status_code == 503
    assert sandbox.admin.set_faults(error_rate=0.0)["error_statuses"] == [503]  # partial: others kept
    assert client.post(TRIGGER, json=event(), headers=headers()).status_code == 200

    invalid_changes: list[dict[str, Any]] = [{"error_rate": 2}, {"bogus": 1}, {"error_statuses": [200]}]
    for invalid in invalid_changes:
        with pytest.raises(httpx.HTTPStatusError) as raised:
            sandbox.admin.set_faults(**invalid)
        assert raised.value.response.status_code == 422
    assert sandbox.admin.faults()["error_rate"] == 0.0


def test_faults_from_startup_config() -> None:
    # A second server, configured with faults from the start (as the CLI does).
    config = SandboxConfig(faults=FaultConfig(error_rate=1.0, error_statuses=(502,)))
    with (
        SandboxServer(config) as faulty,
        httpx.Client(base_url=faulty.url) as http,
    ):
        faulty.admin.seed_accounts(["acct_1"])
        response = http.post(TRIGGER, json=event(), headers=headers(key=config.api_key))
        assert response.status_code == 502


# --- admin: records, stats, config, reset -----------------------------------------------------------------


def test_stats_count_deliveries_duplicates_and_peak_rate(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    for key in ["k1", "k1", "k2"]:
        client.post(TRIGGER, json=event(), headers=headers(**{"Idempotency-Key": key}))
    client.post(TRIGGER, json=event("nope"), headers=headers(**{"Idempotency-Key": "k3"}))
    client.put(ACCOUNTS, json={"linked_account_id": "acct_2"}, headers=headers(**{"Idempotency-Key": "u1"}))

    stats = sandbox.admin.stats()

    assert stats["total"] == 5
    assert stats["by_status"] == {"200": 4, "404": 1}
    assert stats["by_outcome"] == {"delivered": 4, "rejected": 1}
    assert stats["delivered_by_idempotency_key"] == {"k1": 2, "k2": 1, "u1": 1}
    assert stats["duplicates"] == ["k1"]
    assert stats["max_in_any_1s_window"] == 5
    assert stats["accounts"] == 2


def test_requests_filters(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1"])
    for i in range(4):
        client.post(TRIGGER, json=event(), headers=headers(**{"Idempotency-Key": f"k{i}"}))
    client.get(ACCOUNTS, headers=headers())
    everything = sandbox.admin.requests()
    first_seq = everything[0]["seq"]

    assert [r["seq"] for r in everything] == list(range(first_seq, first_seq + 5))
    assert len(sandbox.admin.requests(since_seq=first_seq + 2)) == 2
    assert len(sandbox.admin.requests(path=TRIGGER)) == 4
    assert [r["outcome"] for r in sandbox.admin.requests(outcome="ok")] == ["ok"]
    assert len(sandbox.admin.requests(limit=3)) == 3
    assert [r["idempotency_key"] for r in sandbox.admin.requests(idempotency_key="k2")] == ["k2"]
    assert len(sandbox.admin.requests(linked_account_id="acct_1")) == 5
    with pytest.raises(httpx.HTTPStatusError):
        sandbox.admin.requests(outcome="bogus")


def test_config_is_readable_without_the_key_and_validated(sandbox: SandboxServer) -> None:
    config = sandbox.admin.config()
    assert "api_key" not in config
    assert config["environment"] == "test"
    assert config["rate_limit_enabled"] is False

    with pytest.raises(httpx.HTTPStatusError) as not_runtime:
        sandbox.admin.set_config(api_key="tk_other")
    assert not_runtime.value.response.status_code == 400
    with pytest.raises(httpx.HTTPStatusError) as invalid:
        sandbox.admin.set_config(rate_burst=0)
    assert invalid.value.response.status_code == 422


def test_reset_clears_state_and_keeps_config(sandbox: SandboxServer, client: httpx.Client) -> None:
    sandbox.admin.seed_accounts(["acct_1", "acct_2"])
    sandbox.admin.set_config(require_known_accounts=False)
    sandbox.admin.set_faults(slow_rate=1.0, slow_seconds=0.0)
    client.post(TRIGGER, json=event(), headers=headers())

    sandbox.admin.reset()

    assert sandbox.admin.stats()["total"] == 0
    assert sandbox.admin.stats()["accounts"] == 0
    assert sandbox.admin.config()["require_known_accounts"] is False
    assert sandbox.admin.faults()["slow_rate"] == 1.0

    sandbox.admin.reset(restore_config=True)
    assert sandbox.admin.config()["require_known_accounts"] is True
    assert sandbox.admin.faults()["slow_rate"] == 0.0


def test_seed_accounts_reports_new_ones(sandbox: SandboxServer) -> None:
    assert sandbox.admin.seed_accounts(["a", "b"]) == 2
    assert sandbox.admin.seed_accounts(["b", "c"]) == 1
    assert sandbox.admin.stats()["accounts"] == 3


# --- the server helper itself -----------------------------------------------------------------------------


def test_server_lifecycle() -> None:
    server = SandboxServer(SandboxConfig(api_key="pk_live_key"))
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.url
    with server:
        with httpx.Client(base_url=server.url) as http:
            created = http.put(ACCOUNTS, json={"linked_account_id": "a"}, headers=headers(key="pk_live_key"))
        assert created.json()["environment"] == "production"
    server.stop()  # idempotent
    with pytest.raises(RuntimeError, match="starts once"):
        server.start()
