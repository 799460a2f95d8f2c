"""Live profiles in Redis: what one event changes (a pure function of the event), the script
that applies changes atomically (`lua/profiles.lua`: identity graph, features, consent), and
reading a profile back.

Counts are kept per UTC day for `profile_days` days, per event name (`e:`), per event name
and category (`ec:`) and per event name and product (`ep:`), so any window up to that many
days is a sum of days."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import available_timezones

import orjson
import redis

from cdp.consent import CONSENT_EVENT, parse_consent
from cdp.events import StoredEvent
from cdp.identity import identifiers_of, untag
from cdp.storage import text

PRODUCT_ADDED, PRODUCT_REMOVED = "Product Added", "Product Removed"
PRODUCT_VIEWED, ORDER_COMPLETED = "Product Viewed", "Order Completed"
ITEM_FIELDS = ("product_id", "sku", "name", "category", "brand", "variant", "price", "url",
               "image_url", "currency")  # fmt: skip
CHANGES_PER_CALL = 500  # one script call blocks Redis; keep each short
WINDOWS = (1, 7, 30, 90)
PARTS = ("ids", "traits", "traits_at", "days", "cart", "cart_items", "viewed", "viewed_items",
         "consent", "consent_at", "consent_src", "suppression", "log", "absorbed")  # fmt: skip
NOT_HASHES = {"days": "zset", "viewed": "zset", "log": "list", "absorbed": "set"}


@cache
def _time_zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _product_id(properties: dict[str, Any]) -> str:
    value = properties.get("product_id") or properties.get("sku")
    return str(value) if isinstance(value, str | int) and value != "" else ""


def _json(value: Any) -> str:
    # Sorted keys: the warehouse gives JSON objects back sorted, and replay must match live.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _item(properties: dict[str, Any]) -> str:
    return _json({k: properties[k] for k in ITEM_FIELDS if k in properties})


def _quantity(properties: dict[str, Any], default: int) -> int:
    value = properties.get("quantity")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(value)
    return default


def _cents(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return round(value * 100)
    return None


def _order_cents(properties: dict[str, Any]) -> int:
    for name in ("total", "revenue"):
        cents = _cents(properties.get(name))
        if cents is not None:
            return cents
    products = properties.get("products")
    if not isinstance(products, list):
        return 0
    return sum(
        (_cents(p.get("price")) or 0) * _quantity(p, 1) for p in products if isinstance(p, dict)
    )


def _region(event: StoredEvent, traits: dict[str, Any]) -> str | None:
    """The country a phone number without a country code is from: the address, else locale."""
    address = traits.get("address")
    if isinstance(address, dict) and isinstance(address.get("country"), str):
        country = address["country"]
        if len(country) == 2:
            return country.upper()
    locale = event.context.get("locale")
    if isinstance(locale, str) and len(locale) == 5 and locale[2] in "-_":
        return locale[3:].upper()
    return None


def change_of(event: StoredEvent, seen_prefix: str) -> dict[str, Any]:
    """What one event changes in its profile, as the script's input."""
    properties = event.properties
    traits = event.traits if event.type == "identify" else {}
    context_traits = event.context.get("traits")
    known_traits = traits or (context_traits if isinstance(context_traits, dict) else {})
    found = identifiers_of(
        event.user_id, event.anonymous_id, known_traits, _region(event, known_traits)
    )
    warnings = found.warnings
    name = event.event if event.type == "track" else event.type
    change: dict[str, Any] = {
        "kind": "event",
        "k": f"{seen_prefix}{event.source_id}:{event.message_id}",
        "mid": event.message_id,
        "t": event.timestamp,
        "type": event.type,
        "ids": found.tagged,
    }
    if event.type == "alias" and event.previous_id:
        change["prev"] = event.previous_id

    fields = {f"e:{name}"}
    products = [properties]
    if name == ORDER_COMPLETED and isinstance(properties.get("products"), list):
        products += [p for p in properties["products"] if isinstance(p, dict)]
    for item in products:
        category = item.get("category")
        if isinstance(category, str) and category:
            fields.add(f"ec:{name}|{category}")
        product = _product_id(item)
        if product:
            fields.add(f"ep:{name}|{product}")
    change["f"] = sorted(fields)

    kept = {k: _json(v) for k, v in traits.items() if k != "consent" and v is not None}
    if kept:
        change["tr"] = kept
    time_zone = event.context.get("timezone")
    if isinstance(time_zone, str) and time_zone in _time_zones():
        change["tz"] = time_zone

    product = _product_id(properties)
    if name == PRODUCT_ADDED and product:
        change["cart"] = ["add", product, _quantity(properties, 1), _item(properties)]
    elif name == PRODUCT_REMOVED and product:
        change["cart"] = ["remove", product, _quantity(properties, 2**31)]
    elif name == ORDER_COMPLETED:
        change["cart"] = ["clear", ""]
        change["order"] = _order_cents(properties)
    if name == PRODUCT_VIEWED and product:
        change["view"] = [product, _item(properties)]

    consent: Any = None
    if "consent" in traits:
        consent = traits["consent"]
    elif name == CONSENT_EVENT:
        consent = properties.get("consent")
    if consent is not None:
        statements, consent_warnings = parse_consent(consent)
        if statements:
            change["consent"] = [list(s) for s in statements]
        warnings += consent_warnings
    if warnings:
        change["warn"] = warnings
    return {key: value for key, value in change.items() if value is not None}


@dataclass
class Applied:
    events: int = 0
    seen_before: int = 0
    merges: int = 0
    refused_merges: int = 0

    def add(self, counts: Sequence[int] | Applied) -> None:
        if isinstance(counts, Applied):
            counts = [counts.events, counts.seen_before, counts.merges, counts.refused_merges]
        self.events += int(counts[0])
        self.seen_before += int(counts[1])
        self.merges += int(counts[2])
        self.refused_merges += int(counts[3])


@dataclass
class Profile:
    """A profile as the API shows it; times are ISO 8601 UTC."""

    id: str
    identities: list[dict[str, Any]]
    traits: dict[str, Any]
    features: dict[str, Any]
    consent: dict[str, dict[str, Any]]
    suppression: dict[str, Any]
    timezone: str | None
    first_seen: str
    last_seen: str
    merged_profiles: list[str]
    log: list[dict[str, Any]]
    audiences: list[str] = field(default_factory=list)

    def identifiers(self, kind: str) -> list[str]:
        return [i["value"] for i in self.identities if i["kind"] == kind]


def iso(ms: Any) -> str | None:
    if ms is None or ms == "":
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="milliseconds")


def _text(mapping: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in mapping.items()}


class ProfileStore:
    """The live profiles under one key prefix."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        records_stream: str,
        *,
        seen_seconds: int = 7 * 86400,
        identity_cap: int = 50,
        days: int = 90,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.records_stream = records_stream
        self.seen_prefix = f"{prefix}:seen:"
        self.seen_seconds = seen_seconds
        self.identity_cap = identity_cap
        self.days = days
        source = resources.files("cdp").joinpath("lua/profiles.lua").read_text()
        self._script = client.register_script(source)

    def key(self, profile_id: str, part: str | None = None) -> str:
        base = f"{self.prefix}:profile:{profile_id}"
        return f"{base}:{part}" if part else base

    def apply(self, changes: Iterable[dict[str, Any]], *, replaying: bool = False) -> Applied:
        """Apply changes in order; `replaying` records no audit rows (they exist already)."""
        applied = Applied()
        batch: list[dict[str, Any]] = []
        for change in changes:
            batch.append(change)
            if len(batch) == CHANGES_PER_CALL:
                applied.add(self._run(batch, replaying))
                batch = []
        if batch:
            applied.add(self._run(batch, replaying))
        return applied

    def apply_events(self, events: Iterable[StoredEvent], *, replaying: bool = False) -> Applied:
        changes = (change_of(event, self.seen_prefix) for event in events)
        return self.apply(changes, replaying=replaying)

    def _run(self, batch: list[dict[str, Any]], replaying: bool) -> list[int]:
        args = [self.prefix, orjson.dumps(batch), self.seen_seconds, self.identity_cap,
                self.days, int(time.time() * 1000), self.records_stream,
                "1" if replaying else "0"]  # fmt: skip
        return self._script(args=args)  # type: ignore[arg-type,no-any-return]

    # Reading

    def live_id(self, profile_id: str) -> str | None:
        """The live profile an id names, following merges; None when there is none."""
        for _ in range(32):
            if self.client.exists(self.key(profile_id)):
                return profile_id
            merged_into = self.client.get(f"{self.prefix}:merged:{profile_id}")
            if merged_into is None:
                return None
            profile_id = text(merged_into)
        return None

    def find(self, kind_tag: str, value: str) -> str | None:
        owner = self.client.get(f"{self.prefix}:identity:{kind_tag}:{value}")
        return self.live_id(text(owner)) if owner else None

    def profile_ids(self) -> set[str]:
        return {text(member) for member in self.client.smembers(f"{self.prefix}:profiles")}

    def counts(self) -> tuple[int, int]:
        """Profiles in all, and those known by more than an anonymous id."""
        pipe = self.client.pipeline(transaction=False)
        pipe.scard(f"{self.prefix}:profiles")
        pipe.scard(f"{self.prefix}:profiles:known")
        total, known = pipe.execute()
        return int(total), int(known)

    def read(self, profile_id: str, today: int | None = None) -> Profile | None:
        pid = self.live_id(profile_id)
        if pid is None:
            return None
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.key(pid))
        for part in PARTS:
            kind = NOT_HASHES.get(part)
            if kind == "zset":
                pipe.zrange(self.key(pid, part), 0, -1, withscores=True)
            elif kind == "list":
                pipe.lrange(self.key(pid, part), 0, -1)
            elif kind == "set":
                pipe.smembers(self.key(pid, part))
            else:
                pipe.hgetall(self.key(pid, part))
        meta_raw, *parts_raw = pipe.execute()
        if not meta_raw:
            return None
        meta = _text(meta_raw)
        parts = dict(zip(PARTS, parts_raw, strict=True))
        days = [int(float(score)) for _, score in parts["days"]]
        pipe = self.client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(f"{self.key(pid)}:day:{day}")
        day_counts = dict(zip(days, (_text(c) for c in pipe.execute()), strict=True))
        today = today if today is not None else int(time.time() // 86400)

        ids = _text(parts["ids"])
        identities = []
        for ident, first in sorted(ids.items(), key=lambda item: (int(item[1]), item[0])):
            kind, value = untag(ident)
            identities.append({"kind": kind.value, "value": value, "first_seen": iso(first)})
        traits = {k: orjson.loads(v) for k, v in _text(parts["traits"]).items()}
        cart_items = _text(parts["cart_items"])
        cart = [
            {**orjson.loads(cart_items.get(product, "{}")), "product_id": product,
             "quantity": int(quantity), "added_at": iso(cart_items.get(f"{product}:at"))}
            for product, quantity in sorted(_text(parts["cart"]).items())
        ]  # fmt: skip
        viewed_items = _text(parts["viewed_items"])
        last_viewed = [
            {**orjson.loads(viewed_items.get(product.decode(), "{}")),
             "product_id": product.decode(), "viewed_at": iso(int(score))}
            for product, score in reversed(parts["viewed"])
        ]  # fmt: skip
        consent_at = _text(parts["consent_at"])
        consent_src = _text(parts["consent_src"])
        consent: dict[str, dict[str, Any]] = {}
        for pair, status in sorted(_text(parts["consent"]).items()):
            channel, _, purpose = pair.partition(":")
            consent.setdefault(channel, {})[purpose] = {
                "status": status,
                "at": iso(consent_at.get(pair)),
                "source": consent_src.get(pair),
            }
        suppression = {
            channel: {**orjson.loads(value), "at": iso(orjson.loads(value)["at"])}
            for channel, value in _text(parts["suppression"]).items()
        }
        features = {
            "events": int(meta.get("events", 0)),
            "orders": int(meta.get("orders", 0)),
            "revenue": int(meta.get("revenue", 0)) / 100,
            "last_order_at": iso(meta.get("last_order_at")),
            "cart": cart,
            "cart_updated_at": iso(meta.get("cart_at")),
            "last_viewed_products": last_viewed,
            "counts": windowed_counts(day_counts, today, WINDOWS),
        }
        return Profile(
            id=pid,
            identities=identities,
            traits=traits,
            features=features,
            consent=consent,
            suppression=suppression,
            timezone=meta.get("tz"),
            first_seen=iso(meta["first_seen"]) or "",
            last_seen=iso(meta["last_seen"]) or "",
            merged_profiles=sorted(m.decode() for m in parts["absorbed"]),
            log=[orjson.loads(entry) for entry in parts["log"]],
        )


def windowed_counts(
    day_counts: dict[int, dict[str, str]], today: int, windows: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """Per window (`7d`), counts by event, by event and category, by event and product."""
    out: dict[str, dict[str, Any]] = {}
    for window in windows:
        events: dict[str, int] = {}
        categories: dict[str, dict[str, int]] = {}
        products: dict[str, dict[str, int]] = {}
        for day, counts in day_counts.items():
            if day <= today - window:
                continue
            for field_name, count in counts.items():
                tag, _, rest = field_name.partition(":")
                if tag == "e":
                    events[rest] = events.get(rest, 0) + int(count)
                    continue
                name, _, value = rest.partition("|")
                target = categories if tag == "ec" else products
                per_event = target.setdefault(name, {})
                per_event[value] = per_event.get(value, 0) + int(count)
        out[f"{window}d"] = {"events": events, "categories": categories, "products": products}
    return out
