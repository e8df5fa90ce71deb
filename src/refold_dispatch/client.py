"""The only code that speaks Refold's REST API: :class:`RefoldClient` (sync) and :class:`AsyncRefoldClient`.

Layers, each a pure function shared by both clients so they cannot drift apart::

    validate (validation.py) → build a RequestSpec → send (the client: the only I/O) → check status → parse

* Request building (``_build_*``) turns validated arguments into a :class:`RequestSpec`: method, path,
  headers, query and JSON body. The API key is not part of it; the client adds it at send time, so a spec
  can be logged, compared in tests, or shown in an error without exposing the key.
* Sending happens in one method per client (``_send``): it is the only place httpx exceptions become ours
  (:func:`~refold_dispatch.errors.error_from_transport`, chained with ``raise ... from``) and the only place
  a non-2xx answer becomes one (:func:`~refold_dispatch.errors.error_from_response`).
* Parsing (``_parse_*``) turns a 2xx response into a model from :mod:`refold_dispatch.models`. A 2xx whose
  body is not the expected JSON raises :class:`~refold_dispatch.errors.PermanentError` with the evidence,
  except for a trigger: Refold has accepted the event by then, and failing would make the worker send it
  again, so a trigger tolerates an empty or unexpected body (see
  :class:`~refold_dispatch.models.TriggerEventResult`).

Each call is one attempt: retries, rate limiting and the circuit breaker belong to the worker. The clients log
nothing (the worker writes one line per attempt) and never show the API key in ``repr``, errors or logs.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
import pydantic
from pydantic import SecretStr

from refold_dispatch.config import Settings, get_settings, key_environment
from refold_dispatch.errors import (
    MAX_ERROR_BODY_CHARS,
    ConfigurationError,
    PermanentError,
    ValidationError,
    error_from_response,
    error_from_transport,
)
from refold_dispatch.jobs import Job, TriggerEventParams
from refold_dispatch.models import (
    DeleteResult,
    LinkedAccount,
    LinkedAccountPage,
    RefoldResult,
    SessionToken,
    TriggerEventResult,
)
from refold_dispatch.validation import (
    normalise_udf,
    validate_account_name,
    validate_event_name,
    validate_header_value,
    validate_idempotency_key,
    validate_linked_account_id,
    validate_page_number,
    validate_page_size,
    validate_payload,
    validate_your_app,
)

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "AsyncRefoldClient",
    "Endpoints",
    "RefoldClient",
    "RequestSpec",
]

# Large enough that listing a few thousand accounts takes a few dozen calls, small enough to stay well inside
# the read timeout and Refold's rate limit.
DEFAULT_PAGE_SIZE = 50
JSON_MEDIA_TYPE = "application/json"
# Marks a PermanentError raised because a 2xx body was not what Refold documents (not an HTTP error).
UNEXPECTED_RESPONSE = "UNEXPECTED_RESPONSE"

ResultT = TypeVar("ResultT", bound=RefoldResult)
Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


@functools.cache
def _user_agent() -> str:
    # Read lazily: the package __init__ may import this module before it defines __version__.
    import refold_dispatch

    return f"refold-dispatch/{refold_dispatch.__version__}"


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The paths of the operations we call, from settings: Refold has moved routes before."""

    trigger_event: str
    linked_account: str
    session_token: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Endpoints:
        paths = {
            "trigger_event": settings.trigger_event_path,
            "linked_account": settings.linked_account_path,
            "session_token": settings.session_token_path,
        }
        for name, path in paths.items():
            if not path.startswith("/"):
                raise ConfigurationError(f"REFOLD_{name.upper()}_PATH must start with '/', got {path!r}")
        return cls(**paths)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """Everything about one request except the API key, which the client adds when it sends."""

    operation: str
    method: str
    path: str
    headers: Mapping[str, str]
    params: Mapping[str, str] = field(default_factory=dict)
    json_body: Mapping[str, Any] | None = None
    idempotency_key: str | None = None

    def content(self) -> bytes | None:
        """The body as sent: compact UTF-8 JSON. NaN and infinities were refused by validation already."""
        if self.json_body is None:
            return None
        return json.dumps(self.json_body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


# --- request building: pure functions, validated arguments in, RequestSpec out ---------------------------


def _headers(idempotency_key: str | None, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    headers = {"Content-Type": JSON_MEDIA_TYPE, "Accept": JSON_MEDIA_TYPE, "User-Agent": _user_agent()}
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    for name, value in (extra or {}).items():
        if value is not None:
            headers[name] = value
    return headers


def _optional_idempotency_key(value: str | None) -> str | None:
    return None if value is None else validate_idempotency_key(value)


def _optional_header(name: str, value: str | None) -> str | None:
    return None if value is None else validate_header_value(name, value)


def _account_path(endpoints: Endpoints, linked_account_id: str) -> str:
    # safe="" so an id holding "/", "?" or "#" stays one path segment instead of changing the route.
    return f"{endpoints.linked_account.rstrip('/')}/{quote(linked_account_id, safe='')}"


def _build_trigger_event(
    endpoints: Endpoints,
    event: str,
    linked_account_id: str,
    payload: Mapping[str, Any] | None = None,
    *,
    config_id: str | None = None,
    slug: str | None = None,
    instance_tag: str | None = None,
    idempotency_key: str | None = None,
) -> RequestSpec:
    key = _optional_idempotency_key(idempotency_key)
    headers = _headers(
        key,
        {
            "linked_account_id": validate_linked_account_id(linked_account_id),
            "config_id": _optional_header("config_id", config_id),
            "slug": _optional_header("slug", slug),
            "instance_tag": _optional_header("instance_tag", instance_tag),
        },
    )
    body = {"event": validate_event_name(event), "payload": validate_payload(payload)}
    return RequestSpec("trigger_event", "POST", endpoints.trigger_event, headers, json_body=body, idempotency_key=key)


def _build_upsert_linked_account(
    endpoints: Endpoints,
    linked_account_id: str,
    *,
    name: str | None = None,
    udf: Mapping[str, str | int | float | bool] | None = None,
    your_app: Mapping[str, Any] | None = None,
    idempotency_key: str | None = None,
) -> RequestSpec:
    key = _optional_idempotency_key(idempotency_key)
    body: dict[str, Any] = {"linked_account_id": validate_linked_account_id(linked_account_id)}
    if name is not None:
        body["name"] = validate_account_name(name)
    if udf is not None:
        body["udf"] = normalise_udf(udf)
    if your_app is not None:
        body["your_app"] = validate_your_app(your_app)
    return RequestSpec(
        "upsert_linked_account",
        "PUT",
        endpoints.linked_account,
        _headers(key),
        json_body=body,
        idempotency_key=key,
    )


def _build_job_request(endpoints: Endpoints, job: Job) -> RequestSpec:
    """The request for an enqueued job, for the worker. The job's fields were validated when it was enqueued
    (and come back from Redis as plain JSON), so they are assembled here, not walked and checked again on every
    attempt; ``tests/test_client.py`` pins the result equal to the public builders' request."""
    params = job.params
    key = job.idempotency_key
    if isinstance(params, TriggerEventParams):
        extra = {
            "linked_account_id": params.linked_account_id,
            "config_id": params.config_id,
            "slug": params.slug,
            "instance_tag": params.instance_tag,
        }
        body: dict[str, Any] = {"event": params.event, "payload": params.payload}
        return RequestSpec(
            "trigger_event", "POST", endpoints.trigger_event, _headers(key, extra), json_body=body, idempotency_key=key
        )
    body = {"linked_account_id": params.linked_account_id}
    optional = {"name": params.name, "udf": params.udf, "your_app": params.your_app}
    body.update({name: value for name, value in optional.items() if value is not None})
    return RequestSpec(
        "upsert_linked_account", "PUT", endpoints.linked_account, _headers(key), json_body=body, idempotency_key=key
    )


def _build_get_linked_account(endpoints: Endpoints, linked_account_id: str) -> RequestSpec:
    path = _account_path(endpoints, validate_linked_account_id(linked_account_id))
    return RequestSpec("get_linked_account", "GET", path, _headers(None))


def _build_delete_linked_account(endpoints: Endpoints, linked_account_id: str) -> RequestSpec:
    path = _account_path(endpoints, validate_linked_account_id(linked_account_id))
    return RequestSpec("delete_linked_account", "DELETE", path, _headers(None))


def _build_list_linked_accounts(endpoints: Endpoints, page: int, limit: int) -> RequestSpec:
    params = {"page": str(validate_page_number(page)), "limit": str(validate_page_size(limit))}
    return RequestSpec("list_linked_accounts", "GET", endpoints.linked_account, _headers(None), params=params)


def _build_session_token(endpoints: Endpoints, linked_account_id: str, force_refresh: bool) -> RequestSpec:
    if not isinstance(force_refresh, bool):
        raise ValidationError(f"force_refresh must be a bool, got {type(force_refresh).__name__}")
    return RequestSpec(
        "session_token",
        "POST",
        endpoints.session_token,
        _headers(None),
        # The spec types the query value as the strings 'true'/'false', not a JSON boolean.
        params={"force_refresh": "true" if force_refresh else "false"},
        json_body={"linked_account_id": validate_linked_account_id(linked_account_id)},
    )


# --- response handling: pure functions, httpx.Response in, model or error out ----------------------------


def _raise_for_status(response: httpx.Response, spec: RequestSpec, max_retry_after: float) -> None:
    if not response.is_success:
        raise error_from_response(response, idempotency_key=spec.idempotency_key, max_retry_after=max_retry_after)


def _header_request_id(response: httpx.Response) -> str | None:
    request_id: str | None = response.headers.get("x-request-id") or response.headers.get("request-id")
    return request_id


def _unexpected_response(
    response: httpx.Response, spec: RequestSpec, problem: str, *, keep_body: bool
) -> PermanentError:
    """A 2xx we cannot read. ``keep_body=False`` for bodies that may hold credentials (session tokens)."""
    text = response.text[:MAX_ERROR_BODY_CHARS] if keep_body and response.content else None
    return PermanentError(
        f"Refold answered {response.status_code} to {spec.operation} with {problem}",
        status_code=response.status_code,
        error_code=UNEXPECTED_RESPONSE,
        request_id=_header_request_id(response),
        idempotency_key=spec.idempotency_key,
        body=text,
        method=spec.method,
        path=response.request.url.path,
    )


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is empty, not JSON, or JSON of another type."""
    try:
        parsed = json.loads(response.content)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _with_meta(response: httpx.Response, body: Mapping[str, Any]) -> dict[str, Any]:
    body_request_id = body.get("request_id")
    request_id = _header_request_id(response) or (body_request_id if isinstance(body_request_id, str) else None)
    # The HTTP status wins over a "status_code" some Refold bodies repeat.
    return {**body, "status_code": response.status_code, "request_id": request_id}


def _describe(exc: pydantic.ValidationError) -> str:
    # Locations and messages only: the offending input values may be credentials.
    problems = (
        f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    )
    return "; ".join(problems)


def _model(
    model: type[ResultT],
    data: Mapping[str, Any],
    response: httpx.Response,
    spec: RequestSpec,
    *,
    keep_body: bool,
) -> ResultT:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        # from None: pydantic's own message quotes the input, which for a session token is the token.
        raise _unexpected_response(
            response,
            spec,
            f"a body that is not a valid {model.__name__} ({_describe(exc)})",
            keep_body=keep_body,
        ) from None


def _required_object(response: httpx.Response, spec: RequestSpec, *, keep_body: bool = True) -> dict[str, Any]:
    body = _json_object(response)
    if body is None:
        problem = "an empty body" if not response.content else "a body that is not a JSON object"
        raise _unexpected_response(response, spec, problem, keep_body=keep_body)
    return body


def _parse_trigger_event(response: httpx.Response) -> TriggerEventResult:
    body = _json_object(response)
    if body is not None:
        try:
            return TriggerEventResult.model_validate(_with_meta(response, body))
        except pydantic.ValidationError:
            pass  # Accepted all the same: keep the raw text below rather than fail a delivered event.
    return TriggerEventResult(
        status_code=response.status_code,
        request_id=_header_request_id(response),
        body_text=response.text[:MAX_ERROR_BODY_CHARS] or None,
    )


def _parse_linked_account(response: httpx.Response, spec: RequestSpec) -> LinkedAccount:
    return _model(LinkedAccount, _with_meta(response, _required_object(response, spec)), response, spec, keep_body=True)


def _parse_delete(response: httpx.Response, spec: RequestSpec) -> DeleteResult:
    return _model(DeleteResult, _with_meta(response, _required_object(response, spec)), response, spec, keep_body=True)


def _parse_linked_account_page(response: httpx.Response, spec: RequestSpec) -> LinkedAccountPage:
    data = _with_meta(response, _required_object(response, spec))
    docs = data.get("docs")
    if isinstance(docs, list):
        # Each account carries the page's status and request id, so any LinkedAccount can be ledgered alike.
        meta = {"status_code": data["status_code"], "request_id": data["request_id"]}
        data["docs"] = [{**doc, **meta} if isinstance(doc, dict) else doc for doc in docs]
    return _model(LinkedAccountPage, data, response, spec, keep_body=True)


def _parse_session_token(response: httpx.Response, spec: RequestSpec, received_at: datetime) -> SessionToken:
    # keep_body=False throughout: a token response that fails to parse may still hold a live token.
    data = _with_meta(response, _required_object(response, spec, keep_body=False))
    data["received_at"] = received_at
    return _model(SessionToken, data, response, spec, keep_body=False)


def _next_page_number(page: LinkedAccountPage, requested: int) -> int | None:
    """The page after ``requested``, or None when done; refuses to loop on a page that does not advance."""
    if not page.has_next_page or not page.docs:
        return None
    following = page.next_page if page.next_page is not None else requested + 1
    if following <= requested:
        raise PermanentError(
            f"Refold's pagination did not advance: page {requested} says the next page is {following}",
            status_code=page.status_code,
            error_code=UNEXPECTED_RESPONSE,
            request_id=page.request_id,
        )
    return following


# --- the clients ------------------------------------------------------------------------------------------


# Distinct paths whose parsed URL a client keeps (the worker's few endpoints, and some account paths).
_MAX_CACHED_URLS = 64


def _environment_proxies() -> bool:
    """Whether the environment names a proxy (``HTTPS_PROXY``, ``ALL_PROXY``...), which httpx would use."""
    return any(
        value for name, value in os.environ.items() if name.lower() in ("http_proxy", "https_proxy", "all_proxy")
    )


def _normalise_base_url(base_url: str) -> str:
    if not base_url.startswith(("http://", "https://")):
        raise ConfigurationError(f"base_url must start with http:// or https://, got {base_url!r}")
    return base_url.rstrip("/")


def _checked_api_key(settings: Settings) -> SecretStr:
    # Surrounding whitespace (a newline from a mounted secret file) is dropped. Anything else outside
    # printable ASCII is refused here, because the HTTP library's error for an illegal header value quotes
    # the value.
    secret = settings.require_api_key().get_secret_value().strip()
    if any(not "!" <= char <= "~" for char in secret):
        raise ConfigurationError(
            "REFOLD_API_KEY contains spaces, control or non-ASCII characters: check how it was pasted or mounted"
        )
    return SecretStr(secret)


class _ClientBase:
    """Settings resolution and header assembly shared by the sync and async clients."""

    def __init__(
        self,
        settings: Settings | None,
        *,
        api_key: str | SecretStr | None,
        base_url: str | None,
        timeout: httpx.Timeout | None,
        max_retry_after: float | None,
        clock: Clock | None,
    ) -> None:
        if settings is None:
            # Explicit key and URL make a complete client: do not read the environment behind its back.
            settings = get_settings() if api_key is None or base_url is None else Settings.model_construct()
        overrides: dict[str, Any] = {}
        if api_key is not None:
            overrides["api_key"] = api_key if isinstance(api_key, SecretStr) else SecretStr(api_key)
        if base_url is not None:
            overrides["base_url"] = base_url
        if overrides:
            settings = settings.model_copy(update=overrides)
        self._api_key = _checked_api_key(settings)
        self._base_url = _normalise_base_url(settings.base_url)
        self._endpoints = Endpoints.from_settings(settings)
        self._timeout = timeout or httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=settings.write_timeout,
            pool=settings.pool_timeout,
        )
        self._max_retry_after = settings.max_retry_after_seconds if max_retry_after is None else max_retry_after
        self._clock = clock or _utc_now
        self._urls: dict[str, httpx.URL] = {}

    @property
    def base_url(self) -> str:
        return self._base_url

    @property
    def environment(self) -> str:
        """``test`` or ``production`` (from the key's prefix), or ``unknown``: safe to log, unlike the key."""
        return key_environment(self._api_key)

    @property
    def endpoints(self) -> Endpoints:
        return self._endpoints

    def _http_options(self) -> dict[str, Any]:
        # No redirects: a redirect to another host would carry x-api-key there (httpx strips only
        # Authorization).
        return {"base_url": self._base_url, "timeout": self._timeout, "follow_redirects": False}

    def _outgoing_headers(self, spec: RequestSpec) -> dict[str, str]:
        return {**spec.headers, "x-api-key": self._api_key.get_secret_value()}

    def _request(self, spec: RequestSpec) -> httpx.Request:
        """The request for ``spec``, built here rather than by ``Client.build_request``: the URL of a path
        without query parameters is parsed once and kept (parsing it again per request was a fifth of the
        worker's HTTP CPU in bench/), and the timeout rides along as ``Client.send`` expects."""
        url = self._urls.get(spec.path) if not spec.params else None
        if url is None:
            url = httpx.URL(self._base_url + spec.path, params=spec.params or None)
            if not spec.params and len(self._urls) < _MAX_CACHED_URLS:  # account paths vary: keep the cache bounded
                self._urls[spec.path] = url
        return httpx.Request(
            spec.method,
            url,
            headers=self._outgoing_headers(spec),
            content=spec.content(),
            extensions={"timeout": self._timeout.as_dict()},
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._base_url!r}, environment={self.environment!r})"


class RefoldClient(_ClientBase):
    """Synchronous Refold client over one pooled :class:`httpx.Client`, reused for every request.

    Explicit arguments override ``settings``; without settings, a client given both ``api_key`` and
    ``base_url`` uses the default paths and timeouts, and otherwise
    :func:`~refold_dispatch.config.get_settings` fills in. Raises
    :class:`~refold_dispatch.errors.ConfigurationError` when the key is missing or a placeholder. ``clock``
    (aware UTC now) stamps session tokens on receipt; tests inject a fixed one.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: httpx.Timeout | None = None,
        max_retry_after: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            settings,
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retry_after=max_retry_after,
            clock=clock,
        )
        self._pool = transport or httpx.HTTPTransport()
        self._http = httpx.Client(transport=self._pool, **self._http_options())
        # With no proxy in the environment, requests go straight to the connection pool (see _dispatch).
        self._direct = not _environment_proxies()

    def _dispatch(self, request: httpx.Request) -> httpx.Response:
        """Send through the pool itself, skipping what ``Client.send`` adds per request that this client never
        uses: the cookie jar (Refold authenticates by key, and a cookie would be state nobody asked for), the
        redirect and auth machinery (redirects are refused), event hooks. bench/ measured a fifth less CPU per
        request. A proxy set in the environment is honoured by the client's own path."""
        if not self._direct or self._http.is_closed:  # a closed client raises as httpx's does
            return self._http.send(request)
        response = self._pool.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        response.request = request
        return response

    def _send(self, spec: RequestSpec) -> httpx.Response:
        """The one place this client touches the network, and so the one place errors are translated."""
        request = self._request(spec)
        try:
            response = self._dispatch(request)
        except httpx.HTTPError as exc:
            raise error_from_transport(
                exc, method=spec.method, path=request.url.path, idempotency_key=spec.idempotency_key
            ) from exc
        _raise_for_status(response, spec, self._max_retry_after)
        return response

    def send_job(self, job: Job) -> TriggerEventResult | LinkedAccount:
        """Send an enqueued job's request (the worker's call), with the job's idempotency key."""
        spec = _build_job_request(self._endpoints, job)
        response = self._send(spec)
        if spec.operation == "trigger_event":
            return _parse_trigger_event(response)
        return _parse_linked_account(response, spec)

    def trigger_event(
        self,
        event: str,
        linked_account_id: str,
        payload: Mapping[str, Any] | None = None,
        *,
        config_id: str | None = None,
        slug: str | None = None,
        instance_tag: str | None = None,
        idempotency_key: str | None = None,
    ) -> TriggerEventResult:
        """Fire ``event`` for the account; Refold queues the workflow and returns at once."""
        spec = _build_trigger_event(
            self._endpoints,
            event,
            linked_account_id,
            payload,
            config_id=config_id,
            slug=slug,
            instance_tag=instance_tag,
            idempotency_key=idempotency_key,
        )
        return _parse_trigger_event(self._send(spec))

    def upsert_linked_account(
        self,
        linked_account_id: str,
        *,
        name: str | None = None,
        udf: Mapping[str, str | int | float | bool] | None = None,
        your_app: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> LinkedAccount:
        """Create the account, or update the fields given (PUT: repeating it is harmless)."""
        spec = _build_upsert_linked_account(
            self._endpoints,
            linked_account_id,
            name=name,
            udf=udf,
            your_app=your_app,
            idempotency_key=idempotency_key,
        )
        return _parse_linked_account(self._send(spec), spec)

    def get_linked_account(self, linked_account_id: str) -> LinkedAccount:
        spec = _build_get_linked_account(self._endpoints, linked_account_id)
        return _parse_linked_account(self._send(spec), spec)

    def delete_linked_account(self, linked_account_id: str) -> DeleteResult:
        spec = _build_delete_linked_account(self._endpoints, linked_account_id)
        return _parse_delete(self._send(spec), spec)

    def list_linked_accounts(self, page: int = 1, limit: int = DEFAULT_PAGE_SIZE) -> LinkedAccountPage:
        spec = _build_list_linked_accounts(self._endpoints, page, limit)
        return _parse_linked_account_page(self._send(spec), spec)

    def iter_linked_accounts(self, limit: int = DEFAULT_PAGE_SIZE) -> Iterator[LinkedAccount]:
        """Every linked account, page by page (one request per page, fetched as iteration reaches it)."""
        # Validated here, not inside the generator, so a bad limit fails at the call rather than at first use.
        return self._iter_linked_accounts(validate_page_size(limit))

    def _iter_linked_accounts(self, limit: int) -> Iterator[LinkedAccount]:
        page_number: int | None = 1
        while page_number is not None:
            page = self.list_linked_accounts(page_number, limit)
            yield from page.docs
            page_number = _next_page_number(page, page_number)

    def session_token(self, linked_account_id: str, force_refresh: bool = False) -> SessionToken:
        """A session token for the account's frontend; Refold reuses a valid one unless ``force_refresh``."""
        spec = _build_session_token(self._endpoints, linked_account_id, force_refresh)
        response = self._send(spec)
        return _parse_session_token(response, spec, self._clock())

    def close(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


class AsyncRefoldClient(_ClientBase):
    """The asyncio twin of :class:`RefoldClient` over one pooled :class:`httpx.AsyncClient`: same arguments,
    same requests, same results and errors; methods are coroutines and ``iter_linked_accounts`` is an async
    iterator."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        api_key: str | SecretStr | None = None,
        base_url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: httpx.Timeout | None = None,
        max_retry_after: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            settings,
            api_key=api_key,
            base_url=base_url,
            timeout=timeout,
            max_retry_after=max_retry_after,
            clock=clock,
        )
        self._http = httpx.AsyncClient(transport=transport, **self._http_options())

    async def _send(self, spec: RequestSpec) -> httpx.Response:
        """The one place this client touches the network, and so the one place errors are translated."""
        request = self._request(spec)
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            raise error_from_transport(
                exc, method=spec.method, path=request.url.path, idempotency_key=spec.idempotency_key
            ) from exc
        _raise_for_status(response, spec, self._max_retry_after)
        return response

    async def trigger_event(
        self,
        event: str,
        linked_account_id: str,
        payload: Mapping[str, Any] | None = None,
        *,
        config_id: str | None = None,
        slug: str | None = None,
        instance_tag: str | None = None,
        idempotency_key: str | None = None,
    ) -> TriggerEventResult:
        """Fire ``event`` for the account; Refold queues the workflow and returns at once."""
        spec = _build_trigger_event(
            self._endpoints,
            event,
            linked_account_id,
            payload,
            config_id=config_id,
            slug=slug,
            instance_tag=instance_tag,
            idempotency_key=idempotency_key,
        )
        return _parse_trigger_event(await self._send(spec))

    async def upsert_linked_account(
        self,
        linked_account_id: str,
        *,
        name: str | None = None,
        udf: Mapping[str, str | int | float | bool] | None = None,
        your_app: Mapping[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> LinkedAccount:
        """Create the account, or update the fields given (PUT: repeating it is harmless)."""
        spec = _build_upsert_linked_account(
            self._endpoints,
            linked_account_id,
            name=name,
            udf=udf,
            your_app=your_app,
            idempotency_key=idempotency_key,
        )
        return _parse_linked_account(await self._send(spec), spec)

    async def get_linked_account(self, linked_account_id: str) -> LinkedAccount:
        spec = _build_get_linked_account(self._endpoints, linked_account_id)
        return _parse_linked_account(await self._send(spec), spec)

    async def delete_linked_account(self, linked_account_id: str) -> DeleteResult:
        spec = _build_delete_linked_account(self._endpoints, linked_account_id)
        return _parse_delete(await self._send(spec), spec)

    async def list_linked_accounts(self, page: int = 1, limit: int = DEFAULT_PAGE_SIZE) -> LinkedAccountPage:
        spec = _build_list_linked_accounts(self._endpoints, page, limit)
        return _parse_linked_account_page(await self._send(spec), spec)

    def iter_linked_accounts(self, limit: int = DEFAULT_PAGE_SIZE) -> AsyncIterator[LinkedAccount]:
        """Every linked account, page by page: ``async for account in client.iter_linked_accounts(): ...``."""
        return self._iter_linked_accounts(validate_page_size(limit))

    async def _iter_linked_accounts(self, limit: int) -> AsyncIterator[LinkedAccount]:
        page_number: int | None = 1
        while page_number is not None:
            page = await self.list_linked_accounts(page_number, limit)
            for account in page.docs:
                yield account
            page_number = _next_page_number(page, page_number)

    async def session_token(self, linked_account_id: str, force_refresh: bool = False) -> SessionToken:
        """A session token for the account's frontend; Refold reuses a valid one unless ``force_refresh``."""
        spec = _build_session_token(self._endpoints, linked_account_id, force_refresh)
        response = await self._send(spec)
        return _parse_session_token(response, spec, self._clock())

    async def aclose(self) -> None:
        """Close the connection pool. The client cannot be used afterwards."""
        await self._http.aclose()

    async def close(self) -> None:
        """Same as :meth:`aclose`, for parity with :meth:`RefoldClient.close`."""
        await self.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.aclose()
