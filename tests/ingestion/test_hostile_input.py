"""Whatever a client sends, the tracking API answers 200 or a precise 4xx, never a 500,
and a valid event beside a hostile one is still stored."""

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdp.settings import Settings
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


def test_a_flooding_client_is_answered_429_and_nobody_else_is(
    settings: Settings, warehouse: Warehouse
) -> None:
    """A bot on the public write key, from one address (or one IPv6 /64): past the limit
    its requests get 429 with Retry-After and nothing of them is stored; what it sent
    before is kept; other clients, the shop's servers' key, loopback and private networks'
    addresses (a proxy many stand behind) go on."""
    from cdp.app import create_app

    server_key = "wk_server_key_of_the_shop"
    limited = settings.model_copy(update={"rate_limit": "30/minute",
                                          "write_keys": [WRITE_KEY, server_key],
                                          "catalog_write_keys": [server_key]})  # fmt: skip

    def batch(who: str, n: int, tag: str) -> dict:
        return {"batch": [{"type": "track", "event": "Flood", "anonymousId": who,
                           "messageId": f"{tag}-{i}"} for i in range(n)]}  # fmt: skip

    def post(body: dict, ip: str | None, key: str = WRITE_KEY) -> httpx.Response:
        headers = {"X-Forwarded-For": ip} if ip else {}
        return httpx.post(f"{server.url}/v1/batch", json=body, auth=(key, ""), headers=headers)

    with LiveServer(create_app(limited), limited) as server:
        assert post(batch("bot", 20, "first"), "203.0.113.9").status_code == 200
        assert post(batch("bot", 10, "second"), "203.0.113.9").status_code == 200
        refused = post(batch("bot", 5, "third"), "203.0.113.9")
        assert refused.status_code == 429
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert "30 events per 60 s" in refused.json()["error"]
        one = {"event": "Flood", "anonymousId": "bot", "messageId": "single"}
        single = httpx.post(f"{server.url}/v1/track", json=one, auth=(WRITE_KEY, ""),
                            headers={"X-Forwarded-For": "203.0.113.9"})  # fmt: skip
        assert single.status_code == 429
        # An IPv6 host's addresses share its /64.
        assert post(batch("v6", 30, "v6a"), "2001:db8:1:2::1").status_code == 200
        assert post(batch("v6", 1, "v6b"), "2001:db8:1:2::ffff").status_code == 429
        assert post(batch("v6", 1, "v6c"), "2001:db8:1:3::1").status_code == 200
        # Others go on: another client, the shop's server key, loopback.
        assert post(batch("shopper", 5, "other"), "198.51.100.2").status_code == 200
        assert post(batch("server", 40, "server"), "203.0.113.9", server_key).status_code == 200
        assert post(batch("local", 40, "local"), None).status_code == 200
        # A proxy that does not pass on its clients' addresses: not limited.
        assert post(batch("lan", 40, "lan"), "10.1.2.3").status_code == 200
        wait_for(lambda: count_events(warehouse, "event = 'Flood'") == 20 + 10 + 30 + 1 + 5
                 + 40 + 40 + 40)  # fmt: skip
        assert count_events(warehouse, "message_id LIKE 'third-%' OR message_id = 'single' "
                                       "OR message_id = 'v6b-0'") == 0  # fmt: skip
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'cdp_tracking_events_total{outcome="rate_limited"} 7.0' in metrics
