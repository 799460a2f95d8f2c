"""GDPR on the real engines: export gives all we hold on a person; erasure leaves nothing
of them in any ClickHouse table or Redis key, and nothing of anyone else is touched."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import redis

from cdp.api.privacy import ErasedOut, ExportOut
from cdp.settings import Settings
from cdp.storage import Warehouse
from tests.conftest import API_KEY, WRITE_KEY, LiveServer, count_events, wait_for

PERSON = ("anon-erase-1", "anon-erase-2", "user-erase", "erase.me@example.com", "+4930901820")


@pytest.fixture
def clients(live_server: LiveServer) -> Iterator[tuple[httpx.Client, httpx.Client]]:
    with (
        httpx.Client(base_url=live_server.url, auth=(WRITE_KEY, ""), timeout=10) as tracking,
        httpx.Client(
            base_url=live_server.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60
        ) as api,
    ):
        yield tracking, api


def history(anonymous_id: str, user_id: str, email: str, phone: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC).isoformat()
    return [
        {"type": "page", "anonymousId": anonymous_id, "timestamp": now},
        {"type": "track", "event": "Product Added", "anonymousId": anonymous_id, "timestamp": now,
         "properties": {"product_id": "sku-1", "price": 10}},
        {"type": "identify", "anonymousId": anonymous_id, "userId": user_id, "timestamp": now,
         "traits": {"email": email, "phone": phone, "consent": {"email": "granted"}}},
        {"type": "track", "event": "Order Completed", "userId": user_id, "timestamp": now,
         "properties": {"total": 10}},
    ]  # fmt: skip


def send_people(tracking: httpx.Client) -> None:
    batch = history("anon-erase-1", "user-erase", "erase.me@example.com", "+49 30 901820")
    now = datetime.now(UTC).isoformat()
    batch += [  # a second device, anonymous at first: its profile is merged in at login
        {"type": "page", "anonymousId": "anon-erase-2", "timestamp": now},
        {
            "type": "identify",
            "anonymousId": "anon-erase-2",
            "userId": "user-erase",
            "timestamp": now,
        },
    ]
    batch += history("anon-keep", "user-keep", "keep@example.com", "+4930901821")
    response = tracking.post("/v1/batch", json={"batch": batch})
    assert response.status_code == 200, response.text


def profile(api: httpx.Client, user_id: str, orders: int = 1) -> dict[str, Any]:
    def ready() -> dict | None:
        found = api.get("/api/v1/profiles", params={"user_id": user_id})
        if found.status_code == 200 and found.json()["features"]["orders"] == orders:
            return found.json()
        return None

    return wait_for(ready)


def everything_in_clickhouse(warehouse: Warehouse) -> str:
    tables = warehouse.query_rows(
        "SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND engine NOT LIKE '%View'"
    )
    return "\n".join(repr(warehouse.query_rows(f"SELECT * FROM `{name}`")) for (name,) in tables)


def everything_in_redis(client: redis.Redis, prefix: str) -> str:
    dumped = []
    for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        kind = client.type(key).decode()
        value: Any = {
            "string": client.get,
            "hash": client.hgetall,
            "set": client.smembers,
            "zset": lambda k: client.zrange(k, 0, -1, withscores=True),
            "list": lambda k: client.lrange(k, 0, -1),
            "stream": lambda k: client.xrange(k),
        }[kind](key)
        dumped.append(f"{key!r} {value!r}")
    return "\n".join(dumped)


def test_export_holds_the_profile_its_events_and_its_history(
    clients: tuple[httpx.Client, httpx.Client], warehouse: Warehouse
) -> None:
    tracking, api = clients
    send_people(tracking)
    person = profile(api, "user-erase")
    wait_for(lambda: count_events(warehouse) == 10)
    wait_for(lambda: warehouse.query_rows("SELECT count() FROM consent_log")[0][0] == 2)
    # Merges reach ClickHouse through the records writer too, maybe in a later batch.
    wait_for(lambda: warehouse.query_rows("SELECT count() FROM identity_merges")[0][0] > 0)
    # Its order put it in `recent-purchasers`: the profiling done on it is exported too.
    wait_for(lambda: warehouse.query_rows(
        "SELECT count() FROM audience_log WHERE profile_id = {p:String} "
        "AND audience_id = 'recent-purchasers'", {"p": person["id"]})[0][0] == 1)  # fmt: skip
    exported = api.get(f"/api/v1/profiles/{person['id']}/export")
    assert exported.status_code == 200
    data = exported.json()
    ExportOut.model_validate(data)  # the answer is what the OpenAPI document says
    assert data["profile"]["id"] == person["id"]
    assert len(data["events"]) == 6 and {e["anonymous_id"] for e in data["events"]} >= {
        "anon-erase-1", "anon-erase-2"
    }  # fmt: skip
    assert [c["status"] for c in data["consent_log"]] == ["granted"]
    assert data["merges"] and "keep@example.com" not in exported.text
    [entered] = [a for a in data["audience_log"] if a["audience_id"] == "recent-purchasers"]
    assert entered["change"] == "enter" and entered["profile_id"] == person["id"]
    assert [c["condition"] for c in entered["reason"]] == ["last_performed"]
    assert all(a["profile_id"] == person["id"] or a["cause"] == "merge"
               for a in data["audience_log"])  # fmt: skip
    reader = api.post("/api/v1/keys", json={"scope": "write"}).json()["secret"]
    refused = api.get(
        f"/api/v1/profiles/{person['id']}/export", headers={"Authorization": f"Bearer {reader}"}
    )
    assert refused.status_code == 403


def test_erasure_leaves_nothing_behind(
    clients: tuple[httpx.Client, httpx.Client],
    warehouse: Warehouse,
    redis_client: redis.Redis,
    settings: Settings,
) -> None:
    tracking, api = clients
    send_people(tracking)
    person = profile(api, "user-erase")
    other = profile(api, "user-keep")
    # A row ClickHouse once refused, kept for inspection, holds the person's e-mail too.
    warehouse.command(
        "INSERT INTO rejected_events VALUES (now64(3), 'src', 'warehouse', 'bad', "
        '\'{"traits": {"email": "erase.me@example.com"}}\')'
    )
    wait_for(lambda: count_events(warehouse) == 10)
    wait_for(lambda: warehouse.query_rows("SELECT count() FROM consent_log")[0][0] == 2)
    secrets = (*PERSON, "+49 30 901820", person["id"], *person["merged_profiles"])
    assert all(s in everything_in_clickhouse(warehouse) for s in PERSON[:4])
    assert person["id"] in everything_in_redis(redis_client, settings.redis_prefix)

    erased = api.delete(f"/api/v1/profiles/{person['id']}")
    assert erased.status_code == 200, erased.text
    assert ErasedOut.model_validate(erased.json()).removed["events"] == 6

    clickhouse = everything_in_clickhouse(warehouse)
    stored = everything_in_redis(redis_client, settings.redis_prefix)
    for secret in secrets:
        assert secret not in clickhouse, f"{secret} left in ClickHouse"
        assert secret not in stored, [line[:200] for line in stored.splitlines() if secret in line]
    for identifier in ({"user_id": "user-erase"}, {"email": "erase.me@example.com"}):
        assert api.get("/api/v1/profiles", params=identifier).status_code == 404
    assert api.get(f"/api/v1/profiles/{person['id']}").status_code == 404
    # Nobody else is touched.
    assert api.get(f"/api/v1/profiles/{other['id']}").json()["features"]["orders"] == 1
    assert count_events(warehouse) == 4
    assert "keep@example.com" in clickhouse and "anon-keep" in stored


def test_erasure_waits_for_events_in_flight_and_says_when_they_are_not_settled(
    settings: Settings, warehouse: Warehouse, redis_client: redis.Redis
) -> None:
    from cdp.app import create_app

    impatient = settings.model_copy(update={"erase_wait_seconds": 0.5})
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        LiveServer(create_app(impatient), impatient) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        sent = client.post("/v1/identify", json={"userId": "in-flight"}, auth=(WRITE_KEY, ""))
        assert sent.status_code == 200

        def found() -> str | None:
            answer = client.get(
                "/api/v1/profiles", params={"user_id": "in-flight"}, headers=headers
            )
            return answer.json().get("id") if answer.status_code == 200 else None

        profile_id = wait_for(found)
        # A consumer group that read the event and never settled it: erasure must not go ahead.
        redis_client.xgroup_create(settings.events_stream, "stuck", id="0")
        redis_client.xreadgroup("stuck", "c", {settings.events_stream: ">"})
        refused = client.delete(f"/api/v1/profiles/{profile_id}", headers=headers)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        assert "still being processed" in refused.json()["error"]
        redis_client.xgroup_destroy(settings.events_stream, "stuck")
        assert client.delete(f"/api/v1/profiles/{profile_id}", headers=headers).status_code == 200
