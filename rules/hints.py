"""What the warehouse says of a definition before it runs: an event it names that the kept
history never received, a property no such event carries, a text value none of them had, a
trait no profile was given, a value of a type the property or trait never has there, a cart
with no `Product Added` (or no numeric price), orders with no `Order Completed`, a time zone
no event told; and a membership of a disabled audience. Each keeps an audience empty, or a
condition false, for ever, and none is an error (the events may not have come yet: a new
shop, a new page), so they are hints beside a definition that is saved or previewed, each
naming its path and, where one is close, what was likely meant."""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass, field
from typing import Any

from cdp.storage import Warehouse
from rules.audiences import DAY_MS
from rules.conditions import CART_EVENTS, ORDER_COMPLETED, PRODUCT_ADDED
from rules.definition import (
    NUMERIC,
    Aggregate,
    CartNode,
    EventRef,
    Leaf,
    MemberOfNode,
    Node,
    NotFollowedBy,
    OrdersNode,
    OutOfStock,
    Performed,
    TimeZoneNode,
    Trait,
    TraitNode,
    kind_of,
    leaves,
    spec_of,
)
from rules.sql import TRACK

log = logging.getLogger(__name__)

NUMBER_TYPES = frozenset({"Int64", "UInt64", "Float64"})
TEXT_TYPES = frozenset({"String"})
BOOL_TYPES = frozenset({"Bool"})

# Per event name of the kept history: each top-level property with the types it was seen as.
# Only the named events are read, and of them only their properties' paths and types.
HEARD = f"""
SELECT event, distinctJSONPathsAndTypes(properties)
FROM events
WHERE {TRACK} AND timestamp > fromUnixTimestamp64Milli({{since:Int64}})
  AND event IN {{names:Array(String)}}
GROUP BY event
"""
# Every trait profiles were given (identify), with the types it was seen as: traits are kept
# for ever, so all of them.
TRAITS = """
SELECT distinctJSONPathsAndTypes(traits) FROM events WHERE type = 'identify'
"""
# Of one trait: which of the text values asked were ever given, and the commonest ones.
TRAIT_VALUES = """
SELECT groupUniqArrayIf(v, has({{asked:Array(String)}}, v)), topK(200)(v)
FROM (SELECT traits.`{trait}`.:String AS v FROM events
      WHERE type = 'identify' AND v IS NOT NULL)
"""
# Whether any event told a time zone (`context.timezone`): server-side SDKs often do not.
ZONES_TOLD = """
SELECT 1 FROM events WHERE ifNull(context.timezone.:String, '') != '' LIMIT 1
"""
# Of one event's text property in the kept history: which of the values asked were seen, and
# the most common ones (to say which was likely meant). The property's name is checked by the
# definition's grammar (a letter or `_`, then letters, digits, `_`).
VALUES = """
SELECT groupUniqArrayIf(v, has({{asked:Array(String)}}, v)), topK(200)(v)
FROM (SELECT properties.`{property}`.:String AS v FROM events
      WHERE {track} AND timestamp > fromUnixTimestamp64Milli({{since:Int64}})
        AND event = {{event:String}} AND v IS NOT NULL)
"""
NAMES = f"""
SELECT DISTINCT event FROM events
WHERE {TRACK} AND timestamp > fromUnixTimestamp64Milli({{since:Int64}})
"""


@dataclass(frozen=True)
class Heard:
    """What the kept history holds of the events a definition names."""

    days: int
    names: frozenset[str]  # every track event name received
    properties: dict[str, dict[str, frozenset[str]]]  # event -> property -> its types
    traits: dict[str, frozenset[str]] = field(default_factory=dict)  # trait -> its types
    zones_told: bool = True  # an event told a time zone
    # (event, text property) -> the values filters ask for that were seen, and common ones
    values: dict[tuple[str, str], tuple[frozenset[str], tuple[str, ...]]] = field(
        default_factory=dict
    )
    # trait -> the text values `==` asks for that were given, and common ones
    trait_values: dict[str, tuple[frozenset[str], tuple[str, ...]]] = field(default_factory=dict)


def checked(
    warehouse: Warehouse, root: Node, history_days: int, now: int,
    disabled: frozenset[str] = frozenset(),
) -> list[dict[str, str]]:  # fmt: skip
    """The tree's hints (`disabled`: the audiences that are, so have no members); or one
    saying the warehouse could not be asked (they are advice: what is saved or previewed goes
    on without them)."""
    try:
        found = heard(warehouse, root, history_days, now)
    except Exception as error:
        log.warning("hints: the warehouse did not answer: %s", error)
        return [{"path": "root", "hint": "not checked against the kept history: the warehouse "
                 f"did not answer ({type(error).__name__})"}]  # fmt: skip
    return hints(root, found, disabled)


def heard(warehouse: Warehouse, root: Node, history_days: int, now: int) -> Heard:
    """What the warehouse holds of what the tree names: the kept history's event names, the
    properties of those named and the text values asked of them, the traits named and the
    text values asked of them, whether any event told a time zone."""
    since = now - history_days * DAY_MS
    names = frozenset(row[0] for row in warehouse.query_rows(NAMES, {"since": since}))
    priced = any(isinstance(leaf, CartNode) and leaf.cart.by_value for _, leaf in leaves(root))
    wanted = {ref.event for _, ref in references(root)} | ({PRODUCT_ADDED} if priced else set())
    named = sorted(wanted & names)
    properties: dict[str, dict[str, frozenset[str]]] = {}
    if named:
        for event, paths in warehouse.query_rows(HEARD, {"since": since, "names": named}):
            properties[event] = top_level(paths)
    values = {(event, prop): _seen(warehouse, VALUES.format(property=prop, track=TRACK),
                                   {"asked": sorted(asked), "since": since, "event": event})
              for (event, prop), asked in sorted(_asked(root, names).items())}  # fmt: skip
    traits: dict[str, frozenset[str]] = {}
    named_traits = [leaf.trait for _, leaf in leaves(root) if isinstance(leaf, TraitNode)]
    if named_traits:
        for (paths,) in warehouse.query_rows(TRAITS):
            traits = top_level(paths)
    asked_traits: dict[str, set[str]] = {}
    for trait in named_traits:
        if trait.op == "==" and isinstance(trait.value, str) and trait.name in traits:
            asked_traits.setdefault(trait.name, set()).add(trait.value)
    trait_values = {name: _seen(warehouse, TRAIT_VALUES.format(trait=name),
                                {"asked": sorted(texts)})
                    for name, texts in sorted(asked_traits.items())}  # fmt: skip
    told = not any(isinstance(leaf, TimeZoneNode) for _, leaf in leaves(root)) or bool(
        warehouse.query_rows(ZONES_TOLD))  # fmt: skip
    return Heard(history_days, names, properties, traits, told, values, trait_values)


def _seen(
    warehouse: Warehouse, sql: str, parameters: dict[str, Any]
) -> tuple[frozenset[str], tuple[str, ...]]:
    """Which of the values asked were seen, and the commonest ones (`VALUES`)."""
    [(seen, common)] = warehouse.query_rows(sql, parameters)
    return frozenset(seen), tuple(common)


def _asked(root: Node, names: frozenset[str]) -> dict[tuple[str, str], set[str]]:
    """The text values `==` and `in` filters ask of each received event's properties."""
    asked: dict[tuple[str, str], set[str]] = {}
    for _, ref in references(root):
        for where in ref.where if ref.event in names else []:
            if where.op in ("==", "in"):
                texts = [v for v in _listed(where.value) if isinstance(v, str)]
                if texts:
                    asked.setdefault((ref.event, where.property), set()).update(texts)
    return asked


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def top_level(paths: dict[str, list[str]]) -> dict[str, frozenset[str]]:
    """Each top-level property's types; one with paths below it is an object (a definition
    compares only scalars)."""
    found: dict[str, set[str]] = {}
    for path, types in paths.items():
        name, nested, _ = path.partition(".")
        found.setdefault(name, set()).update(["Object"] if nested else types)
    return {name: frozenset(types) for name, types in found.items()}


def references(root: Node) -> list[tuple[str, EventRef]]:
    """Every event the tree's conditions name, with the path of its node."""
    return [found for path, leaf in leaves(root) for found in _named(path, leaf)]


def _named(path: str, leaf: Leaf) -> list[tuple[str, EventRef]]:
    spec, at = spec_of(leaf), f"{path}.{kind_of(leaf)}"
    if isinstance(spec, NotFollowedBy):
        return [(at, spec), (f"{at}.then", spec.then)]
    if isinstance(spec, EventRef):
        return [(at, spec)]
    if isinstance(spec, OutOfStock):
        return [(f"{at}.events[{i}]", EventRef(event=event)) for i, event in enumerate(spec.events)]
    return []


def hints(root: Node, found: Heard, disabled: frozenset[str] = frozenset()) -> list[dict[str, str]]:
    """The tree's conditions that what was received says can never hold (or count), and
    memberships of `disabled` audiences (no one is a member), each `{"path", "hint"}`, in the
    tree's order."""
    out: list[tuple[str, str | None]] = []
    for path, leaf in leaves(root):
        if isinstance(leaf, MemberOfNode) and leaf.member_of.audience in disabled:
            out.append((f"{path}.member_of.audience", f"`{leaf.member_of.audience}` is "
                        "disabled: no one is a member of it until it is enabled"))  # fmt: skip
        if isinstance(leaf, TraitNode):
            out.append(_trait(path, leaf.trait, found))
        elif isinstance(leaf, TimeZoneNode) and not found.zones_told:
            out.append((f"{path}.time_zone", "no event told a time zone (`context.timezone`, "
                        "which browser SDKs send and most server ones do not): no profile has "
                        "one"))  # fmt: skip
        elif isinstance(leaf, CartNode) and PRODUCT_ADDED not in found.names:
            out.append((f"{path}.cart", f"no `{PRODUCT_ADDED}` event within the kept "
                        f"{found.days} days: the cart counts none (the e-commerce spec's names "
                        f"are read: {', '.join(sorted(CART_EVENTS))})"))  # fmt: skip
        elif isinstance(leaf, OrdersNode) and ORDER_COMPLETED not in found.names:
            out.append((f"{path}.orders", f"no `{ORDER_COMPLETED}` event within the kept "
                        f"{found.days} days: orders are counted from it (the e-commerce "
                        "spec's name)"))  # fmt: skip
        elif isinstance(leaf, CartNode) and leaf.cart.by_value:
            prices = _property(PRODUCT_ADDED, "price", found.properties.get(PRODUCT_ADDED, {}),
                               NUMBER_TYPES)  # fmt: skip
            out.append((f"{path}.cart.value", prices))
        for at, ref in _named(path, leaf):
            out.extend(_event(at, ref, found))
    return [{"path": path, "hint": hint} for path, hint in out if hint]


def _event(at: str, ref: EventRef, found: Heard) -> list[tuple[str, str | None]]:
    """The hints of one event a condition names (at `at`), and of its properties."""
    if ref.event not in found.names:
        hint = f"no `{ref.event}` event within the kept {found.days} days"
        return [(at if at.endswith("]") else f"{at}.event", hint + _meant(ref.event, found.names))]
    seen = found.properties.get(ref.event, {})
    out: list[tuple[str, str | None]] = []
    for i, where in enumerate(ref.where):
        value = _listed(where.value)
        # `!=` holds for a value of another type: only a property never there is a hint.
        wanted = (NUMBER_TYPES if where.op in NUMERIC else None if where.op == "!="
                  else _types_of(value))  # fmt: skip
        problem = _property(ref.event, where.property, seen, wanted)
        if problem:
            out.append((f"{at}.where[{i}].property", problem))
        elif where.op in ("==", "in") and (ref.event, where.property) in found.values:
            values = found.values[ref.event, where.property]
            out.append((f"{at}.where[{i}].value", _value(ref.event, where.property, value, values)))
    if isinstance(ref, Performed) and ref.same:
        out.append((f"{at}.same", _property(ref.event, ref.same, seen, TEXT_TYPES)))
    if isinstance(ref, Aggregate):
        out.append((f"{at}.property", _property(ref.event, ref.property, seen, NUMBER_TYPES)))
    return out


def _property(
    event: str, name: str, seen: dict[str, frozenset[str]], wanted: frozenset[str] | None
) -> str | None:
    """Why a condition on the event's property never matches, if what was seen says so
    (`wanted`: the types it can match; None: any)."""
    types = seen.get(name)
    if types is None:
        return f"no `{event}` event within the kept history has `{name}`{_meant(name, seen)}"
    if wanted is not None and not types & wanted:
        return (f"`{name}` of `{event}` was only ever {_kinds(types)}: compared with "
                f"{_kinds(wanted)} it never matches")  # fmt: skip
    return None


def _value(
    event: str, name: str, asked: list[Any], values: tuple[frozenset[str], tuple[str, ...]]
) -> str | None:
    """A text value (or every one of an `in` list) no such event had for the property."""
    seen, common = values
    texts = [v for v in asked if isinstance(v, str)]
    if not texts or any(v in seen for v in texts) or len(texts) < len(asked):
        return None  # one of them was seen (or a number, which the types judged)
    listed = ", ".join(f"`{v}`" for v in texts)
    meant = _meant(texts[0], common) if len(texts) == 1 else ""
    return f"no `{event}` event within the kept history has `{name}` {listed}{meant}"


def _trait(path: str, trait: Trait, found: Heard) -> tuple[str, str | None]:
    """A trait no profile was given, of a type the value never matches, or (`==`) a text
    value no profile was given."""
    name, types = trait.name, found.traits.get(trait.name)
    if types is None:
        return f"{path}.trait.name", f"no profile was given the trait `{name}`" + _meant(
            name, found.traits)  # fmt: skip
    # `!=` as `==`: a trait of another type than the value never matches either way.
    wanted = NUMBER_TYPES if trait.op in NUMERIC else _types_of([trait.value])
    if not types & wanted:
        kinds = f"only ever {_kinds(types)}: compared with {_kinds(wanted)} it never matches"
        return f"{path}.trait.name", f"the trait `{name}` was {kinds}"
    seen, common = found.trait_values.get(name, (None, ()))
    if trait.op == "==" and seen is not None and trait.value not in seen:
        given = f"`{name}` `{trait.value}`{_meant(str(trait.value), common)}"
        return f"{path}.trait.value", f"no profile was given the trait {given}"
    return path, None


def _types_of(values: list[Any]) -> frozenset[str]:
    """The stored types a filter's values can equal (a number matches any numeric type)."""
    types: set[str] = set()
    for value in values:
        if isinstance(value, bool):
            types |= BOOL_TYPES
        elif isinstance(value, str):
            types |= TEXT_TYPES
        else:
            types |= NUMBER_TYPES
    return frozenset(types)


def _kinds(types: frozenset[str]) -> str:
    return " or ".join(sorted({_kind(t) for t in types}))


def _kind(stored: str) -> str:
    if stored in NUMBER_TYPES:
        return "a number"
    if stored in TEXT_TYPES:
        return "text"
    if stored in BOOL_TYPES:
        return "true or false"
    return "a list" if stored.startswith("Array") else "an object"


def _meant(name: str, known: Any) -> str:
    """The known name likely meant: the same but for case, else the closest by spelling."""
    by_lower = {k.lower(): k for k in sorted(known, reverse=True)}
    close = difflib.get_close_matches(name.lower(), sorted(by_lower), n=1, cutoff=0.75)
    return f" (did you mean `{by_lower[close[0]]}`?)" if close else ""
