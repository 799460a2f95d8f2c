"""Live profiles in Redis: what one event changes (a pure function of the event), the script
that applies changes atomically (`lua/profiles.lua`: identity graph, features, consent), and
reading a profile back.

Counts are kept per UTC day for `profile_days` days, per event name (`e:`), per event name
and category (`ec:`) and per event name and product (`ep:`), so any window up to that many
days is a sum of days."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from zoneinfo import available_timezones

import orjson
import redis

from cdp.consent import CONSENT_EVENT, parse_consent
from cdp.events import StoredEvent
from cdp.identity import identifiers_of, untag
from cdp.settings import Settings
from cdp.storage import ScriptPipe, text

log = logging.getLogger(__name__)

PRODUCT_ADDED, PRODUCT_REMOVED = "Product Added", "Product Removed"
PRODUCT_VIEWED, ORDER_COMPLETED = "Product Viewed", "Order Completed"
ITEM_FIELDS = ("product_id", "sku", "name", "category", "brand", "variant", "price", "url",
               "image_url", "currency")  # fmt: skip
CHANGES_PER_CALL = 500  # one script call blocks Redis; keep each short
WINDOWS = (1, 7, 30, 90)
PARTS = ("ids", "traits", "traits_at", "days", "cart", "cart_items", "viewed", "viewed_items",
         "consent", "consent_at", "consent_src", "suppression", "log", "absorbed")  # fmt: skip
NOT_HASHES = {"days": "zset", "viewed": "zset", "log": "list", "absorbed": "set"}


TIME_ZONES = frozenset(available_timezones())


def _product_id(properties: dict[str, Any]) -> str:
    value = properties.get("product_id") or properties.get("sku")
    return str(value) if isinstance(value, str | int) and value != "" else ""


def _json(value: Any) -> str:
    # Sorted keys: the warehouse gives JSON objects back sorted, and replay must match live.
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _item(properties: dict[str, Any]) -> str:
    return _json({k: properties[k] for k in ITEM_FIELDS if k in properties})


MAX_QUANTITY = 2**31
# Money is counted in cents, in 64-bit integers, by a script that writes a number as %.17g:
# an amount of 10^12 (a trillion in the shop's currency) or more cannot be a real order and
# is not counted; the profile's log says so.
MAX_AMOUNT = 10**12


def _quantity(properties: dict[str, Any], default: int) -> int:
    value = properties.get("quantity")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return int(min(value, MAX_QUANTITY))
    return default


class AmountTooLarge(ValueError):
    pass


def _cents(value: Any) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        if abs(value) >= MAX_AMOUNT:
            raise AmountTooLarge
        return round(value * 100)
    return None


def _order_cents(properties: dict[str, Any]) -> int:
    """The order's amount in cents (0 when it names none); AmountTooLarge when it cannot be
    a real order's."""
    for name in ("total", "revenue"):
        cents = _cents(properties.get(name))
        if cents is not None:
            return cents
    products = properties.get("products")
    if not isinstance(products, list):
        return 0
    total = sum(
        (_cents(p.get("price")) or 0) * _quantity(p, 1) for p in products if isinstance(p, dict)
    )
    if abs(total) >= MAX_AMOUNT * 100:
        raise AmountTooLarge
    return total


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


def change_of(event: StoredEvent) -> dict[str, Any]:
    """What one event changes in its profile, as the script's input."""
    properties = event.properties
    kind = event.type
    traits = event.traits if kind == "identify" else {}
    known_traits = traits or event.context.get("traits")
    if known_traits and isinstance(known_traits, dict):
        found = identifiers_of(
            event.user_id, event.anonymous_id, known_traits, lambda: _region(event, known_traits)
        )
        ids, warnings = found.tagged, found.warnings
    else:  # identifiers_of without traits, inline: it costs 2–4 µs an event less here
        ids = ["u:" + event.user_id] if event.user_id else []
        if event.anonymous_id:
            ids.append("a:" + event.anonymous_id)
        warnings = []
    name = event.event if kind == "track" else kind
    change: dict[str, Any] = {
        "kind": "event", "mid": event.message_id, "t": event.timestamp, "type": kind, "ids": ids,
    }  # fmt: skip
    if kind == "alias" and event.previous_id:
        change["prev"] = event.previous_id

    product = _product_id(properties)
    fields = {"e:" + name: 1}
    category = properties.get("category")
    if category and isinstance(category, str):
        fields[f"ec:{name}|{category}"] = 1
    if product:
        fields[f"ep:{name}|{product}"] = 1
    change["f"] = fields

    if traits:
        kept = {k: _json(v) for k, v in traits.items() if k != "consent" and v is not None}
        if kept:
            change["tr"] = kept
    time_zone = event.context.get("timezone")
    if time_zone and isinstance(time_zone, str) and time_zone in TIME_ZONES:
        change["tz"] = time_zone

    if name == PRODUCT_VIEWED:
        if product:
            change["views"] = [[product, event.timestamp, _item(properties)]]
    elif name == PRODUCT_ADDED:
        if product:
            change["cart"] = ["add", product, _quantity(properties, 1), _item(properties)]
    elif name == PRODUCT_REMOVED:
        if product:
            change["cart"] = ["remove", product, _quantity(properties, 2**31)]
    elif name == ORDER_COMPLETED:
        change["cart"] = ["clear", ""]
        try:
            change["order"] = _order_cents(properties)
        except AmountTooLarge:
            change["order"] = 0
            warnings.append(f"order amount of {MAX_AMOUNT:.0e} or more not counted")
        products = properties.get("products")
        for item in products if isinstance(products, list) else ():
            if isinstance(item, dict):
                category, ordered = item.get("category"), _product_id(item)
                if category and isinstance(category, str):
                    fields[f"ec:{name}|{category}"] = 1
                if ordered:
                    fields[f"ep:{name}|{ordered}"] = 1

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
    return change


ALONE = frozenset({"prev", "tr", "cart", "order", "consent", "warn"})  # order matters for these
DAY_MS = 86_400_000


def grouped(changes: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Changes of events that only count, view and carry a time zone, and name the same
    identifiers on the same day, as one change in the place of the first: what a visitor's
    browsing amounts to. Their effects commute, and the first already made any link the
    others would, so the profiles come out as if each were applied alone, in far fewer
    script steps."""
    out: list[dict[str, Any]] = []
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for change in changes:
        if not change.keys().isdisjoint(ALONE):
            out.append(change)
            continue
        t = change["t"]
        key = (*change["ids"], t // DAY_MS)
        group = groups.get(key)
        if group is None:
            groups[key] = group = {**change, "n": 1, "t0": t, "f": dict(change["f"])}
            if "tz" in change:
                group["tzt"] = t
            out.append(group)
            continue
        group["n"] += 1
        group["t"] = max(group["t"], t)
        group["t0"] = min(group["t0"], t)
        counts = group["f"]
        for name in change["f"]:
            counts[name] = counts.get(name, 0) + 1
        if "tz" in change and t >= group.get("tzt", -1):
            group["tz"], group["tzt"] = change["tz"], t
        if "views" in change:
            group["views"] = group.get("views", []) + change["views"]
    return out


@dataclass
class Applied:
    events: int = 0
    seen_before: int = 0
    merges: int = 0
    refused_merges: int = 0

    def add(self, other: Applied) -> None:
        self.events += other.events
        self.seen_before += other.seen_before
        self.merges += other.merges
        self.refused_merges += other.refused_merges


def _applied(reply: Any) -> Applied:
    events, merges, refused = reply
    return Applied(events=int(events), merges=int(merges), refused_merges=int(refused))


Entry = tuple[str, list[StoredEvent]]  # a stream entry's id and events


def _as_is(events: list[StoredEvent]) -> list[StoredEvent]:
    return events


@dataclass
class Submitted:
    seen_before: int = 0
    calls: list[tuple[list[Entry], Future[Any]]] = field(default_factory=list)  # script replies

    @property
    def events(self) -> int:
        """Events of the entries submitted, applied before or not."""
        return self.seen_before + sum(len(e) for call, _ in self.calls for _, e in call)


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

    def as_dict(self) -> dict[str, Any]:
        """Shallow: the fields hold plain JSON values already (asdict would deep-copy them)."""
        return dict(vars(self))

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
        marker_seconds: int = 7 * 86400,
        identity_cap: int = 50,
        days: int = 90,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.records_stream = records_stream
        self.marker_seconds = marker_seconds
        self.identity_cap = identity_cap
        self.days = days
        source = resources.files("cdp").joinpath("lua/profiles.lua").read_text()
        self._script = client.register_script(source)
        self._source = source
        self._pipe: ScriptPipe | None = None  # made by the first submit: only workers submit

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> ProfileStore:
        return cls(
            client,
            settings.redis_prefix,
            settings.records_stream,
            marker_seconds=settings.dedup_window_hours * 3600,
            identity_cap=settings.identity_cap,
            days=settings.profile_days,
        )

    def key(self, profile_id: str, part: str | None = None) -> str:
        base = f"{self.prefix}:profile:{profile_id}"
        return f"{base}:{part}" if part else base

    def apply(self, changes: Iterable[dict[str, Any]], *, replaying: bool = False) -> Applied:
        """Apply changes in order, in calls of a bounded size; `replaying` records no audit
        rows (they exist already)."""
        applied = Applied()
        batch: list[dict[str, Any]] = []
        for change in changes:
            batch.append(change)
            if len(batch) == CHANGES_PER_CALL:
                applied.add(self._run(batch, replaying, []))
                batch = []
        if batch:
            applied.add(self._run(batch, replaying, []))
        return applied

    def apply_events(self, events: Iterable[StoredEvent], *, replaying: bool = False) -> Applied:
        return self.apply(grouped(change_of(e) for e in events), replaying=replaying)

    def marker(self, entry_id: str) -> str:
        return f"{self.prefix}:applied:{entry_id}"

    def apply_entries(self, entries: Sequence[Entry]) -> Applied:
        """Apply the events of stream entries, each entry once: an entry applied before (its
        marker is set in the same call as its effects) is skipped. A call holds whole
        entries, so a crash leaves each applied entirely or not at all."""
        return self.settle(self.submit_entries(entries))

    def submit_entries(
        self,
        entries: Sequence[tuple[str, Any]],
        decode: Callable[[Any], list[StoredEvent]] = _as_is,
    ) -> Submitted:
        """Start applying entries; `settle` waits for the outcome. `decode` turns an entry's
        payload into its events as its call is prepared, so Redis applies one call while the
        next entries are decoded, and no call waits for the whole batch."""
        submitted = Submitted()
        if not entries:
            return submitted
        done = self.client.mget([self.marker(entry_id) for entry_id, _ in entries])
        call: list[Entry] = []
        size = 0
        for (entry_id, payload), marker in zip(entries, done, strict=True):
            events = decode(payload)
            if marker:
                submitted.seen_before += len(events)
                continue
            call.append((entry_id, events))
            size += len(events)
            if size >= CHANGES_PER_CALL:
                submitted.calls.append((call, self._submit(call)))
                call, size = [], 0
        if call:
            submitted.calls.append((call, self._submit(call)))
        return submitted

    def _submit(self, call: list[Entry]) -> Future[Any]:
        changes = grouped(change_of(e) for _, events in call for e in events)
        markers = [self.marker(entry_id) for entry_id, _ in call]
        if self._pipe is None:
            self._pipe = ScriptPipe(self.client, self._source, "cdp-profiles")
        return self._pipe.submit(*self._arguments(changes, False, markers))

    def settle(self, submitted: Submitted) -> Applied:
        applied = Applied(seen_before=submitted.seen_before)
        for call, future in submitted.calls:
            try:
                result = _applied(future.result())
            except redis.ResponseError:
                if len(call) == 1:  # this entry cannot be applied: the worker sets it aside
                    raise
                result = Applied(events=-1)
            if result.events >= 0:
                applied.add(result)
            else:  # applied meanwhile by another worker, or refused: again, one by one
                for entry in call:
                    applied.add(self.apply_entries([entry]))
        return applied

    def _arguments(
        self, batch: list[dict[str, Any]], replaying: bool, markers: list[str]
    ) -> list[Any]:
        return [self.prefix, orjson.dumps(batch), self.marker_seconds, self.identity_cap,
                self.days, int(time.time() * 1000), self.records_stream,
                "1" if replaying else "0", orjson.dumps(markers)]  # fmt: skip

    def _run(self, batch: list[dict[str, Any]], replaying: bool, markers: list[str]) -> Applied:
        return _applied(self._script(args=self._arguments(batch, replaying, markers)))

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
        """The profile an identifier belongs to (identity keys name live profiles only)."""
        owner = self.client.get(f"{self.prefix}:identity:{kind_tag}:{value}")
        return text(owner) if owner else None

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
