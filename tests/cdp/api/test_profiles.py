"""Unified profiles through the HTTP APIs on the real engines: events sent to the tracking
API become one profile per person, found by any identifier, with its whole history;
consent and suppression; the API keys' scopes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from cdp.api.consent import ConsentStateOut
from cdp.api.keys import KeyOut
from cdp.api.profiles import MergesOut, TimelineOut
from cdp.storage import Warehouse
from tests.conftest import API_KEY, WRITE_KEY, LiveServer, count_events, wait_for

NOW = datetime.now(UTC)


def at(minutes: int) -> str:
    return (NOW - timedelta(hours=2) + timedelta(minutes=minutes)).isoformat()


@pytest.fixture
def tracking(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        yield client


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=30) as client:
        yield client


def send(tracking: httpx.Client, *events: dict[str, Any]) -> None:
    response = tracking.post("/v1/batch", json={"batch": list(events)})
    assert response.status_code == 200, response.text


def profile_when(api: httpx.Client, check: Any = lambda p: True, **identifier: str) -> dict:
    """The profile found by the identifier, once `check` holds for it."""

    def ready() -> dict | None:
        response = api.get("/api/v1/profiles", params=identifier)
        return response.json() if response.status_code == 200 and check(response.json()) else None

    return wait_for(ready)


def test_phone_then_laptop_then_order_by_email_is_one_profile(
    tracking: httpx.Client, api: httpx.Client, warehouse: Warehouse
) -> None:
    send(
        tracking,
        # Anonymous on the phone, in Berlin.
        {"type": "page", "anonymousId": "phone-1", "timestamp": at(0), "name": "Home",
         "context": {"timezone": "Europe/Berlin"}},
        {"type": "track", "event": "Product Viewed", "anonymousId": "phone-1", "timestamp": at(1),
         "properties": {"product_id": "sku-1", "category": "Shoes", "name": "Runner", "price": 80}},
        {"type": "track", "event": "Product Added", "anonymousId": "phone-1", "timestamp": at(2),
         "properties": {"product_id": "sku-1", "category": "Shoes", "price": 80, "quantity": 1}},
        # Logs in on the phone: the account and its e-mail.
        {"type": "identify", "anonymousId": "phone-1", "userId": "cust-7", "timestamp": at(3),
         "traits": {"email": "Ann.Lee@Example.COM", "first_name": "Ann"}},
    )  # fmt: skip
    send(
        tracking,
        # Later on the laptop, anonymous, then logged in.
        {"type": "track", "event": "Product Viewed", "anonymousId": "laptop-1", "timestamp": at(30),
         "properties": {"product_id": "sku-2", "category": "Shoes", "price": 95}},
        {"type": "identify", "anonymousId": "laptop-1", "userId": "cust-7", "timestamp": at(31)},
        # The order confirmation arrives server-side, keyed by e-mail only.
        {"type": "identify", "anonymousId": "checkout-9", "timestamp": at(40),
         "traits": {"email": "ann.lee@example.com", "phone": "+49 30 901820"}},
        {"type": "track", "event": "Order Completed", "anonymousId": "checkout-9",
         "timestamp": at(41), "properties": {"order_id": "o-1", "total": 80.0,
         "products": [{"product_id": "sku-1", "category": "Shoes", "price": 80}]}},
    )  # fmt: skip
    profile = profile_when(api, lambda p: p["features"]["orders"] == 1, email="ann.lee@example.com")
    kinds = {(i["kind"], i["value"]) for i in profile["identities"]}
    assert kinds == {
        ("anonymous_id", "phone-1"), ("anonymous_id", "laptop-1"), ("anonymous_id", "checkout-9"),
        ("user_id", "cust-7"), ("email", "ann.lee@example.com"), ("phone", "+4930901820"),
    }  # fmt: skip
    for identifier in ({"user_id": "cust-7"}, {"anonymous_id": "laptop-1"},
                       {"phone": "+49 30 901820"}, {"email": "ANN.LEE@example.com"}):  # fmt: skip
        assert api.get("/api/v1/profiles", params=identifier).json()["id"] == profile["id"]
    features = profile["features"]
    assert features["revenue"] == 80.0 and features["cart"] == []  # the order emptied it
    assert features["counts"]["7d"]["categories"]["Product Viewed"] == {"Shoes": 2}
    assert [p["product_id"] for p in features["last_viewed_products"]] == ["sku-2", "sku-1"]
    assert profile["traits"]["first_name"] == "Ann" and profile["timezone"] == "Europe/Berlin"

    # The whole history, across the three devices, page by page.
    wait_for(lambda: count_events(warehouse) == 8)
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = api.get(f"/api/v1/profiles/{profile['id']}/events", params=params).json()
        TimelineOut.model_validate(page)  # the answer is what the OpenAPI document says
        seen += page["events"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == 8 and len({e["message_id"] for e in seen}) == 8
    assert seen[0]["event"] == "Order Completed" and seen[-1]["type"] == "page"

    # Every query attributes the old anonymous events to the surviving profile.
    def attributed() -> bool:
        rows = warehouse.query_rows("SELECT DISTINCT profile_id FROM profile_events")
        return rows == [(profile["id"],)]

    wait_for(attributed)
    answer = api.get(f"/api/v1/profiles/{profile['id']}/merges").json()
    merges = MergesOut.model_validate(answer).model_dump(mode="json")["merges"]
    assert merges and all(m["survivor"] == profile["id"] for m in merges)
    assert {m["cause"] for m in merges} <= {"identify", "track"}


def test_consent_from_traits_the_api_and_events_with_an_audit_log(
    tracking: httpx.Client, api: httpx.Client, warehouse: Warehouse
) -> None:
    send(
        tracking,
        {"type": "identify", "userId": "u-9", "timestamp": at(0),
         "traits": {"email": "u9@example.com", "consent": {"email": "granted",
                    "whatsapp": {"marketing": True, "transactional": "granted"}}}},
    )  # fmt: skip
    profile = profile_when(api, lambda p: bool(p["consent"]), user_id="u-9")
    assert profile["consent"]["email"]["marketing"]["status"] == "granted"
    assert profile["consent"]["whatsapp"]["transactional"]["source"] == "identify"

    # Withdrawn through the API: a denial after a grant is a revocation.
    response = api.put(
        f"/api/v1/profiles/{profile['id']}/consent",
        json={"channel": "email", "status": "denied", "source": "preference-center"},
    )
    assert response.status_code == 200, response.text
    assert ConsentStateOut.model_validate(response.json()).consent["email"]["marketing"].status == (
        "revoked"
    )
    # The snippet's consent banner sends a `Consent Updated` event.
    send(
        tracking,
        {"type": "track", "event": "Consent Updated", "userId": "u-9",
         "timestamp": datetime.now(UTC).isoformat(),
         "properties": {"consent": {"web": "granted", "fax": "granted"}}},
    )  # fmt: skip
    profile = profile_when(api, lambda p: "web" in p["consent"], user_id="u-9")
    assert profile["consent"]["web"]["marketing"]["status"] == "granted"
    assert "consent channel 'fax' is unknown" in profile["log"][0]["message"]

    response = api.post(
        f"/api/v1/profiles/{profile['id']}/suppressions",
        json={"channel": "whatsapp", "reason": "stop", "source": "whatsapp-webhook"},
    )
    assert response.json()["suppression"]["whatsapp"]["reason"] == "stop"
    assert (
        api.delete(f"/api/v1/profiles/{profile['id']}/suppressions/whatsapp").json()["suppression"]
        == {}
    )

    def audit() -> list[tuple]:
        return warehouse.query_rows(
            "SELECT channel, purpose, status, source FROM consent_log ORDER BY at, channel, purpose"
        )

    wait_for(lambda: len(audit()) == 5)
    assert audit() == [
        ("email", "marketing", "granted", "identify"),
        ("whatsapp", "marketing", "granted", "identify"),
        ("whatsapp", "transactional", "granted", "identify"),
        ("email", "marketing", "revoked", "preference-center"),
        ("web", "marketing", "granted", "track"),
    ]
    wait_for(lambda: warehouse.query_rows("SELECT count() FROM suppression_log")[0][0] == 2)
    bad = api.put(
        f"/api/v1/profiles/{profile['id']}/consent", json={"channel": "fax", "status": "x"}
    )
    assert bad.status_code == 422


def test_keys_scopes_and_answers(live_server: LiveServer, api: httpx.Client) -> None:
    url = live_server.url
    missing = httpx.get(f"{url}/api/v1/profiles/p_x")
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{url}/api/v1/profiles/p_x", headers={"Authorization": "Bearer sk_nope"})
    assert wrong.status_code == 401
    write_key = httpx.get(
        f"{url}/api/v1/profiles/p_x", headers={"Authorization": f"Bearer {WRITE_KEY}"}
    )
    assert write_key.status_code == 403 and "only sends events" in write_key.json()["error"]

    created = api.post("/api/v1/keys", json={"scope": "read", "name": "dashboards"}).json()
    reader = {"Authorization": f"Bearer {created['secret']}"}
    assert httpx.get(f"{url}/api/v1/profiles/p_x", headers=reader).status_code == 404
    refused = httpx.put(
        f"{url}/api/v1/profiles/p_x/consent",
        json={"channel": "email", "status": "granted"},
        headers=reader,
    )
    assert refused.status_code == 403 and "write is required" in refused.json()["error"]
    assert (
        httpx.post(f"{url}/api/v1/keys", json={"scope": "admin"}, headers=reader).status_code == 403
    )
    listed = api.get("/api/v1/keys").json()
    assert [KeyOut.model_validate(k).scope for k in listed] == ["read"]
    assert [k["name"] for k in listed] == ["dashboards"] and "secret" not in listed[0]
    assert api.delete(f"/api/v1/keys/{created['id']}").status_code == 200
    assert httpx.get(f"{url}/api/v1/profiles/p_x", headers=reader).status_code == 401

    assert api.get("/api/v1/profiles", params={"email": "nobody@example.com"}).status_code == 404
    assert api.get("/api/v1/profiles", params={"email": "not an email"}).status_code == 400
    both = api.get("/api/v1/profiles", params={"email": "a@b.co", "user_id": "1"})
    assert both.status_code == 400 and "exactly one" in both.json()["error"]
    assert api.get("/api/v1/profiles/p_x/events", params={"cursor": "zz"}).status_code == 404


def test_every_answer_of_the_marketer_api_has_a_documented_shape(api: httpx.Client) -> None:
    document = api.get("/openapi.json").json()

    def shape(operation: dict) -> dict:
        success = next(s for s in ("200", "201") if s in operation["responses"])
        content = operation["responses"][success].get("content", {})
        return content.get("application/json", {}).get("schema", {})  # type: ignore[no-any-return]

    undocumented = [
        f"{method.upper()} {path}"
        for path, operations in document["paths"].items()
        if path.startswith("/api/v1")
        for method, operation in operations.items()
        if shape(operation) == {}
    ]
    assert undocumented == []
