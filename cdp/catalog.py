"""The product catalog: what back-in-stock, nudges and messages show, and what audiences read
of stock. Products are upserted in bulk (the API, or a server-side `Product Updated` track
event); each is one JSON value in a Redis hash, and the ids with no stock are a set.

A product whose stock goes from 0 to more is itself an event: `Back In Stock`, put on the
events stream in the same atomic step as the stock (so it is recorded once), and stored in
ClickHouse `events` by the warehouse writer like any other (no person's: its ids are empty),
with the product as its properties. Every change of a product between in and out of stock
is also put on the profile-changes stream (field `products`), so the audiences of the
people watching it are evaluated again at once."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import redis
from pydantic import BaseModel, ConfigDict, Field

from cdp.events import system_event
from cdp.storage import text

BACK_IN_STOCK = "Back In Stock"
PRODUCT_UPDATED = "Product Updated"
MAX_PRODUCTS = 1000  # a request


class Product(BaseModel):
    """A product as the shop describes it; `stock` is units available (None: not tracked)."""

    model_config = ConfigDict(extra="ignore")

    id: Annotated[str, Field(min_length=1, max_length=200)]
    name: Annotated[str, Field(max_length=500)] = ""
    url: Annotated[str, Field(max_length=2000)] = ""
    image_url: Annotated[str, Field(max_length=2000)] = ""
    price: Annotated[float, Field(ge=0, le=1e12)] | None = None
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] | None = None
    category: Annotated[str, Field(max_length=200)] = ""
    stock: Annotated[int, Field(ge=0, le=10**12)] | None = None


@dataclass(frozen=True)
class CatalogKeys:
    prefix: str

    @property
    def products(self) -> str:
        return f"{self.prefix}:catalog:products"

    @property
    def out_of_stock(self) -> str:
        return f"{self.prefix}:catalog:out_of_stock"

    @property
    def stock_version(self) -> str:
        """Incremented whenever a product goes in or out of stock."""
        return f"{self.prefix}:catalog:stock_version"


# One atomic step per request: store each product, keep the out-of-stock set, say which
# came back in stock and which crossed either way, and tell the audience worker.
UPSERT = """
local products, out, changes, version, events = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local items = cjson.decode(ARGV[1])
local back, crossed = {}, {}
for _, item in ipairs(items) do
  local id, stock = item[1], item[2]
  local was_out = redis.call('SISMEMBER', out, id) == 1
  redis.call('HSET', products, id, item[3])
  if stock == 0 and not was_out then
    redis.call('SADD', out, id); crossed[#crossed + 1] = id
  elseif stock ~= cjson.null and stock > 0 and was_out then
    redis.call('SREM', out, id); crossed[#crossed + 1] = id; back[#back + 1] = id
    local e = item[4]  -- the `Back In Stock` event's stream fields
    redis.call('XADD', events, '*', 'n', e.n, 'd', e.d, 'p', e.p, 't', e.t, 'c', e.c)
  end
end
if #crossed > 0 then redis.call('INCR', version) end
if #crossed > 0 and changes ~= '' then
  redis.call('XADD', changes, 'MAXLEN', '~', 1000000, '*', 'p', '[]', 'm', '[]',
             'products', cjson.encode(crossed), 'at', ARGV[2])
end
return back
"""


class Catalog:
    """The catalog under one key prefix; `changes` is the profile-changes stream, `events`
    the events stream (where `Back In Stock` goes)."""

    def __init__(self, client: redis.Redis, prefix: str, changes: str, events: str = "") -> None:
        self.client = client
        self.keys = CatalogKeys(prefix)
        self.changes = changes
        self.events = events
        self._upsert = client.register_script(UPSERT)

    def upsert(self, products: list[Product], now: int | None = None) -> list[str]:
        """Store the products (the last of an id wins); returns the ids back in stock, each
        also recorded as a `Back In Stock` event."""
        now = now if now is not None else int(time.time() * 1000)
        items = [[p.id, p.stock, p.model_dump_json(), _back_in_stock(p, now)] for p in products]
        back = self._upsert(
            keys=[self.keys.products, self.keys.out_of_stock, self.changes,
                  self.keys.stock_version, self.events or self.changes],
            args=[orjson.dumps(items), now],
        )  # fmt: skip
        return [text(i) for i in back]

    def get(self, product_id: str) -> Product | None:
        stored = self.client.hget(self.keys.products, product_id)
        return Product.model_validate_json(stored) if stored else None

    def out_of_stock(self, product_ids: list[str]) -> set[str]:
        """Which of these products have no stock now."""
        if not product_ids:
            return set()
        flags = self.client.smismember(self.keys.out_of_stock, product_ids)
        return {p for p, flag in zip(product_ids, flags, strict=True) if flag}

    def all_out_of_stock(self) -> list[str]:
        return sorted(text(member) for member in self.client.smembers(self.keys.out_of_stock))


def _back_in_stock(product: Product, now: int) -> dict[str, str]:
    fields = system_event(BACK_IN_STOCK, now, f"back-in-stock-{product.id}-{uuid.uuid4().hex}",
                          "catalog", _properties(product))  # fmt: skip
    return {k: v.decode() for k, v in fields.items()}


def _properties(product: Product) -> dict[str, Any]:
    found = product.model_dump(exclude_none=True)
    found["product_id"] = found.pop("id")
    return found


def product_of_event(properties: dict[str, Any]) -> Product | None:
    """The product a server-side `Product Updated` track event describes, or None when it
    does not describe one (no `product_id`)."""
    product_id = properties.get("product_id") or properties.get("id")
    if not isinstance(product_id, str | int) or product_id == "":
        return None
    try:
        return Product.model_validate({**properties, "id": str(product_id)})
    except ValueError:
        return None
