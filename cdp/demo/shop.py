"""A simulated web shop: visitors browse categories, view products, add to cart, some check
out and buy, a few are bots. Some have an account and log in, some come back on another
device (phone, then laptop), so profiles have to be stitched. Produces Segment-shaped
events, one list per visitor, with timestamps spread over the past days like a real shop's
history."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

CATALOG: dict[str, list[tuple[str, str, float]]] = {
    "Sneakers": [("sku-101", "Runner Pro", 89.95), ("sku-102", "Court Classic", 74.50),
                 ("sku-103", "Trail Blazer", 119.00)],
    "Jackets": [("sku-201", "Rain Shell", 129.00), ("sku-202", "Down Parka", 249.00)],
    "Bags": [("sku-301", "Canvas Tote", 34.95), ("sku-302", "Weekender", 159.00),
             ("sku-303", "City Backpack", 79.00)],
    "Accessories": [("sku-401", "Wool Beanie", 19.95), ("sku-402", "Leather Belt", 39.00)],
}  # fmt: skip
BROWSERS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Mobile Safari/537.36",
)
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
CAMPAIGNS = (
    None,
    None,
    {"source": "newsletter", "medium": "email", "name": "autumn-sale"},
    {"source": "google", "medium": "cpc", "name": "sneakers-brand"},
    {"source": "instagram", "medium": "social", "name": "new-in"},
)
SHOP = "https://shop.example"


@dataclass
class Visitor:
    anonymous_id: str
    events: list[dict[str, Any]]
    orders: int
    revenue: float
    devices: int = 1


def simulate_visitor(rng: random.Random, now: datetime) -> Visitor:
    """One visitor's history: a few sessions in the past week, maybe on several devices."""
    anonymous_id = str(uuid.UUID(int=rng.getrandbits(128)))
    first_anonymous_id = anonymous_id
    is_bot = rng.random() < 0.03
    agent = BOT if is_bot else rng.choice(BROWSERS)
    email = f"shopper{rng.randrange(10**6)}@example.com"
    has_account = not is_bot and rng.random() < 0.4
    account = f"user-{rng.randrange(10**9)}"
    user_id: str | None = None  # sent once logged in on the current device
    devices = 1
    cart: list[tuple[str, str, float, str]] = []
    events: list[dict[str, Any]] = []
    orders, revenue = 0, 0.0
    moment = now - timedelta(days=rng.uniform(0, 7))

    def emit(kind: str, **fields: Any) -> None:
        nonlocal moment
        moment = min(moment + timedelta(seconds=rng.uniform(5, 90)), now)
        campaign = rng.choice(CAMPAIGNS)
        path = fields.pop("path", "/")
        url = (
            SHOP
            + path
            + (
                f"?utm_source={campaign['source']}&utm_medium={campaign['medium']}"
                f"&utm_campaign={campaign['name']}"
                if campaign and kind == "page"
                else ""
            )
        )
        event = {
            "type": kind,
            "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
            "anonymousId": anonymous_id,
            "timestamp": moment.isoformat(),
            "context": {
                "userAgent": agent,
                "page": {"url": url, "path": path, "referrer": "https://www.google.com/"},
                "library": {"name": "cdp-demo", "version": "1"},
            },
            **fields,
        }
        if user_id:
            event["userId"] = user_id
        events.append(event)

    for session in range(1 if is_bot else rng.choice((1, 1, 2, 3))):
        if session and rng.random() < 0.4:  # back on another device, logged out there
            anonymous_id = str(uuid.UUID(int=rng.getrandbits(128)))
            agent = rng.choice(BROWSERS)
            user_id = None
            devices += 1
        emit("page", name="Home", path="/")
        if has_account and user_id is None and rng.random() < 0.6:
            user_id = account
            emit("identify", traits={"email": email, "first_name": "Sam"})
        for category in rng.sample(list(CATALOG), k=rng.randint(1, 3)):
            slug = category.lower()
            emit("page", name=category, category=category, path=f"/c/{slug}")
            emit("track", event="Product List Viewed",
                 properties={"category": category, "list_id": slug})  # fmt: skip
            for sku, title, price in rng.sample(CATALOG[category], k=rng.randint(1, 2)):
                product = {"product_id": sku, "name": title, "price": price,
                           "category": category, "currency": "EUR"}  # fmt: skip
                emit("track", event="Product Viewed", properties=product, path=f"/p/{sku}")
                if not is_bot and rng.random() < 0.35:
                    cart.append((sku, title, price, category))
                    added = {**product, "quantity": 1, "cart_id": anonymous_id[:8]}
                    emit("track", event="Product Added", properties=added)
        if cart and rng.random() < 0.45:
            if user_id is None:  # checkout asks to log in or sign up
                user_id = account
                emit("identify", traits={"email": email, "first_name": "Sam"})
            total = round(sum(item[2] for item in cart), 2)
            products = [{"product_id": s, "name": n, "price": p, "category": c, "quantity": 1}
                        for s, n, p, c in cart]  # fmt: skip
            emit("track", event="Checkout Started",
                 properties={"value": total, "currency": "EUR", "products": products})  # fmt: skip
            if rng.random() < 0.7:
                order_id = f"order-{rng.randrange(10**9)}"
                emit("track", event="Order Completed",
                     properties={"order_id": order_id, "revenue": total, "currency": "EUR",
                                 "products": products})  # fmt: skip
                orders += 1
                revenue += total
                cart = []
        moment += timedelta(hours=rng.uniform(2, 40))
        if moment >= now:
            break
    return Visitor(first_anonymous_id, events, orders, round(revenue, 2), devices)


def simulate_shop(visitors: int, seed: int, now: datetime | None = None) -> list[Visitor]:
    rng = random.Random(seed)
    moment = now or datetime.now(UTC)
    return [simulate_visitor(rng, moment) for _ in range(visitors)]
