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


class _Browsing:
    """One visitor on the way through the shop: who they are on the current device, what
    they carry in the cart, and the events they have caused so far."""

    def __init__(self, rng: random.Random, now: datetime) -> None:
        self.rng, self.now = rng, now
        self.anonymous_id = str(uuid.UUID(int=rng.getrandbits(128)))
        self.first_anonymous_id = self.anonymous_id
        self.is_bot = rng.random() < 0.03
        self.agent = BOT if self.is_bot else rng.choice(BROWSERS)
        self.email = f"shopper{rng.randrange(10**6)}@example.com"
        self.has_account = not self.is_bot and rng.random() < 0.4
        self.account = f"user-{rng.randrange(10**9)}"
        self.user_id: str | None = None  # sent once logged in on the current device
        self.devices = 1
        self.cart: list[tuple[str, str, float, str]] = []
        self.events: list[dict[str, Any]] = []
        self.orders, self.revenue = 0, 0.0
        self.moment = now - timedelta(days=rng.uniform(0, 7))

    def emit(self, kind: str, **fields: Any) -> None:
        rng = self.rng
        self.moment = min(self.moment + timedelta(seconds=rng.uniform(5, 90)), self.now)
        campaign = rng.choice(CAMPAIGNS)
        path = fields.pop("path", "/")
        query = ""
        if campaign and kind == "page":
            query = (f"?utm_source={campaign['source']}&utm_medium={campaign['medium']}"
                     f"&utm_campaign={campaign['name']}")  # fmt: skip
        event = {
            "type": kind,
            "messageId": str(uuid.UUID(int=rng.getrandbits(128))),
            "anonymousId": self.anonymous_id,
            "timestamp": self.moment.isoformat(),
            "context": {
                "userAgent": self.agent,
                "page": {"url": SHOP + path + query, "path": path,
                         "referrer": "https://www.google.com/"},
                "library": {"name": "cdp-demo", "version": "1"},
            },
            **fields,
        }  # fmt: skip
        if self.user_id:
            event["userId"] = self.user_id
        self.events.append(event)

    def log_in(self) -> None:
        self.user_id = self.account
        self.emit("identify", traits={"email": self.email, "first_name": "Sam"})

    def another_device(self) -> None:
        """Back on another device, logged out there."""
        self.anonymous_id = str(uuid.UUID(int=self.rng.getrandbits(128)))
        self.agent = self.rng.choice(BROWSERS)
        self.user_id = None
        self.devices += 1

    def browse(self, category: str) -> None:
        rng, slug = self.rng, category.lower()
        self.emit("page", name=category, category=category, path=f"/c/{slug}")
        self.emit("track", event="Product List Viewed",
                  properties={"category": category, "list_id": slug})  # fmt: skip
        for sku, title, price in rng.sample(CATALOG[category], k=rng.randint(1, 2)):
            product = {"product_id": sku, "name": title, "price": price,
                       "category": category, "currency": "EUR"}  # fmt: skip
            self.emit("track", event="Product Viewed", properties=product, path=f"/p/{sku}")
            if not self.is_bot and rng.random() < 0.35:
                self.cart.append((sku, title, price, category))
                added = {**product, "quantity": 1, "cart_id": self.anonymous_id[:8]}
                self.emit("track", event="Product Added", properties=added)

    def check_out(self) -> None:
        if self.user_id is None:  # checkout asks to log in or sign up
            self.log_in()
        total = round(sum(item[2] for item in self.cart), 2)
        products = [{"product_id": s, "name": n, "price": p, "category": c, "quantity": 1}
                    for s, n, p, c in self.cart]  # fmt: skip
        self.emit("track", event="Checkout Started",
                  properties={"value": total, "currency": "EUR", "products": products})  # fmt: skip
        if self.rng.random() < 0.7:
            order_id = f"order-{self.rng.randrange(10**9)}"
            self.emit("track", event="Order Completed",
                      properties={"order_id": order_id, "revenue": total, "currency": "EUR",
                                  "products": products})  # fmt: skip
            self.orders += 1
            self.revenue += total
            self.cart = []


def simulate_visitor(rng: random.Random, now: datetime) -> Visitor:
    """One visitor's history: a few sessions in the past week, maybe on several devices."""
    visit = _Browsing(rng, now)
    for session in range(1 if visit.is_bot else rng.choice((1, 1, 2, 3))):
        if session and rng.random() < 0.4:
            visit.another_device()
        visit.emit("page", name="Home", path="/")
        if visit.has_account and visit.user_id is None and rng.random() < 0.6:
            visit.log_in()
        for category in rng.sample(list(CATALOG), k=rng.randint(1, 3)):
            visit.browse(category)
        if visit.cart and rng.random() < 0.45:
            visit.check_out()
        visit.moment += timedelta(hours=rng.uniform(2, 40))
        if visit.moment >= now:
            break
    return Visitor(visit.first_anonymous_id, visit.events, visit.orders,
                   round(visit.revenue, 2), visit.devices)  # fmt: skip


def simulate_shop(visitors: int, seed: int, now: datetime | None = None) -> list[Visitor]:
    rng = random.Random(seed)
    moment = now or datetime.now(UTC)
    return [simulate_visitor(rng, moment) for _ in range(visitors)]
