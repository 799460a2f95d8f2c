"""Real server-side SDKs pointed at our server: Segment's and RudderStack's Python clients,
in both their delivery modes (each call sent at once, or queued and sent in batches by a
background thread) and with and without gzip."""

import uuid

import pytest
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient

from cdp.storage import Warehouse
from tests.conftest import WRITE_KEY, LiveServer, count_events, wait_for

pytestmark = pytest.mark.e2e


def send_shop_session(client: SegmentClient | RudderClient, user: str, anonymous: str) -> None:
    client.page(anonymous_id=anonymous, name="Home", properties={"url": "https://shop.example/"})
    client.track(
        anonymous_id=anonymous,
        event="Product Viewed",
        properties={"product_id": "sku-1", "category": "Bags", "price": 34.95},
    )
    client.identify(user_id=user, anonymous_id=anonymous, traits={"email": f"{user}@example.com"})
    client.track(user_id=user, event="Order Completed", properties={"revenue": 34.95})
    client.alias(previous_id=anonymous, user_id=user)
    client.group(user_id=user, group_id="acme", traits={"plan": "b2b"})
    client.screen(user_id=user, name="Cart")
    client.flush()


def stored_calls(warehouse: Warehouse, user: str, anonymous: str) -> list[tuple]:
    return warehouse.query_rows(
        "SELECT type, event, user_id, anonymous_id, toString(properties.category) FROM events "
        "WHERE user_id = {u:String} OR anonymous_id = {a:String} ORDER BY timestamp, type",
        {"u": user, "a": anonymous},
    )


@pytest.mark.parametrize("sdk", ["segment", "rudderstack"])
@pytest.mark.parametrize(
    ("sync_mode", "gzip"), [(True, False), (False, True)], ids=["sync", "queued-gzip"]
)
def test_sdk_events_are_stored_once(
    live_server: LiveServer, warehouse: Warehouse, sdk: str, sync_mode: bool, gzip: bool
) -> None:
    user, anonymous = f"user-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    failures: list[Exception] = []
    make = SegmentClient if sdk == "segment" else RudderClient
    client = make(
        WRITE_KEY,
        host=live_server.url,
        sync_mode=sync_mode,
        gzip=gzip,
        max_retries=1,
        on_error=lambda e, b: failures.append(e),
    )
    send_shop_session(client, user, anonymous)
    if not sync_mode:
        client.shutdown()  # flushes the queue and joins the sending thread
    assert failures == []
    wait_for(lambda: len(stored_calls(warehouse, user, anonymous)) >= 7)
    calls = stored_calls(warehouse, user, anonymous)
    assert len(calls) == 7
    assert {c[0] for c in calls} == {"page", "track", "identify", "alias", "group", "screen"}
    viewed = [c for c in calls if c[1] == "Product Viewed"]
    assert viewed == [("track", "Product Viewed", "", anonymous, "Bags")]
    assert (
        count_events(warehouse, "event = 'Order Completed' AND user_id = {u:String}", {"u": user})
        == 1
    )
