"""The audience definition language: a JSON tree validated by pydantic. Each node is an
object with one key naming its kind (`{"and": [...]}`, `{"performed": {...}}`); the tree
is the one source that the evaluator (`rules/conditions.py`), the durable_rules printer
(`rules/engine.py`) and the ClickHouse printer (`rules/sql.py`) read.

Times are rolling and in event time, to the millisecond: a window `P7D` at `now` is
`(now - 7 days, now]`, so an event counts from when it happened, not from when it arrived.
Durations are ISO 8601 (`PT1H`, `P7D`; weeks, days, hours, minutes, seconds)."""

from __future__ import annotations

import re
from datetime import timedelta
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    ValidationError,
    model_validator,
)

from cdp.profiles.change import TIME_ZONES

MAX_NODES = 200
MAX_DEPTH = 12
MAX_DURATION_MS = 3660 * 86_400_000

_DURATION = re.compile(
    r"^P(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)


def parse_duration(value: Any) -> int:
    """An ISO 8601 duration as milliseconds; months and years are refused (their length
    varies: say `P30D`)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise ValueError("a duration is an ISO 8601 string such as PT1H or P7D")
    found = _DURATION.match(value)
    if not found or value in ("P", "PT") or value.endswith("T"):
        raise ValueError(
            f"{value!r} is not an ISO 8601 duration of weeks, days, hours, minutes or "
            "seconds (such as PT1H or P7D; months and years vary in length: use days)"
        )
    parts = {name: int(number) for name, number in found.groupdict(default="0").items()}
    try:
        ms = int(timedelta(**parts).total_seconds() * 1000)
    except OverflowError:
        ms = MAX_DURATION_MS + 1
    if ms > MAX_DURATION_MS:
        raise ValueError(f"{value!r} is longer than ten years")
    return ms


def format_duration(ms: int) -> str:
    seconds = ms // 1000
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    time = "".join(f"{n}{unit}" for n, unit in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
    return "P" + (f"{days}D" if days else "") + (f"T{time}" if time else "") if ms else "PT0S"


# Milliseconds inside, the ISO text outside.
Duration = Annotated[
    int,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
    Field(gt=0, json_schema_extra={"type": "string", "examples": ["PT1H", "P7D"]}),
]

Name = Annotated[str, Field(min_length=1, max_length=200)]
Property = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
Scalar = str | float | bool
Compare = Literal[">=", ">", "<=", "<", "==", "!="]

# Properties the Segment e-commerce spec defines as text: compared with a number they never
# match, so such a filter is a mistake worth a 422.
TEXT_PROPERTIES = frozenset({
    "product_id", "sku", "category", "name", "brand", "variant", "currency", "url",
    "image_url", "coupon", "order_id", "cart_id", "checkout_id", "list_id", "query",
    "affiliation", "wishlist_id", "promotion_id", "creative", "position_name", "title", "path",
    "referrer", "search",
})  # fmt: skip
NUMERIC = frozenset({">", ">=", "<", "<="})


class Strict(BaseModel):
    # No infinity or NaN: a stored definition is JSON, which has neither (and the engine and
    # ClickHouse would each compare them their own way).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Where(Strict):
    """A filter on one of the event's top-level properties."""

    property: Property
    op: Literal["==", "!=", ">", ">=", "<", "<=", "in"] = "=="
    value: Scalar | list[str | float] = Field(description="a list for `in`")

    @model_validator(mode="after")
    def _consistent(self) -> Where:
        if self.op == "in" and not isinstance(self.value, list):
            raise ValueError("`in` takes a list of values")
        if self.op != "in" and isinstance(self.value, list):
            raise ValueError(f"`{self.op}` takes one value; a list goes with `in`")
        if self.op in NUMERIC:
            if isinstance(self.value, bool) or not isinstance(self.value, int | float):
                raise ValueError(f"`{self.op}` compares numbers: give a number")
            if self.property in TEXT_PROPERTIES:
                raise ValueError(
                    f"`{self.property}` is text in the e-commerce spec, never a number: "
                    f"`{self.op} {self.value}` would never match"
                )
        return self


class EventRef(Strict):
    event: Name
    where: list[Where] = Field(default_factory=list, max_length=20)

    @cached_property
    def selector(self) -> tuple[str, tuple[tuple[str, str, str], ...]]:
        """What the reference selects, as a key: equal for references that select alike."""
        return self.event, tuple((w.property, w.op, repr(w.value)) for w in self.where)


class Performed(EventRef):
    """The event happened `op times` within the window (optionally `same` value of a
    property: the largest count of any one value, e.g. the same category 3 times)."""

    within: Duration
    op: Compare = ">="
    times: int = Field(ge=0, le=1_000_000)
    same: Property | None = None


class NotFollowedBy(EventRef):
    """After the last `event` (within `within`), no `then` event since, for `wait` or
    more: added to cart, no order for an hour."""

    then: EventRef
    wait: Duration
    within: Duration | None = None


class LastPerformed(EventRef):
    """The time since the event last happened compared with `ago`; a profile that never
    did it is not matched (lapsed customers: `>=` P90D)."""

    op: Literal[">=", "<"] = ">="
    ago: Duration


class Aggregate(EventRef):
    """An aggregate of a numeric property of the events within the window (revenue);
    `avg`, `min` and `max` of no event match nothing."""

    property: Property
    fn: Literal["sum", "count", "avg", "min", "max"] = "sum"
    within: Duration
    op: Compare = ">="
    value: float


class Trait(Strict):
    """A trait the profile was given (identify), its latest value in event time."""

    name: Property
    op: Compare = "=="
    value: Scalar

    @model_validator(mode="after")
    def _numeric(self) -> Trait:
        if self.op in NUMERIC and (isinstance(self.value, bool | str)):
            raise ValueError(f"`{self.op}` compares numbers: give a number")
        return self


class Cart(Strict):
    """The cart: added less removed, per product, since the last order; its units, or with
    `value` its value (each product's units times its latest price in the cart)."""

    op: Compare = ">"
    # The measure not given is left out of the definition as shown and stored.
    units: int | None = Field(default=None, ge=0, le=1_000_000, description="default 0",
                              exclude_if=lambda v: v is None)  # fmt: skip
    value: float | None = Field(default=None, ge=0, le=1e12, description="instead of units",
                                exclude_if=lambda v: v is None)  # fmt: skip

    @model_validator(mode="after")
    def _one_measure(self) -> Cart:
        if self.units is not None and self.value is not None:
            raise ValueError("give `units` or `value`, not both")
        return self

    @property
    def by_value(self) -> bool:
        return self.value is not None

    @property
    def threshold(self) -> float | int:
        """What the cart's measure is compared with."""
        return self.value if self.value is not None else self.units or 0


class Orders(Strict):
    """The orders the profile ever placed: every `Order Completed` it was sent, however long
    ago (beyond the kept history: "never bought", "bought twice or more" over all time)."""

    op: Compare = ">="
    count: int = Field(ge=0, le=1_000_000_000)


class Consent(Strict):
    """Consent for a channel and purpose is granted now."""

    channel: Literal["email", "whatsapp", "sms", "push", "web"]
    purpose: Literal["marketing", "transactional", "analytics"] = "marketing"


class OutOfStock(Strict):
    """A product viewed or wishlisted within the window is out of stock now."""

    within: Duration
    events: list[Name] = Field(
        default_factory=lambda: ["Product Viewed", "Product Added to Wishlist"], min_length=1
    )


class TimeZone(Strict):
    """The profile's time zone (the IANA name its latest event in event time carried, as
    `context.timezone`) is one of these, or in one of these regions (`Europe/`)."""

    in_: list[Annotated[str, Field(min_length=2, max_length=64)]] = Field(
        alias="in", min_length=1, max_length=100, description="zones, or regions ending in /"
    )

    @model_validator(mode="after")
    def _known(self) -> TimeZone:
        for zone in self.in_:
            known = zone in TIME_ZONES if not zone.endswith("/") else any(
                z.startswith(zone) for z in TIME_ZONES)  # fmt: skip
            if not known:
                cased = {z.lower(): z for z in TIME_ZONES}.get(zone.lower())
                meant = f" (did you mean {cased!r}?)" if cased else ""
                raise ValueError(f"{zone!r} is neither an IANA time zone nor a region of them "
                                 f"(`Europe/Berlin`, `America/`){meant}")  # fmt: skip
        return self

    @cached_property
    def zones(self) -> frozenset[str]:
        return frozenset(zone for zone in self.in_ if not zone.endswith("/"))

    @cached_property
    def regions(self) -> tuple[str, ...]:
        return tuple(zone for zone in self.in_ if zone.endswith("/"))

    def holds(self, zone: str | None) -> bool:
        return zone is not None and (zone in self.zones or zone.startswith(self.regions))


class Bucket(Strict):
    """A stable random bucket 0..99 of the profile id and a salt below `below` (holdouts)."""

    salt: Annotated[str, Field(min_length=1, max_length=64)]
    below: int = Field(ge=0, le=100)


class MemberOf(Strict):
    audience: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


# The combinators, then one wrapper per leaf kind: `{"performed": {...}}`.


class And(Strict):
    and_: list[Node] = Field(alias="and", min_length=1, max_length=50)


class Or(Strict):
    or_: list[Node] = Field(alias="or", min_length=1, max_length=50)


class Not(Strict):
    not_: Node = Field(alias="not")


class PerformedNode(Strict):
    performed: Performed


class NotFollowedByNode(Strict):
    not_followed_by: NotFollowedBy


class LastPerformedNode(Strict):
    last_performed: LastPerformed


class AggregateNode(Strict):
    aggregate: Aggregate


class TraitNode(Strict):
    trait: Trait


class CartNode(Strict):
    cart: Cart


class OrdersNode(Strict):
    orders: Orders


class ConsentNode(Strict):
    consent: Consent


class OutOfStockNode(Strict):
    out_of_stock: OutOfStock


class TimeZoneNode(Strict):
    time_zone: TimeZone


class BucketNode(Strict):
    bucket: Bucket


class MemberOfNode(Strict):
    member_of: MemberOf


KINDS: dict[str, type[Strict]] = {
    "and": And, "or": Or, "not": Not, "performed": PerformedNode,
    "not_followed_by": NotFollowedByNode, "last_performed": LastPerformedNode,
    "aggregate": AggregateNode, "trait": TraitNode, "cart": CartNode, "consent": ConsentNode,
    "out_of_stock": OutOfStockNode, "bucket": BucketNode, "member_of": MemberOfNode,
    "time_zone": TimeZoneNode, "orders": OrdersNode,
}  # fmt: skip
Leaf = (PerformedNode | NotFollowedByNode | LastPerformedNode | AggregateNode | TraitNode
        | CartNode | ConsentNode | OutOfStockNode | BucketNode | MemberOfNode
        | TimeZoneNode | OrdersNode)  # fmt: skip


_KIND_OF: dict[type, str] = {model: kind for kind, model in KINDS.items()}


def _kind(value: Any) -> str | None:
    if isinstance(value, dict):
        keys = [key for key in value if key in KINDS]
        return keys[0] if len(keys) == 1 and len(value) == 1 else None
    for kind, model in KINDS.items():
        if isinstance(value, model):
            return kind
    return None


Node = Annotated[
    Annotated[And, Tag("and")] | Annotated[Or, Tag("or")] | Annotated[Not, Tag("not")]
    | Annotated[PerformedNode, Tag("performed")]
    | Annotated[NotFollowedByNode, Tag("not_followed_by")]
    | Annotated[LastPerformedNode, Tag("last_performed")]
    | Annotated[AggregateNode, Tag("aggregate")] | Annotated[TraitNode, Tag("trait")]
    | Annotated[CartNode, Tag("cart")] | Annotated[ConsentNode, Tag("consent")]
    | Annotated[OutOfStockNode, Tag("out_of_stock")] | Annotated[BucketNode, Tag("bucket")]
    | Annotated[MemberOfNode, Tag("member_of")] | Annotated[TimeZoneNode, Tag("time_zone")]
    | Annotated[OrdersNode, Tag("orders")],
    Discriminator(
        _kind,
        custom_error_type="node",
        custom_error_message="a node is an object with one key, one of: " + ", ".join(KINDS),
    ),
]  # fmt: skip
for _model in (And, Or, Not):
    _model.model_rebuild()


class Definition(Strict):
    """What is saved: an audience's name, its tree, and whether it is kept live."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]
    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: str = Field(default="", max_length=2000)
    enabled: bool = True
    root: Node


class InvalidDefinition(ValueError):
    """A definition that cannot be saved, with the path of each problem."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def path_of(location: tuple[int | str, ...]) -> str:
    """`root.and[2].performed.within` from pydantic's location, without its union tags (a
    tag is followed by the field of the same name)."""
    out = ""
    for i, part in enumerate(location):
        if isinstance(part, int):
            out += f"[{part}]"
        elif not (part in KINDS and i + 1 < len(location) and location[i + 1] == part):
            out += f".{part}" if out else part
    return out


def parse_node(data: Any, where: str = "root") -> Node:
    """The tree of a JSON value, or InvalidDefinition naming each bad node's path."""
    from pydantic import TypeAdapter

    try:
        node: Node = TypeAdapter(Node).validate_python(data)
    except ValidationError as error:
        raise InvalidDefinition([
            f"{path_of((where, *problem['loc']))}: {problem['msg'].removeprefix('Value error, ')}"
            for problem in error.errors(include_url=False)
        ]) from None  # fmt: skip
    check_shape(node, where)
    return node


def children(node: Node) -> list[tuple[str, Node]]:
    """The node's sub-trees with their path steps."""
    if isinstance(node, And):
        return [(f".and[{i}]", child) for i, child in enumerate(node.and_)]
    if isinstance(node, Or):
        return [(f".or[{i}]", child) for i, child in enumerate(node.or_)]
    if isinstance(node, Not):
        return [(".not", node.not_)]
    return []


def leaves(node: Node, path: str = "root") -> list[tuple[str, Leaf]]:
    """Every leaf with its path, left to right."""
    found = children(node)
    if not found:
        return [(path, node)]  # type: ignore[list-item]
    return [leaf for step, child in found for leaf in leaves(child, path + step)]


def check_shape(node: Node, where: str = "root") -> None:
    problems: list[str] = []
    count = 0

    def visit(n: Node, path: str, depth: int) -> None:
        nonlocal count
        count += 1
        if depth > MAX_DEPTH:
            problems.append(f"{path}: nested deeper than {MAX_DEPTH} levels")
            return
        for step, child in children(n):
            visit(child, path + step, depth + 1)

    visit(node, where, 1)
    if count > MAX_NODES:
        problems.append(f"{where}: more than {MAX_NODES} nodes")
    if problems:
        raise InvalidDefinition(problems)


def kind_of(leaf: Leaf) -> str:
    return _KIND_OF[type(leaf)]


def spec_of(leaf: Leaf) -> Any:
    return getattr(leaf, kind_of(leaf))


def windows(node: Node) -> list[tuple[str, str, int]]:
    """(path, field, milliseconds) of every duration that reaches back in history."""
    found = []
    for path, leaf in leaves(node):
        spec = spec_of(leaf)
        for field in ("within", "ago"):
            value = getattr(spec, field, None)
            if value:
                found.append((f"{path}.{kind_of(leaf)}.{field}", field, int(value)))
        if isinstance(spec, NotFollowedBy) and spec.within is None:
            continue
        if isinstance(spec, NotFollowedBy) and spec.wait > (spec.within or 0):
            found.append((f"{path}.not_followed_by.wait", "wait", spec.wait))
    return found


def references(node: Node) -> set[str]:
    return {spec_of(leaf).audience for _, leaf in leaves(node) if isinstance(leaf, MemberOfNode)}


def dump(node: Node) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(Node).dump_python(node, mode="json", by_alias=True, exclude_defaults=True)
