"""Whatever a client sends, the tracking API answers 200 or a precise 4xx, never a 500,
and a valid event beside a hostile one is still stored."""

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.storage import Warehouse
from tests.conftest import WRITE_KEY, LiveServer, count_events, wait_for

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
segment_keys = st.sampled_from(
    ["type", "event", "userId", "anonymousId", "messageId", "timestamp", "sentAt",
     "properties", "traits", "context", "previousId", "groupId", "name"]
)  # fmt: skip
events = st.dictionaries(segment_keys | st.text(max_size=8), json_values, max_size=8)


@pytest.fixture
def http(live_server: LiveServer) -> httpx.Client:
    with httpx.Client(base_url=live_server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        yield client


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=events, path=st.sampled_from(["track", "identify", "page", "alias", "group"]))
def test_single_events_never_get_a_500(http: httpx.Client, body: dict, path: str) -> None:
    response = http.post(f"/v1/{path}", json=body)
    assert response.status_code in (200, 400, 413), response.text
    assert "success" in response.json()


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(batch=st.lists(events, max_size=5), raw=st.binary(max_size=64))
def test_batches_and_raw_bytes_never_get_a_500(http: httpx.Client, batch: list, raw: bytes) -> None:
    assert http.post("/v1/batch", json={"batch": batch}).status_code in (200, 400, 413)
    response = http.post("/v1/batch", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in (200, 400, 413), response.text


def test_hostile_values_beside_a_valid_event_do_not_sink_it(
    http: httpx.Client, warehouse: Warehouse
) -> None:
    hostile = [
        {"type": "track", "event": "X", "userId": "u", "properties": {"a.b": 1, "a": {"b": 2}}},
        {"type": "track", "event": "X", "userId": "u", "timestamp": "99999-01-01T00:00:00Z"},
        {"type": "track", "event": "X", "userId": "u", "properties": {"n": 10**30}},
        {"type": "track", "event": "\u0000", "userId": "u", "context": {"page": {"url": "::"}}},
        {"type": "identify", "userId": "u", "traits": {"": {"": [None, {"": ""}]}}},
        {"type": "track", "event": "Kept", "anonymousId": "valid-1", "messageId": "kept-1"},
    ]
    response = http.post("/v1/batch", json={"batch": hostile})
    assert response.status_code in (200, 400)
    wait_for(lambda: count_events(warehouse, "message_id = 'kept-1'") == 1)
