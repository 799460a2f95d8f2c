"""The ClickHouse printer: one definition as a query over `profile_events` (every event
with the profile it belongs to today) at a moment `now` given as a parameter. Preview
(size and sample), backfill and audit use it; the agreement tests hold it to the same
answers as the real-time path (`rules/conditions.py` and `rules/engine.py`).

Each condition is an aggregate per profile in an inner query; the tree is the outer WHERE.
What is not in the events (consent given through the API, membership of other audiences,
the catalog's stock now) comes in as array parameters the caller reads from live state.
Values from a definition are always parameters, never spliced into the text."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cdp.profiles.change import TIME_ZONES
from rules.conditions import events_read
from rules.definition import (
    Aggregate,
    And,
    Bucket,
    Cart,
    Consent,
    EventRef,
    LastPerformed,
    LastPerformedNode,
    Leaf,
    MemberOf,
    Node,
    Not,
    NotFollowedBy,
    Or,
    Orders,
    OutOfStock,
    OutOfStockNode,
    Performed,
    PerformedNode,
    TimeZone,
    Trait,
    Where,
    kind_of,
    spec_of,
)

T = "toUnixTimestamp64Milli(timestamp)"
# A person's track events: not a bot's (`cdp/profiles/change.py`).
TRACK = "type = 'track' AND NOT is_bot"
# A profile a person sent an event to (by `now`): one only bots sent events to belongs to no
# audience (`rules/worker.py`).
PERSON = "countIf(NOT is_bot) > 0"
# Those the profile's history keeps for audiences: of a profile over the cap, the newest
# (`cut_offs`, joined as `cut`).
HISTORY = f"{TRACK} AND (cut.capped = '' OR (timestamp, message_id) >= (cut.cut_at, cut.cut_id))"
RECEIVED = "toUnixTimestamp64Milli(received_at)"
NUMERIC_TYPES = "('Int64', 'UInt64', 'Float64')"
SCALAR_TYPES = "('String', 'Bool', 'Int64', 'UInt64', 'Float64')"
PRODUCT = "ifNull(properties.product_id.:String, '')"
QUANTITY = (
    "if(ifNull(properties.quantity.:Int64 BETWEEN 1 AND 1000, 0), "
    "assumeNotNull(properties.quantity.:Int64), 1)"
)


@dataclass
class Query:
    """The printed query and its parameters; `needs` names the live sets the caller fills
    (`consent:email:marketing`, `member:vip`, `out_of_stock`)."""

    sql: str
    parameters: dict[str, Any]
    needs: dict[str, str] = field(default_factory=dict)  # parameter name -> live set


class Printer:
    def __init__(self, history_ms: int, relaxed: frozenset[str] = frozenset()) -> None:
        # What is printed as "could be": kinds of live sets (`live`), and "time" (`leaf`).
        self.relaxed = relaxed
        self.negated = False
        self.parameters: dict[str, Any] = {}
        self.needs: dict[str, str] = {}
        self.inner: list[str] = []
        self.history_ms = history_ms

    def param(self, value: Any, type_: str) -> str:
        name = f"p{len(self.parameters)}"
        self.parameters[name] = value
        return f"{{{name}:{type_}}}"

    def column(self, expression: str) -> str:
        name = f"c{len(self.inner)}"
        self.inner.append(f"{expression} AS {name}")
        return name

    # Values of properties, typed as the evaluator reads them.

    @staticmethod
    def prop(name: str, root: str = "properties") -> str:
        return f"{root}.`{name}`"

    def number(self, name: str, root: str = "properties") -> str:
        p = self.prop(name, root)
        return f"coalesce(toFloat64({p}.:Int64), {p}.:Float64, toFloat64({p}.:UInt64))"

    def equal(self, name: str, value: Any, root: str = "properties") -> str:
        p = self.prop(name, root)
        if isinstance(value, bool):
            return f"ifNull({p}.:Bool = {self.param(value, 'Bool')}, 0)"
        if isinstance(value, str):
            return f"ifNull({p}.:String = {self.param(value, 'String')}, 0)"
        return f"ifNull({self.number(name, root)} = {self.param(float(value), 'Float64')}, 0)"

    def where(self, w: Where) -> str:
        p = self.prop(w.property)
        # Present as the history keeps properties: a scalar (objects and lists are not kept).
        present = f"dynamicType({p}) IN {SCALAR_TYPES}"
        if w.op == "==":
            return self.equal(w.property, w.value)
        if w.op == "!=":
            return f"({present} AND NOT {self.equal(w.property, w.value)})"
        if w.op == "in":
            assert isinstance(w.value, list)
            return "(" + " OR ".join(self.equal(w.property, v) for v in w.value) + ")"
        return (
            f"ifNull({self.number(w.property)} {w.op} {self.param(float(w.value), 'Float64')}, 0)"  # type: ignore[arg-type]
        )

    def event(self, ref: EventRef) -> str:
        """The event named, with its filters, inside the kept history, not after now."""
        parts = [HISTORY, f"event = {self.param(ref.event, 'String')}", self.kept()]
        parts += [self.where(w) for w in ref.where]
        return " AND ".join(parts)

    def kept(self) -> str:
        return f"{T} > {{now:Int64}} - {self.history_ms} AND {T} <= {{now:Int64}}"

    def window(self, within: int) -> str:
        return f"{T} > {{now:Int64}} - {within}"

    # The conditions.

    def leaf(self, leaf: Leaf) -> str:
        """The condition; relaxed for "time" (a backfill's candidates), one whose reading
        may change as time passes with no new event holds wherever the profile has an event
        it reads (either way, as the tree needs: so the answer holds everyone it may hold for
        at some moment from now on); with none, it stays as it is now. Any condition reading
        events may turn where one of them is dated after now (it counts when its time
        comes)."""
        exact = self._leaf(leaf)
        names = events_read(leaf)
        if "time" not in self.relaxed or not names:
            return exact
        listed = self.param(sorted(names), "Array(String)")
        turns = may_turn(leaf, not self.negated)
        since = f"{{now:Int64}} - {self.history_ms}" if turns else "{now:Int64}"
        has = self.column(f"countIf({HISTORY} AND event IN {listed} AND {T} > {since}) > 0")
        return f"({exact} AND NOT {has})" if self.negated else f"({exact} OR {has})"

    def _leaf(self, leaf: Leaf) -> str:
        """The condition as printed by the method of its kind's name (live sets aside)."""
        spec = spec_of(leaf)
        if isinstance(spec, Consent):
            return self.live(f"consent:{spec.channel}:{spec.purpose}")
        if isinstance(spec, MemberOf):
            return self.live(f"member:{spec.audience}")
        printed: Callable[[Any], str] = getattr(self, kind_of(leaf))
        return printed(spec)

    def performed(self, spec: Performed) -> str:
        condition = f"{self.event(spec)} AND {self.window(spec.within)}"
        if spec.same:
            value = f"{self.prop(spec.same)}.:String"
            groups = self.column(f"groupArrayIf({value}, {condition} AND {value} IS NOT NULL)")
            counts = f"arrayMap(v -> toUInt64(countEqual({groups}, v)), arrayDistinct({groups}))"
            count = f"arrayMax(arrayConcat([toUInt64(0)], {counts}))"
        else:
            count = self.column(f"countIf({condition})")
        return f"({count} {spec.op} {spec.times})"

    def last(self, ref: EventRef, extra: str = "") -> str:
        return self.column(f"maxIfOrNull({T}, {self.event(ref)}{extra})")

    def not_followed_by(self, spec: NotFollowedBy) -> str:
        first = self.last(spec, f" AND {self.window(spec.within)}" if spec.within else "")
        then = self.last(spec.then)
        return (f"({first} IS NOT NULL AND NOT ifNull({then} > {first}, 0) "
                f"AND {{now:Int64}} - {first} >= {spec.wait})")  # fmt: skip

    def last_performed(self, spec: LastPerformed) -> str:
        last = self.last(spec)
        return f"({last} IS NOT NULL AND {{now:Int64}} - {last} {spec.op} {spec.ago})"

    def aggregate(self, spec: Aggregate) -> str:
        value = self.number(spec.property)
        condition = f"{self.event(spec)} AND {self.window(spec.within)} AND {value} IS NOT NULL"
        count = self.column(f"countIf({condition})")
        result = count if spec.fn == "count" else self.column(f"{spec.fn}If({value}, {condition})")
        present = "1" if spec.fn in ("sum", "count") else f"{count} > 0"
        threshold = self.param(spec.value, "Float64")
        # An aggregate of a Nullable over no row is NULL: a sum of nothing is 0 here.
        return f"({present} AND round(ifNull(toFloat64({result}), 0), 6) {spec.op} {threshold})"

    def trait(self, spec: Trait) -> str:
        p = self.prop(spec.name, "traits")
        condition = f"type = 'identify' AND dynamicType({p}) != 'None'"
        latest_type = self.column(f"argMaxIf(dynamicType({p}), {T}, {condition})")
        if isinstance(spec.value, bool):
            typed, kind = f"{p}.:Bool", "('Bool')"
            literal = self.param(spec.value, "Bool")
        elif isinstance(spec.value, str):
            typed, kind = f"{p}.:String", "('String')"
            literal = self.param(spec.value, "String")
        else:
            typed, kind = self.number(spec.name, "traits"), NUMERIC_TYPES
            literal = self.param(float(spec.value), "Float64")
        latest = self.column(f"argMaxIf({typed}, {T}, {condition} AND {typed} IS NOT NULL)")
        return f"({latest_type} IN {kind} AND ifNull({latest} {spec.op} {literal}, 0))"

    def cart(self, spec: Cart) -> str:
        kept = self.kept()
        last_order = self.column(
            f"maxIfOrNull({T}, {HISTORY} AND event = 'Order Completed' AND {kept})"
        )
        # Each add or removal: (product, signed units, time, price, message id).
        moves = self.column(
            f"groupArrayIf(({PRODUCT}, if(event = 'Product Added', 1, -1) * {QUANTITY}, {T}, "
            f"{self.number('price')}, message_id), "
            f"{HISTORY} AND event IN ('Product Added', 'Product Removed') AND {kept} "
            f"AND {PRODUCT} != '')"
        )
        after = f"arrayFilter(x -> x.3 > ifNull({last_order}, -1), {moves})"
        units = f"greatest(0, arraySum(arrayMap(x -> if(x.1 = p, x.2, 0), {after})))"
        if spec.by_value:
            # Its latest price, in the history's order (time, then message id); none: 0.
            priced = f"arrayFilter(x -> x.1 = p AND x.4 IS NOT NULL, {after})"
            price = f"ifNull(arrayElement(arrayReverseSort(x -> (x.3, x.5), {priced}), 1).4, 0)"
            each = f"{units} * {price}"
            threshold = self.param(float(spec.threshold), "Float64")
        else:
            each, threshold = units, str(spec.threshold)
        measured = f"arraySum(arrayMap(p -> {each}, arrayDistinct(arrayMap(x -> x.1, {after}))))"
        if spec.by_value:
            measured = f"round({measured}, 6)"
        return f"({measured} {spec.op} {threshold})"

    def out_of_stock(self, spec: OutOfStock) -> str:
        products = self.live("out_of_stock", as_array=True)
        events = self.param(list(spec.events), "Array(String)")
        watched = self.column(
            f"countIf({HISTORY} AND event IN {events} AND {self.kept()} AND "
            f"{self.window(spec.within)} AND has({products}, {PRODUCT}))"
        )
        return f"({watched} > 0)"

    def time_zone(self, spec: TimeZone) -> str:
        """The zone of the profile's latest event in event time that carried a known one (of
        two at the same moment, the greater name), as the profile keeps it: of every event,
        for ever."""
        zone = f"{self.prop('timezone', 'context')}.:String"
        known = self.param(sorted(TIME_ZONES), "Array(String)")
        told = f"ifNull({zone}, '')"
        latest = self.column(f"argMaxIf({told}, ({T}, {told}), has({known}, {told}))")
        zones = self.param(sorted(spec.zones), "Array(String)")
        regions = self.param(list(spec.regions), "Array(String)")
        return f"(has({zones}, {latest}) OR arrayExists(r -> startsWith({latest}, r), {regions}))"

    def orders(self, spec: Orders) -> str:
        """Every order received by now, however old (the profile's count: not only the kept
        history's)."""
        count = self.column(
            f"countIf({TRACK} AND event = 'Order Completed' AND {RECEIVED} <= {{now:Int64}})"
        )
        return f"({count} {spec.op} {spec.count})"

    def bucket(self, spec: Bucket) -> str:
        salt = self.param(spec.salt + ":", "String")
        hashed = f"SHA256(concat({salt}, profile_id))"
        return (f"(reinterpretAsUInt32(reverse(unhex(substring(hex({hashed}), 1, 8)))) % 100 "
                f"< {spec.below})")  # fmt: skip

    def live(self, live_set: str, as_array: bool = False) -> str:
        if not as_array and live_set.split(":")[0] in self.relaxed:
            # Unknown here: true where it helps the tree hold, so the answer is a superset.
            return "0" if self.negated else "1"
        name = f"live{len(self.needs)}"
        self.needs[name] = live_set
        reference = f"{{{name}:Array(String)}}"
        return reference if as_array else f"has({reference}, profile_id)"

    def tree(self, node: Node) -> str:
        if isinstance(node, And):
            return "(" + " AND ".join(self.tree(c) for c in node.and_) + ")"
        if isinstance(node, Or):
            return "(" + " OR ".join(self.tree(c) for c in node.or_) + ")"
        if isinstance(node, Not):
            self.negated = not self.negated
            inner = self.tree(node.not_)
            self.negated = not self.negated
            return f"(NOT {inner})"
        return self.leaf(node)


def may_turn(leaf: Leaf, to: bool) -> bool:
    """Whether the condition's reading may turn to `to` as time passes with no new event: a
    count in a window only falls (events slide out), the age of a recent event only grows
    past its bound, a watched product only slides out; the others may turn either way
    (waits pass, sums change, events are forgotten)."""
    spec = spec_of(leaf)
    if isinstance(leaf, PerformedNode) and spec.op in (">=", ">", "<=", "<"):
        return to == (spec.op in ("<=", "<"))  # the count only falls
    if isinstance(leaf, LastPerformedNode) and spec.op == "<":
        return not to  # done recently: only ceases to be
    if isinstance(leaf, OutOfStockNode):
        return not to  # in stock again is an event (the catalog's)
    return True


def members_query(
    node: Node,
    history_ms: int,
    history_events: int,
    now: int,
    select: str = "profile_id",
    relaxed: frozenset[str] = frozenset(),
) -> Query:
    """The profiles the definition holds for at `now` (epoch ms): `select` over them. With
    `relaxed` kinds of live sets (`consent`, `member`) left open, or "time" (what may hold
    later with no new event): a superset of them. Each profile's track events are those real
    time keeps: of the kept days, the newest `history_events` (`cut_offs`). Every profile
    with a person's event by `now` is judged (one only bots sent events to is in no
    audience): one dated by then, or received by then (dated after: a device's clock
    ahead; real time keeps a profile from its first event received);
    conditions on events read those dated up to `now`, a trait its value set last in event
    time (as the profile keeps it)."""
    printer = Printer(history_ms, relaxed)
    condition = printer.tree(node)
    columns = ", ".join(["profile_id", *printer.inner])
    sql = (
        f"SELECT {select} FROM (SELECT {columns} FROM profile_events "
        f"LEFT JOIN ({cut_offs(history_ms, history_events)}) AS cut ON cut.capped = profile_id "
        f"WHERE profile_id != '' AND ({T} <= {{now:Int64}} OR {RECEIVED} <= {{now:Int64}}) "
        f"GROUP BY profile_id HAVING {PERSON}) WHERE {condition}"
    )
    return Query(sql, {**printer.parameters, "now": now}, dict(printer.needs))


def cut_offs(history_ms: int, history_events: int) -> str:
    """For each profile with more track events in the kept days than its history holds
    (`CDP_HISTORY_EVENTS`; those after `now` count, as they are in the history), the oldest
    it holds: (time, message id). The history keeps the newest by time, then by its entry's
    text (which begins with the message id): ties at the same millisecond fall the same way
    unless a message id holds a character JSON escapes. Ranked only for the profiles over
    the cap (a bot's), so a shop's query pays one count per profile."""
    kept = f"{TRACK} AND profile_id != '' AND {T} > {{now:Int64}} - {history_ms}"
    over = f"SELECT profile_id FROM profile_events WHERE {kept} GROUP BY profile_id " \
           f"HAVING count() > {history_events}"  # fmt: skip
    ranked = (
        "SELECT profile_id, timestamp, message_id, row_number() OVER (PARTITION BY profile_id "
        f"ORDER BY timestamp DESC, message_id DESC) AS recency FROM profile_events "
        f"WHERE {kept} AND profile_id IN ({over})"
    )
    return (
        "SELECT profile_id AS capped, timestamp AS cut_at, message_id AS cut_id "
        f"FROM ({ranked}) WHERE recency = {history_events}"
    )
