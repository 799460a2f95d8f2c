"""The product catalog over HTTP: bulk upsert, read one, restocks, and `Product Updated`
track events from the shop's server key (never from the browser's)."""

from __future__ import annotations

import httpx
import redis

from cdp.settings import Settings
from cdp.storage import Warehouse
from tests.conftest import API_KEY, WRITE_KEY, LiveServer, wait_for

ADMIN = {"Authorization": f"Bearer {API_KEY}"}
SERVER_KEY = "sk_shop_backend_catalog"


def test_products_are_upserted_in_bulk_and_read_one_by_one(live_server: LiveServer) -> None:
    with httpx.Client(base_url=live_server.url, headers=ADMIN, timeout=10) as client:
        boot = {"id": "boot", "name": "Boot", "price": 80, "currency": "EUR",
                "category": "Shoes", "stock": 0}  # fmt: skip
        put = client.put("/api/v1/catalog/products", json={"products": [boot, {"id": "hat"}]})
        assert put.status_code == 200 and put.json() == {"upserted": 2, "back_in_stock": []}
        shown = client.get("/api/v1/catalog/products/boot").json()
        assert shown["name"] == "Boot" and shown["stock"] == 0 and shown["currency"] == "EUR"

        restock = client.put("/api/v1/catalog/products", json={"products": [{**boot, "stock": 4}]})
        assert restock.json()["back_in_stock"] == ["boot"]  # from 0 to more

        assert client.get("/api/v1/catalog/products/nothing").status_code == 404
        bad = client.put("/api/v1/catalog/products", json={"products": [{"id": "x", "stock": -1}]})
        assert bad.status_code == 422
        assert client.put("/api/v1/catalog/products", json={"products": []}).status_code == 422
    anonymous = httpx.put(f"{live_server.url}/api/v1/catalog/products",
                          json={"products": [{"id": "y"}]})  # fmt: skip
    assert anonymous.status_code == 401


def test_product_updated_from_the_server_key_updates_the_catalog_over_http(
    settings: Settings, warehouse: Warehouse, redis_client: redis.Redis
) -> None:
    from cdp.app import create_app

    shop = settings.model_copy(update={"catalog_write_keys": [SERVER_KEY]})
    with LiveServer(create_app(shop), shop) as server:

        def updated(key: str, product: str, stock: int) -> None:
            event = {"event": "Product Updated", "userId": "shop-backend",
                     "properties": {"product_id": product, "name": product.title(),
                                    "stock": stock}}  # fmt: skip
            sent = httpx.post(f"{server.url}/v1/track", json=event, auth=(key, ""))
            assert sent.status_code == 200

        updated(WRITE_KEY, "hat", 1)  # the browser's key: stored as an event, not a product
        updated(SERVER_KEY, "boot", 3)
        product = lambda: httpx.get(f"{server.url}/api/v1/catalog/products/boot",  # noqa: E731
                                    headers=ADMIN)  # fmt: skip
        wait_for(lambda: product().status_code == 200)
        assert product().json()["stock"] == 3 and product().json()["name"] == "Boot"
        hat = httpx.get(f"{server.url}/api/v1/catalog/products/hat", headers=ADMIN)
        assert hat.status_code == 404  # applied in order: the hat came first and was refused
