"""What one event changes in its profile: a pure function of the event, the script's input.

Counts are kept per UTC day for `profile_days` days, per event name (`e:`), per event name
and category (`ec:`) and per event name and product (`ep:`), so any window up to that many
days is a sum of days."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, TypedDict
from zoneinfo import available_timezones

import orjson

from cdp.events import StoredEvent
from cdp.profiles.consent import CONSENT_EVENT, parse_consent
from cdp.profiles.identity import identifiers_of

PRODUCT_ADDED, PRODUCT_REMOVED = "Product Added", "Product Removed"
PRODUCT_VIEWED, ORDER_COMPLETED = "Product Viewed", "Order Completed"
ITEM_FIELDS = ("product_id", "sku", "name", "category", "brand", "variant", "price", "url",
               "image_url", "currency")  # fmt: skip


TIME_ZONES = frozenset(available_timezones())
# Named among what changed (`evs`) when an event carries a time zone: the profile's may be
# new (the audience worker then matches the audiences reading it).
TIME_ZONE = "time_zone"


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
        country: str = address["country"]
        if len(country) == 2:
            return country.upper()
    locale = event.context.get("locale")
    if isinstance(locale, str) and len(locale) == 5 and locale[2] in "-_":
        return locale[3:].upper()
    return None


class Change(TypedDict, total=False):
    """One change, as the script (`cdp/lua/profiles.lua`) takes it. Short keys: a worker
    sends hundreds a call, encoded and decoded on both sides."""

    kind: str  # "event", or a statement made outside events: "consent", "suppress", ...
    mid: str  # the event's message id
    t: int  # when it happened, epoch ms
    type: str  # the event's type
    ids: list[str]  # its identifiers, tagged (`u:42`, `a:…`, `e:…`, `p:…`)
    prev: str  # alias: the previous id
    f: dict[str, int]  # counts to add today: `e:<event>`, `ec:<event>|<category>`, `ep:…`
    tr: dict[str, str]  # traits, each as JSON
    tz: str  # the visitor's time zone
    views: list[list[Any]]  # viewed products: [product, time, item as JSON]
    cart: list[Any]  # ["add", product, quantity, item], ["remove", product, n], ["clear", ""]
    order: int  # an order's amount in cents
    consent: list[list[str]]  # [channel, purpose, status] statements
    warn: list[str]  # lines for the profile's log
    n: int  # grouped: how many events this change stands for
    t0: int  # grouped: the earliest of their times
    tzt: int  # grouped: the time of the time zone kept
    h: list[list[Any]]  # track events for the audience history: [time, JSON member]
    evs: list[str]  # what changed, for the audience worker: event names, `identify`, `consent`,
    # `time_zone`
    bot: int  # 1: a bot sent it (its user agent): a profile only bots sent events to belongs
    # to no audience (`rules/worker.py`; the SQL path judges alike)


def _scalar(value: Any) -> bool:
    return isinstance(value, str | bool | int) or (
        isinstance(value, float) and math.isfinite(value)
    )


# An event as the audience history keeps it, at most, in JSON bytes (a shop's events take a
# few hundred): the history lives in memory and each evaluation reads it whole.
HISTORY_MEMBER_BYTES = 2048


def history_member(event: StoredEvent, warnings: list[str]) -> str:
    """The event as the audience history keeps it: its id, name and scalar properties
    (`rules/` reads them; nested values are not comparable in a definition), in the event's
    order while they fit `HISTORY_MEMBER_BYTES`; a warning names what did not."""
    scalars = {k: v for k, v in event.properties.items() if _scalar(v)}
    member = orjson.dumps([event.message_id, event.event, scalars])
    if len(member) <= HISTORY_MEMBER_BYTES:
        return member.decode()
    size = len(orjson.dumps([event.message_id, event.event, {}]))
    kept: dict[str, Any] = {}
    for name, value in scalars.items():
        size += len(orjson.dumps({name: value})) - 1  # less its braces, plus a comma
        if size > HISTORY_MEMBER_BYTES:
            warnings.append(f"properties from {name!r} on not kept for audiences (past "
                            f"{HISTORY_MEMBER_BYTES:,} bytes)")  # fmt: skip
            break
        kept[name] = value
    return orjson.dumps([event.message_id, event.event, kept]).decode()


def change_of(event: StoredEvent) -> Change:
    """What one event changes in its profile, as the script's input."""
    properties = event.properties
    kind = event.type
    traits = event.traits if kind == "identify" else {}
    ids, warnings = _identifiers(event, traits)
    name = event.event if kind == "track" else kind
    change: Change = {
        "kind": "event", "mid": event.message_id, "t": event.timestamp, "type": kind, "ids": ids,
    }  # fmt: skip
    if event.is_bot:
        change["bot"] = 1
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
    if name in SHOPPING and not event.crawled:
        _shopping(change, name, product, event, warnings)
    _consent(change, name, traits, properties, warnings)
    _for_audiences(change, event, name, warnings)
    if warnings:
        change["warn"] = warnings
    return change


def _for_audiences(change: Change, event: StoredEvent, name: str, warnings: list[str]) -> None:
    """What the audience worker reads: the track event for the history, and what changed.
    A bot's track event is not kept for audiences: a crawler's page views would fill
    `browse-abandonment`, one profile a page. The SQL path leaves them out alike."""
    kept = not event.crawled
    change["evs"] = [*([name] if kept else []), *(["consent"] if "consent" in change else []),
                     *([TIME_ZONE] if "tz" in change else [])]  # fmt: skip
    if kept and event.type == "track":
        change["h"] = [[event.timestamp, history_member(event, warnings)]]


def _identifiers(event: StoredEvent, traits: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The event's identifiers, tagged, and warnings about the ones not used."""
    known_traits = traits or event.context.get("traits")
    if known_traits and isinstance(known_traits, dict):
        found = identifiers_of(
            event.user_id, event.anonymous_id, known_traits, lambda: _region(event, known_traits)
        )
        return found.tagged, found.warnings
    # identifiers_of without traits, inline: it costs 2–4 µs an event less here
    ids = ["u:" + event.user_id] if event.user_id else []
    if event.anonymous_id:
        ids.append("a:" + event.anonymous_id)
    return ids, []


SHOPPING = frozenset({PRODUCT_VIEWED, PRODUCT_ADDED, PRODUCT_REMOVED, ORDER_COMPLETED})


def _shopping(
    change: Change, name: str, product: str, event: StoredEvent, warnings: list[str]
) -> None:
    """Views, the cart and orders."""
    properties = event.properties
    if name == PRODUCT_VIEWED:
        if product:
            change["views"] = [[product, event.timestamp, _item(properties)]]
    elif name == PRODUCT_ADDED:
        if product:
            change["cart"] = ["add", product, _quantity(properties, 1), _item(properties)]
    elif name == PRODUCT_REMOVED:
        if product:
            change["cart"] = ["remove", product, _quantity(properties, 2**31)]
    else:
        _order(change, name, properties, warnings)


def _order(change: Change, name: str, properties: dict[str, Any], warnings: list[str]) -> None:
    """An order empties the cart, and counts the categories and products it holds."""
    change["cart"] = ["clear", ""]
    try:
        change["order"] = _order_cents(properties)
    except AmountTooLarge:
        change["order"] = 0
        warnings.append(f"order amount of {MAX_AMOUNT:.0e} or more not counted")
    fields = change["f"]
    products = properties.get("products")
    for item in products if isinstance(products, list) else ():
        if isinstance(item, dict):
            category, ordered = item.get("category"), _product_id(item)
            if category and isinstance(category, str):
                fields[f"ec:{name}|{category}"] = 1
            if ordered:
                fields[f"ep:{name}|{ordered}"] = 1


def _consent(
    change: Change,
    name: str,
    traits: dict[str, Any],
    properties: dict[str, Any],
    warnings: list[str],
) -> None:
    """Consent stated in `identify` traits or by a `Consent Updated` event."""
    consent: Any = None
    if "consent" in traits:
        consent = traits["consent"]
    elif name == CONSENT_EVENT:
        consent = properties.get("consent")
    if consent is None:
        return
    statements, consent_warnings = parse_consent(consent)
    if statements:
        change["consent"] = [list(s) for s in statements]
    warnings += consent_warnings


ALONE = frozenset({"prev", "tr", "cart", "order", "consent", "warn"})  # order matters for these
DAY_MS = 86_400_000


def grouped(changes: Iterable[Change]) -> list[Change]:
    """Changes of events that only count, view and carry a time zone, and name the same
    identifiers on the same day, as one change in the place of the first: what a visitor's
    browsing amounts to. Their effects commute, and the first already made any link the
    others would, so the profiles come out as if each were applied alone, in far fewer
    script steps."""
    out: list[Change] = []
    groups: dict[tuple[Any, ...], Change] = {}
    for change in changes:
        if change["kind"] == "event" and not change["ids"]:  # nobody's: a catalog's Back In Stock
            continue
        if not change.keys().isdisjoint(ALONE):
            out.append(change)
            continue
        t = change["t"]
        key = (*change["ids"], t // DAY_MS)
        group = groups.get(key)
        if group is None:
            group = groups[key] = {**change, "n": 1, "t0": t, "f": dict(change["f"])}
            if "tz" in change:
                group["tzt"] = t
            out.append(group)
            continue
        _join(group, change)
    return out


def _join(group: Change, change: Change) -> None:
    """Add one more browsing change to its group."""
    t = change["t"]
    group["n"] += 1
    group["t"] = max(group["t"], t)
    group["t0"] = min(group["t0"], t)
    counts = group["f"]
    for name in change["f"]:
        counts[name] = counts.get(name, 0) + 1
    if "tz" in change and (t, change["tz"]) > (group.get("tzt", -1), group.get("tz", "")):
        group["tz"], group["tzt"] = change["tz"], t
    for part in ("views", "h"):  # lists that add up
        if part in change:
            group[part] = group.get(part, []) + change[part]
    group["evs"] = [*group["evs"], *(name for name in change["evs"] if name not in group["evs"])]
    if "bot" not in change:  # a person's among them: the group is a person's
        group.pop("bot", None)
