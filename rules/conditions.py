"""What each condition of a definition reads on one profile at one moment: the value it
measures (a count, an age, a sum, a flag), whether it holds, and the next moment at which
it could change with no new event (a window sliding, an hour passing). These readings are
the flat snapshot the engine matches, the reason recorded with a transition, and the
answer to "why is this profile (not) in this audience".

The subject is read from Redis: the profile's history of track events (the audience view,
kept `CDP_HISTORY_DAYS`), its traits, consent, memberships, and the catalog's stock."""

from __future__ import annotations

import hashlib
import itertools
import math
import sys
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, NamedTuple

from cdp.profiles.reader import iso
from rules.definition import (
    Aggregate,
    AggregateNode,
    And,
    Bucket,
    BucketNode,
    Cart,
    CartNode,
    Consent,
    ConsentNode,
    EventRef,
    LastPerformed,
    LastPerformedNode,
    Leaf,
    MemberOf,
    MemberOfNode,
    Node,
    Not,
    NotFollowedBy,
    NotFollowedByNode,
    Or,
    Orders,
    OrdersNode,
    OutOfStock,
    OutOfStockNode,
    Performed,
    PerformedNode,
    TimeZone,
    TimeZoneNode,
    Trait,
    TraitNode,
    Where,
    format_duration,
    kind_of,
    leaves,
    spec_of,
)

PRODUCT_ADDED, PRODUCT_REMOVED, ORDER_COMPLETED = (
    "Product Added",
    "Product Removed",
    "Order Completed",
)
NEVER = -1  # the age of what never happened
CART_EVENTS = frozenset({PRODUCT_ADDED, PRODUCT_REMOVED, ORDER_COMPLETED})
_CART_CHANGES = frozenset({PRODUCT_ADDED, PRODUCT_REMOVED})


class Happened(NamedTuple):
    """One track event in a profile's history (a tuple: made for every event read, in the
    order the history is read in: `AudienceInputs.history`)."""

    at: int  # epoch ms, when it happened
    message_id: str
    event: str
    properties: dict[str, Any]


@dataclass
class Subject:
    """Everything a definition may read of one profile."""

    profile_id: str
    history: list[Happened] = field(default_factory=list)  # by time
    traits: dict[str, Any] = field(default_factory=dict)
    consent: set[tuple[str, str]] = field(default_factory=set)  # (channel, purpose) granted
    memberships: set[str] = field(default_factory=set)
    out_of_stock: frozenset[str] = frozenset()  # product ids with no stock now
    # How long an event stays in the kept history (`CDP_HISTORY_DAYS`): at its time plus
    # this, it is forgotten (a condition with no window of its own then changes). None:
    # kept for ever.
    kept_ms: int | None = None
    time_zone: str | None = None  # the profile's (IANA name), if an event told it
    orders: int = 0  # every `Order Completed` it was sent, ever (the profile's count)
    bot_only: bool = False  # only bots sent it events: it belongs to no audience

    _timelines: dict[Any, Timeline] = field(default_factory=dict, repr=False)
    _texts: dict[tuple[str, str], dict[str, list[Happened]]] = field(
        default_factory=dict, repr=False
    )
    _carts: dict[tuple[int, bool], tuple[int, float, int | None, int | None]] = field(
        default_factory=dict, repr=False
    )

    def cart(self, now: int, priced: bool = True) -> tuple[int, float, int | None, int | None]:
        """`cart_of` the history at `now` (its value only if `priced`), and the time of its
        first cart event after `now` (the cart reads no other: when one dated ahead comes,
        it may change). Made once per subject and moment."""
        found = self._carts.get((now, True)) or self._carts.get((now, priced))
        if found is None:
            events = [h for h in self.history if h.event in CART_EVENTS]  # what it reads
            found = (*cart_of(events, now, priced), _arrivals(events, now))
            self._carts[now, priced] = found
        return found

    @cached_property
    def by_event(self) -> dict[str, list[Happened]]:
        """The history by event name (each list in time order), made once per subject."""
        index: dict[str, list[Happened]] = {}
        for h in self.history:
            index.setdefault(h.event, []).append(h)
        return index

    def forgotten(self, at: int | None) -> int | None:
        """When an event of this time leaves the kept history."""
        return None if at is None or self.kept_ms is None else at + self.kept_ms

    def timeline(self, ref: EventRef) -> Timeline:
        """The events of that name that pass the filters, with their times: made once per
        subject for the references that select alike."""
        found = self._timelines.get(ref.selector)
        if found is None:
            if not ref.where:
                return self.named(ref.event)  # kept under the same key
            first = ref.where[0] if len(ref.where) == 1 else None
            if first is not None and first.op == "==" and isinstance(first.value, str):
                named = self._by_text(ref.event, first.property).get(first.value, [])  # one pass
            else:
                named = [h for h in self.by_event.get(ref.event, [])
                         if all(matches(w, h.properties) for w in ref.where)]  # fmt: skip
            found = self._timelines[ref.selector] = Timeline(named, [h.at for h in named])
        return found

    def named(self, event: str) -> Timeline:
        """Every event of that name, with their times (made once per subject; the key is
        the selector of a reference with no filter)."""
        key = (event, ())
        found = self._timelines.get(key)
        if found is None:
            named = self.by_event.get(event, [])
            found = self._timelines[key] = Timeline(named, [h.at for h in named])
        return found

    def _by_text(self, event: str, prop: str) -> dict[str, list[Happened]]:
        """The events of that name by their text value of the property (what `==` a text
        matches), made once per subject and property: the same category 4 ways, one pass."""
        index = self._texts.get((event, prop))
        if index is None:
            index = self._texts[event, prop] = {}
            for h in self.by_event.get(event, []):
                value = h.properties.get(prop)
                if isinstance(value, str):
                    index.setdefault(value, []).append(h)
        return index


@dataclass(frozen=True, slots=True)
class Timeline:
    """Events in time order and their times, to find a window's bounds by bisection."""

    events: list[Happened]
    ats: list[int]

    def upto(self, moment: int) -> int:
        """How many happened at or before the moment (the index of the first after it)."""
        return bisect_right(self.ats, moment)

    def first_after(self, index: int) -> int | None:
        """The time of the event at `index` (the first after some moment), if any."""
        return self.ats[index] if index < len(self.ats) else None


class Reading(NamedTuple):
    """One condition at one moment. `value` is what the engine compares (a number);
    `shown` is what a person reads (or a function that makes it: only reasons and answers
    to "why" show it, so its formatting waits until then)."""

    path: str
    kind: str
    value: float
    present: bool  # False: nothing to compare (an average of no event, a trait not set)
    holds: bool
    spec: Any  # the condition's own part of the definition
    shown: Any
    next_at: int | None  # the next moment it may change with no new event

    @property
    def threshold(self) -> str:
        return threshold_of(self.spec)

    def as_dict(self) -> dict[str, Any]:
        shown = self.shown() if callable(self.shown) else self.shown
        return {"path": self.path, "condition": self.kind, "value": shown,
                "threshold": self.threshold, "holds": self.holds}  # fmt: skip


# Each kind's reading: (value, present, holds, shown, next moment) of (spec, subject, now).
Measure = tuple[float, bool, bool, Any, "int | None"]


def number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    ">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}  # fmt: skip


def same_value(actual: Any, expected: Any) -> bool:
    """Equality as ClickHouse's typed JSON subcolumns see it: text with text, a bool with a
    bool, a number with a number."""
    if isinstance(expected, bool) or isinstance(actual, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if isinstance(expected, str) or isinstance(actual, str):
        return isinstance(actual, str) and isinstance(expected, str) and actual == expected
    a, b = number(actual), number(expected)
    return a is not None and b is not None and a == b


def matches(where: Where, properties: dict[str, Any]) -> bool:
    actual = properties.get(where.property)
    if actual is None:
        return False
    if where.op == "in":
        assert isinstance(where.value, list)
        return any(same_value(actual, v) for v in where.value)
    if where.op == "==":
        return same_value(actual, where.value)
    if where.op == "!=":
        # A property that is there with another value (of any type); absent never matches.
        return not same_value(actual, where.value)
    a = number(actual)
    return a is not None and COMPARE[where.op](a, where.value)


def _soonest(*moments: int | None) -> int | None:
    found = [m for m in moments if m is not None]
    return min(found) if found else None


def _arrivals(events: list[Happened], now: int) -> int | None:
    """The first event dated after now counts from its time (`events` in time order)."""
    return next((h.at for h in events if h.at > now), None)


def _leaves_window(inside: list[Happened], within: int) -> int | None:
    """When the first of these (in time order) slides out of the window."""
    return inside[0].at + within if inside else None


def events_read(leaf: Leaf) -> frozenset[str]:
    """The events a condition reads (by name): what may change its reading when one comes,
    and, as their times pass, with none (nothing for traits, consent, buckets, memberships)."""
    spec = spec_of(leaf)
    if isinstance(leaf, NotFollowedByNode):
        return frozenset({spec.event, spec.then.event})
    if isinstance(leaf, PerformedNode | LastPerformedNode | AggregateNode):
        return frozenset({spec.event})
    if isinstance(leaf, CartNode):
        return CART_EVENTS
    if isinstance(leaf, OutOfStockNode):
        return frozenset(spec.events)
    return frozenset()


def group_of(happened: Happened, prop: str) -> str | None:
    return group_value(happened.properties.get(prop))


def group_value(value: Any) -> str | None:
    """A property's value as `same` groups it: text only."""
    return value if isinstance(value, str) else None


def performed(spec: Performed, s: Subject, now: int) -> Measure:
    timeline = s.timeline(spec)
    ats = timeline.ats
    start, end = bisect_right(ats, now - spec.within), bisect_right(ats, now)
    if spec.same:
        inside = [h for h in timeline.events[start:end] if group_of(h, spec.same) is not None]
        groups = Counter(group_of(h, spec.same) for h in inside)
        count = max(groups.values(), default=0)
        shown: Any = {"count": count, "of": spec.same,
                      "value": groups.most_common(1)[0][0] if groups else None}  # fmt: skip
        later = [h for h in timeline.events[end:] if group_of(h, spec.same) is not None]
        next_at = _soonest(_leaves_window(inside, spec.within), _arrivals(later, now))
    else:  # the common case, on the hot path: no call it can do without
        count = shown = end - start
        leaves = ats[start] + spec.within if count else None
        arrival = ats[end] if end < len(ats) else None
        next_at = arrival if leaves is None else leaves if arrival is None else min(leaves, arrival)
    return count, True, COMPARE[spec.op](count, spec.times), shown, next_at


def not_followed_by(spec: NotFollowedBy, s: Subject, now: int) -> Measure:
    firsts, thens = s.timeline(spec), s.timeline(spec.then)
    within = spec.within
    start = firsts.upto(now - within) if within is not None else 0
    end = firsts.upto(now)
    last = firsts.ats[end - 1] if end > start else None
    arrivals = _soonest(firsts.first_after(end), thens.first_after(thens.upto(now)))
    if last is None:
        return NEVER, True, False, None, arrivals
    if thens.upto(now) > thens.upto(last):  # a `then` in (last, now]
        return (
            NEVER,
            True,
            False,
            lambda: {"last": iso(last), "followed": True},
            _soonest(arrivals, last + within if within else None),
        )
    waited = now - last
    holds = waited >= spec.wait
    due = last + spec.wait if not holds else None
    slides = last + within if within else s.forgotten(last)
    return (
        waited,
        True,
        holds,
        lambda: {"last": iso(last), "waited": format_duration(waited)},
        _soonest(due, slides, arrivals),
    )


def last_performed(spec: LastPerformed, s: Subject, now: int) -> Measure:
    timeline = s.timeline(spec)
    end = timeline.upto(now)
    last = timeline.ats[end - 1] if end else None
    arrivals = timeline.first_after(end)
    if last is None:
        return NEVER, True, False, None, arrivals
    age = now - last
    holds = age >= spec.ago if spec.op == ">=" else age < spec.ago
    return (
        age,
        True,
        holds,
        lambda: {"last": iso(last), "ago": format_duration(age)},
        _soonest(
            last + spec.ago if last + spec.ago > now else None, arrivals, s.forgotten(last)
        ),  # fmt: skip
    )


def aggregate(spec: Aggregate, s: Subject, now: int) -> Measure:
    timeline = s.timeline(spec)
    start, end = timeline.upto(now - spec.within), timeline.upto(now)
    inside = [h for h in timeline.events[start:end]
              if number(h.properties.get(spec.property)) is not None]  # fmt: skip
    later = [h for h in timeline.events[end:]
             if number(h.properties.get(spec.property)) is not None]  # fmt: skip
    values = [number(h.properties[spec.property]) or 0.0 for h in inside]
    value, present = summary(spec.fn, values)
    holds = present and COMPARE[spec.op](value, spec.value)
    return (
        value,
        present,
        holds,
        value if present else None,
        _soonest(_leaves_window(inside, spec.within), _arrivals(later, now)),
    )


def summary(fn: str, values: list[float]) -> tuple[float, bool]:
    """An aggregate of these values (the reading's value), and whether there is one (`avg`,
    `min` and `max` of none have none)."""
    if not values:
        return 0.0, fn in ("sum", "count")
    if fn == "sum":
        result = total(values)
    elif fn == "count":
        result = float(len(values))
    elif fn == "avg":
        result = total(values) / len(values)
    else:
        result = min(values) if fn == "min" else max(values)
    return clamp(round(result, 6)), True


def clamp(value: float) -> float:
    """Within the float range (a reading past it is the largest float: JSON, the engine's and
    the records', has no infinity)."""
    return max(-sys.float_info.max, min(sys.float_info.max, value))


def total(values: list[float]) -> float:
    """The exact sum; past the float range, the infinity ClickHouse's sum gives (its reading
    is then the largest float: JSON, the engine's and the records', has no infinity)."""
    try:
        return math.fsum(values)
    except OverflowError:  # fsum refuses an intermediate overflow
        return sum(values)


def cart_of(
    history: list[Happened], now: int, priced: bool = True
) -> tuple[int, float, int | None]:
    """The cart at `now`: its units (added less removed, per product, none below zero,
    since the last order), its value (each product's units times the numeric `price` of its
    latest add or removal that has one; none: 0; not `priced`: 0, not read), and the time of
    the oldest add or removal counted (when it is forgotten, the cart changes)."""
    last_order = None  # the counted adds and removals come after it
    for h in history:
        if h.event == ORDER_COMPLETED and h.at <= now and (last_order is None or h.at > last_order):
            last_order = h.at
    after = last_order if last_order is not None else -math.inf
    per_product: dict[str, int] = {}
    prices: dict[str, float] = {}
    oldest = None
    for h in history:  # in time order: the latest price is the one kept
        at = h.at
        if at > now or at <= after or h.event not in _CART_CHANGES:
            continue
        product = product_of(h.properties)
        if not product:
            continue
        quantity = quantity_of(h.properties)
        per_product[product] = per_product.get(product, 0) + (
            quantity if h.event == PRODUCT_ADDED else -quantity
        )
        if priced and (price := number(h.properties.get("price"))) is not None:
            prices[product] = price
        if oldest is None or at < oldest:
            oldest = at
    held = {product: units for product, units in per_product.items() if units > 0}
    if not priced:
        return sum(held.values()), 0.0, oldest
    value = total([units * prices.get(product, 0.0) for product, units in held.items()])
    return sum(held.values()), clamp(round(value, 6)), oldest


def product_of(properties: dict[str, Any]) -> str | None:
    value = properties.get("product_id")
    return value if isinstance(value, str) and value else None


def quantity_of(properties: dict[str, Any]) -> int:
    value = properties.get("quantity")
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 1000:
        return value
    return 1


def bucket_of(profile_id: str, salt: str) -> int:
    """0..99, stable for a profile and a salt (`rules/sql.py` computes the same)."""
    return int(hashlib.sha256(f"{salt}:{profile_id}".encode()).hexdigest()[:8], 16) % 100


def trait_holds(spec: Trait, traits: dict[str, Any]) -> tuple[bool, bool]:
    """(present, holds): a trait of another type than the value never matches."""
    actual = traits.get(spec.name)
    if actual is None:
        return False, False
    if spec.op in ("==", "!="):
        same = same_value(actual, spec.value)
        comparable = (isinstance(actual, bool) == isinstance(spec.value, bool)) and (
            isinstance(actual, str) == isinstance(spec.value, str)
        )
        return True, comparable and (same if spec.op == "==" else not same)
    a = number(actual)
    return True, a is not None and COMPARE[spec.op](a, spec.value)


def watched_out_of_stock(spec: OutOfStock, s: Subject, now: int) -> tuple[list[str], int | None]:
    """The products out of stock seen within the window, and the next moment that may
    change: the first of them sliding out, or the next of these events arriving."""
    products: set[str] = set()
    slides = arrives = None
    for event in spec.events:
        timeline = s.named(event)
        start, end = timeline.upto(now - spec.within), timeline.upto(now)
        arrives = _soonest(arrives, timeline.first_after(end))
        if not s.out_of_stock:
            continue
        for h in timeline.events[start:end]:
            product = product_of(h.properties)
            if product is not None and product in s.out_of_stock:
                products.add(product)
                slides = _soonest(slides, h.at + spec.within)
    return sorted(products), _soonest(slides, arrives)


THRESHOLDS: dict[type, Callable[[Any], str]] = {
    Performed: lambda spec: f"{spec.op} {spec.times}",
    NotFollowedBy: lambda spec: f"waited >= {format_duration(spec.wait)}",
    LastPerformed: lambda spec: f"ago {spec.op} {format_duration(spec.ago)}",
    Aggregate: lambda spec: f"{spec.fn}({spec.property}) {spec.op} {spec.value}",
    Trait: lambda spec: f"{spec.op} {spec.value!r}",
    Cart: lambda spec: f"{'value' if spec.by_value else 'units'} {spec.op} {spec.threshold}",
    Consent: lambda spec: f"{spec.channel}/{spec.purpose} granted",
    OutOfStock: lambda spec: "a watched product out of stock",
    Bucket: lambda spec: f"< {spec.below}",
    TimeZone: lambda spec: "in " + ", ".join(spec.in_),
    Orders: lambda spec: f"{spec.op} {spec.count}",
    MemberOf: lambda spec: f"member of {spec.audience}",
}  # fmt: skip


def threshold_of(spec: Any) -> str:
    """The condition's threshold as a person reads it (made only for reasons shown)."""
    return THRESHOLDS[type(spec)](spec)


def _trait(spec: Trait, s: Subject, now: int) -> Measure:
    present, ok = trait_holds(spec, s.traits)
    return float(ok), present, ok, s.traits.get(spec.name), None


def _cart(spec: Cart, s: Subject, now: int) -> Measure:
    units, value, oldest, arrival = s.cart(now, spec.by_value)
    next_at = _soonest(arrival, s.forgotten(oldest))
    measured = value if spec.by_value else units
    return measured, True, COMPARE[spec.op](measured, spec.threshold), measured, next_at


def _consent(spec: Consent, s: Subject, now: int) -> Measure:
    ok = (spec.channel, spec.purpose) in s.consent
    return float(ok), True, ok, "granted" if ok else "not granted", None


SHOWN_PRODUCTS = 20  # of a reason: it goes with every transition record and "why" answer


def _out_of_stock(spec: OutOfStock, s: Subject, now: int) -> Measure:
    products, next_at = watched_out_of_stock(spec, s, now)
    shown = products[:SHOWN_PRODUCTS]
    if len(products) > SHOWN_PRODUCTS:
        shown.append(f"and {len(products) - SHOWN_PRODUCTS} more")
    return float(bool(products)), True, bool(products), shown, next_at


def _time_zone(spec: TimeZone, s: Subject, now: int) -> Measure:
    ok = spec.holds(s.time_zone)
    return float(ok), True, ok, s.time_zone or "unknown", None


def _orders(spec: Orders, s: Subject, now: int) -> Measure:
    return s.orders, True, COMPARE[spec.op](s.orders, spec.count), s.orders, None


def _bucket(spec: Bucket, s: Subject, now: int) -> Measure:
    b = bucket_of(s.profile_id, spec.salt)
    return b, True, b < spec.below, b, None


def _member_of(spec: MemberOf, s: Subject, now: int) -> Measure:
    ok = spec.audience in s.memberships
    return float(ok), True, ok, "member" if ok else "not a member", None


MEASURES: dict[type, Callable[[Any, Subject, int], Measure]] = {
    PerformedNode: performed, NotFollowedByNode: not_followed_by,
    LastPerformedNode: last_performed, AggregateNode: aggregate, TraitNode: _trait,
    CartNode: _cart, ConsentNode: _consent, OutOfStockNode: _out_of_stock,
    BucketNode: _bucket, MemberOfNode: _member_of, TimeZoneNode: _time_zone,
    OrdersNode: _orders,
}  # fmt: skip


# A leaf ready to read: its path, kind, spec and measure, looked up once per definition.
Prepared = tuple[str, str, Any, Callable[[Any, Subject, int], Measure]]


def prepare(found: Iterable[tuple[str, Leaf]]) -> list[Prepared]:
    return [(path, kind_of(leaf), spec_of(leaf), MEASURES[type(leaf)]) for path, leaf in found]


def read(node: Node, s: Subject, now: int, prepared: list[Prepared] | None = None) -> list[Reading]:
    """Every condition of the tree, left to right (`prepared`: its leaves, if known already)."""
    readings = []
    for path, kind, spec, measure in prepared or prepare(leaves(node)):
        value, present, ok, shown, next_at = measure(spec, s, now)
        readings.append(Reading(path, kind, value, present, ok, spec, shown, next_at))
    return readings


def decider(node: Node) -> Callable[[Sequence[Reading]], bool]:
    """The tree's answer from its leaves' readings (in leaf order), as one function: the
    oracle the engine is checked against."""
    leaf_index = itertools.count()

    def build(n: Node) -> Callable[[Sequence[Reading]], bool]:
        if isinstance(n, And | Or):
            parts = [build(c) for c in (n.and_ if isinstance(n, And) else n.or_)]
            if isinstance(n, And):
                return lambda r: all(part(r) for part in parts)
            return lambda r: any(part(r) for part in parts)
        if isinstance(n, Not):
            inner = build(n.not_)
            return lambda r: not inner(r)
        i = next(leaf_index)
        return lambda r: r[i].holds

    return build(node)


def holds(node: Node, readings: dict[str, Reading]) -> bool:
    """The tree's answer from its leaves' readings, by path."""
    return decider(node)([readings[path] for path, _ in leaves(node)])


def next_change(readings: Iterable[Reading], now: int) -> int | None:
    """The soonest moment after `now` at which one of these readings may change."""
    soonest = None
    for r in readings:
        at = r.next_at
        if at is not None and at > now and (soonest is None or at < soonest):
            soonest = at
    return soonest
