"""The tracking API over HTTP, on the real embedded engines: what is accepted is stored
once; what is refused gets a precise 4xx and takes nothing else down with it."""

import gzip
import json
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cdp.storage import Warehouse
from tests.conftest import API_KEY, WRITE_KEY, LiveServer, count_events, wait_for


@pytest.fixture
def http(live_server: LiveServer) -> httpx.Client:
    with httpx.Client(base_url=live_server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        yield client


def stored(warehouse: Warehouse, message_id: str) -> dict:
    columns = "type, event, name, anonymous_id, user_id, utm_source, browser, is_bot, source_id"
    rows = warehouse.query_rows(
        f"SELECT {columns} FROM events WHERE message_id = {{m:String}}", {"m": message_id}
    )
    assert len(rows) == 1, rows
    return dict(zip([c.strip() for c in columns.split(",")], rows[0], strict=True))


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        ("track", {"event": "Product Viewed", "properties": {"category": "Bags"}}),
        ("identify", {"traits": {"email": "a@example.com"}}),
        ("page", {"name": "Home"}),
        ("screen", {"name": "Cart"}),
        ("group", {"groupId": "acme"}),
        ("alias", {"previousId": "anon-1"}),
    ],
)
def test_each_call_is_stored(
    http: httpx.Client, warehouse: Warehouse, path: str, payload: dict
) -> None:
    message_id = str(uuid.uuid4())
    response = http.post(f"/v1/{path}", json={"userId": "u-1", "messageId": message_id, **payload})
    assert response.status_code == 200 and response.json() == {"success": True}
    wait_for(lambda: count_events(warehouse, f"message_id = '{message_id}'"))
    assert stored(warehouse, message_id)["type"] == path


def test_write_key_in_body_as_text_plain_like_send_beacon(
    live_server: LiveServer, warehouse: Warehouse
) -> None:
    body = {
        "batch": [{"type": "page", "anonymousId": "a-1", "messageId": "beacon-1"}],
        "writeKey": WRITE_KEY,
    }
    response = httpx.post(
        f"{live_server.url}/v1/batch",
        content=httpx.Request("POST", "/", json=body).content,
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert response.status_code == 200
    wait_for(lambda: count_events(warehouse, "message_id = 'beacon-1'"))


def test_enrichment_is_stored(http: httpx.Client, warehouse: Warehouse) -> None:
    url = "https://shop.example/?utm_source=newsletter&utm_medium=email"
    agent = "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)"
    http.post(
        "/v1/page",
        json={
            "anonymousId": "a-2",
            "messageId": "enriched",
            "context": {"page": {"url": url}, "userAgent": agent},
        },
    )
    wait_for(lambda: count_events(warehouse, "message_id = 'enriched'"))
    row = stored(warehouse, "enriched")
    assert row["utm_source"] == "newsletter" and row["is_bot"] is True
    assert row["source_id"] and WRITE_KEY not in row["source_id"]


def test_a_resent_batch_is_stored_once(http: httpx.Client, warehouse: Warehouse) -> None:
    batch = [
        {"type": "track", "event": "Product Added", "anonymousId": "a-3", "messageId": f"r-{i}"}
        for i in range(20)
    ]
    for _ in range(3):
        assert http.post("/v1/batch", json={"batch": batch}).status_code == 200
    wait_for(lambda: count_events(warehouse, "anonymous_id = 'a-3'") >= 20)
    http.post("/v1/track", json={**batch[0], "messageId": "r-marker"})
    wait_for(lambda: count_events(warehouse, "message_id = 'r-marker'"))
    assert count_events(warehouse, "anonymous_id = 'a-3'") == 21


def test_gzipped_body_is_accepted(http: httpx.Client, warehouse: Warehouse) -> None:
    body = b'{"batch": [{"type": "track", "event": "Z", "userId": "u", "messageId": "gz-1"}]}'
    response = http.post(
        "/v1/batch",
        content=gzip.compress(body),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200
    wait_for(lambda: count_events(warehouse, "message_id = 'gz-1'"))


def test_one_bad_event_in_a_batch_is_reported_and_the_rest_kept(
    http: httpx.Client, warehouse: Warehouse
) -> None:
    batch = [
        {"type": "track", "event": "Good", "anonymousId": "a-4", "messageId": "good-1"},
        {"type": "track", "event": "No identity", "messageId": "bad-1"},
        {"type": "track", "event": "Good", "anonymousId": "a-4", "messageId": "good-2"},
        "not an object",
        {"type": "track", "event": "Big", "anonymousId": "a-4", "properties": {"x": "y" * 40000}},
    ]
    response = http.post("/v1/batch", json={"batch": batch})
    assert response.status_code == 400
    body = response.json()
    assert body["accepted"] == 2
    assert body["errors"] == [
        "batch[1]: userId or anonymousId is required",
        "batch[3]: must be a JSON object",
        f"batch[4]: event is {len(json.dumps(batch[4], separators=(',', ':')))} bytes, "
        "the limit is 32768",
    ]
    wait_for(lambda: count_events(warehouse, "anonymous_id = 'a-4'") == 2)


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        ({"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 400,
         "malformed JSON"),
        ({"json": ["a", "list"]}, 400, "body must be a JSON object"),
        ({"json": {"event": "X", "userId": {"id": 5}}}, 400, "invalid event"),
        ({"json": {"event": "X"}}, 400, "invalid event"),
        ({"content": b"event=X", "headers": {"Content-Type": "application/x-www-form-urlencoded"}},
         415, "content type must be application/json or text/plain"),
        ({"json": {"event": "X", "userId": "u", "properties": {"x": "y" * 40000}}}, 413,
         "the limit is 32768"),
        ({"content": b"\x1f\x8bnot gzip", "headers": {"Content-Type": "application/json",
                                                       "Content-Encoding": "gzip"}},
         400, "not valid gzip"),
        ({"json": {"event": "X", "userId": "u"}, "headers": {"Content-Encoding": "br"}}, 415,
         "content encoding br"),
    ],
)  # fmt: skip
def test_bad_single_events_get_a_precise_4xx(
    http: httpx.Client, kwargs: dict, status: int, message: str
) -> None:
    response = http.post("/v1/track", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_invalid_event_errors_name_the_field(http: httpx.Client) -> None:
    response = http.post("/v1/track", json={"userId": "u"})
    assert response.json()["errors"] == ["track: track needs a non-empty event name"]


def test_oversized_batch_and_gzip_bomb_are_refused(http: httpx.Client) -> None:
    event = {"type": "track", "event": "X", "userId": "u", "properties": {"p": "x" * 1000}}
    big = {"batch": [event] * 600}
    assert http.post("/v1/batch", json=big).status_code == 413
    bomb = gzip.compress(b'{"batch": [' + b" " * 20_000_000 + b"]}")
    response = http.post(
        "/v1/batch",
        content=bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 413
    assert "decompressed body exceeds" in response.json()["error"]


def test_batch_must_hold_a_list(http: httpx.Client) -> None:
    response = http.post("/v1/batch", json={"batch": {"type": "track"}})
    assert response.status_code == 400
    assert response.json()["errors"] == ["body.batch: Input should be a valid list"]


def test_unknown_or_missing_write_key_is_401(live_server: LiveServer) -> None:
    event = {"event": "X", "userId": "u"}
    missing = httpx.post(f"{live_server.url}/v1/track", json=event)
    assert missing.status_code == 401 and "missing write key" in missing.json()["error"]
    wrong = httpx.post(f"{live_server.url}/v1/track", json=event, auth=("wk_nope", ""))
    assert wrong.status_code == 401 and wrong.json()["error"] == "unknown write key"
    garbled = httpx.post(
        f"{live_server.url}/v1/track", json=event, headers={"Authorization": "Basic !!!"}
    )
    assert garbled.status_code == 401


def test_cors_preflight_allows_browsers(live_server: LiveServer) -> None:
    response = httpx.options(
        f"{live_server.url}/v1/batch",
        headers={
            "Origin": "https://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", "https://shop.example")


def test_snippet_health_docs_and_report(live_server: LiveServer, http: httpx.Client) -> None:
    snippet = httpx.get(f"{live_server.url}/sdk/cdp.js")
    assert snippet.status_code == 200 and "javascript" in snippet.headers["content-type"]
    assert "sendBeacon" in snippet.text
    health = httpx.get(f"{live_server.url}/healthz").json()
    assert health["status"] == "ok" and health["writer"] is True
    paths = httpx.get(f"{live_server.url}/openapi.json").json()["paths"]
    assert {"/v1/track", "/v1/batch", "/v1/alias", "/api/v1/reports/overview"} <= set(paths)
    assert httpx.get(f"{live_server.url}/api/v1/reports/overview").status_code == 401
    http.post("/v1/track", json={"event": "Order Completed", "userId": "u",
                                 "properties": {"revenue": 12.5}})  # fmt: skip

    def report() -> dict:
        return httpx.get(
            f"{live_server.url}/api/v1/reports/overview",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).json()

    wait_for(lambda: report()["events"] == 1)
    overview = report()
    assert overview["orders"] == 1 and overview["revenue"] == 12.5
    assert overview["visitors_by_device"] == {"(unknown)": 1}
    assert overview["visitors_by_source"] == {}  # no page views


def test_metrics_count_what_happened(live_server: LiveServer, http: httpx.Client) -> None:
    def sample(name: str, **labels: str) -> float:
        text = httpx.get(f"{live_server.url}/metrics").text
        for family in text_string_to_metric_families(text):
            for found in family.samples:
                if found.name == name and found.labels == labels:
                    return float(found.value)
        return 0.0

    before = {o: sample("cdp_tracking_events_total", outcome=o) for o in ("stored", "duplicate")}
    event = {"type": "track", "event": "X", "userId": "u", "messageId": "metrics-1"}
    http.post("/v1/batch", json={"batch": [event, event, {**event, "messageId": "metrics-2"}]})
    assert sample("cdp_tracking_events_total", outcome="stored") - before["stored"] == 2
    assert sample("cdp_tracking_events_total", outcome="duplicate") - before["duplicate"] == 1
    assert sample("cdp_tracking_requests_total", route="batch", status="200") >= 1
    wait_for(lambda: sample("cdp_warehouse_events_total", outcome="stored") >= 2)
