"""Property: any input to the enqueue API either stores one complete job or raises a clear ValidationError,
and nothing is ever half-written to Redis."""

from __future__ import annotations

import json
import math
from typing import Any

import fakeredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refold_dispatch.dispatcher import Dispatcher
from refold_dispatch.errors import ValidationError
from refold_dispatch.jobs import Job
from tests.conftest import make_settings

json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
anything = st.recursive(
    json_leaf | st.binary(max_size=5) | st.builds(object) | st.sets(st.integers(), max_size=2),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=5) | st.integers(), inner, max_size=3)
        | st.tuples(inner)
    ),
    max_leaves=8,
)
ids = st.text(max_size=12) | st.sampled_from(["acme", "acct-1", "..", " padded", "tab\there", "ünïcode"]) | anything


def snapshot(client: fakeredis.FakeRedis) -> dict[bytes, Any]:
    return {key: client.dump(key) for key in client.keys("*")}


def assert_complete_job(client: fakeredis.FakeRedis, job_id: str) -> None:
    record = client.hgetall(f"refold:job:{job_id}")
    for field in (b"data", b"fp", b"kind", b"acct", b"key", b"b64", b"kw", b"state"):
        assert field in record, field
    job = Job.from_json(record[b"data"])
    assert job.id == job_id
    assert client.get(f"refold:idem:{job.idempotency_key}") == job_id.encode()
    # Its message, filled from the shared template by the script, is whole JSON naming the job.
    messages = [json.loads(message) for message in client.lrange("refold", 0, -1)]
    assert [message["headers"]["id"] for message in messages].count(job_id) == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(event=ids, account=ids, payload=anything | st.dictionaries(st.text(max_size=8), json_leaf), key=st.none() | ids)
def test_trigger_event_stores_a_whole_job_or_nothing(event: Any, account: Any, payload: Any, key: Any) -> None:
    client = fakeredis.FakeRedis()
    dispatcher = Dispatcher(make_settings(), redis_client=client)
    try:
        receipt = dispatcher.trigger_event(event, account, payload, idempotency_key=key)
    except ValidationError as exc:
        message = str(exc)
        assert message  # a clear message, never empty
        assert snapshot(client) == {}
        return
    assert_complete_job(client, receipt.job_id)
    assert client.llen("refold") == 1


@settings(max_examples=200, deadline=None)
@given(account=ids, name=st.none() | anything, udf=st.none() | anything, your_app=st.none() | anything)
def test_upsert_stores_a_whole_job_or_nothing(account: Any, name: Any, udf: Any, your_app: Any) -> None:
    client = fakeredis.FakeRedis()
    dispatcher = Dispatcher(make_settings(), redis_client=client)
    try:
        receipt = dispatcher.upsert_linked_account(account, name=name, udf=udf, your_app=your_app)
    except ValidationError as exc:
        message = str(exc)
        assert message
        assert snapshot(client) == {}
        return
    assert_complete_job(client, receipt.job_id)


label_text = st.text(max_size=12) | st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=12)


@settings(max_examples=400, deadline=None)
@given(value=label_text, max_length=st.integers(min_value=1, max_value=8))
def test_label_fast_path_answers_as_the_thorough_checks(value: str, max_length: int) -> None:
    """The one-regex fast path for plain ASCII labels accepts exactly what the character checks accept."""
    import re

    from refold_dispatch import validation

    def outcome(check: Any) -> object:
        try:
            return check()
        except ValidationError as exc:
            return ("error", str(exc))

    checks = (
        lambda: validation._check_label("event", value, max_length=max_length),
        lambda: validation.validate_header_value("slug", value, max_length=max_length),
    )
    fast = [outcome(check) for check in checks]
    original = validation._PLAIN_ASCII_LABEL
    validation._PLAIN_ASCII_LABEL = re.compile(r"(?!)")  # matches nothing: only the thorough checks run
    try:
        thorough = [outcome(check) for check in checks]
    finally:
        validation._PLAIN_ASCII_LABEL = original
    assert fast == thorough


def test_assembled_jobs_equal_what_pydantic_constructs() -> None:
    """jobs._assemble skips model_construct's bookkeeping; the models it makes behave the same."""
    from refold_dispatch.jobs import TriggerEventParams, trigger_event_job, upsert_linked_account_job

    job = trigger_event_job("order.created", "acme", {"b": [1, {"c": None}], "a": "ü"}, slug="shop")
    params = TriggerEventParams.model_construct(**dict(job.params))
    constructed = Job.model_construct(
        id=job.id, idempotency_key=job.idempotency_key, created_at=job.created_at, params=params
    )
    assert job == constructed and job.params == params
    assert job.to_json() == constructed.to_json()
    assert job.params.model_fields_set == params.model_fields_set
    assert Job.from_json(job.to_json()) == job
    assert job.fingerprint() == Job.from_json(job.to_json()).fingerprint()
    assert job.payload_size() == Job.from_json(job.to_json()).payload_size()
    assert job.model_copy(update={"id": "x"}).fingerprint() == job.fingerprint()
    upsert = upsert_linked_account_job("acme", name="Acme")
    assert Job.from_json(upsert.to_json()) == upsert


json_values = st.recursive(
    json_leaf.filter(lambda v: not isinstance(v, float) or math.isfinite(v)),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
label = st.sampled_from(["order.created", "acct-1", "ünï", 'q"uote', "back\\slash", "a/b"])


@settings(max_examples=300, deadline=None)
@given(
    event=label,
    account=label,
    payload=st.dictionaries(st.text(max_size=8), json_values, max_size=5),
    slug=st.none() | label,
)
def test_an_event_jobs_assembled_json_is_what_pydantic_writes(
    event: str, account: str, payload: dict[str, Any], slug: str | None
) -> None:
    """Job.to_json assembles a trigger-event record around the payload's canonical JSON; it must be the same
    JSON value as pydantic's serialisation, and read back as the same job."""
    from refold_dispatch.jobs import trigger_event_job

    try:
        job = trigger_event_job(event, account, payload, slug=slug)
    except ValidationError:
        return
    assembled = job.to_json()
    assert json.loads(assembled) == json.loads(job.model_dump_json())
    assert Job.from_json(assembled) == job
