"""The two paths agree: for generated shoppers (events arriving out of order and late,
anonymous visitors merged by a later identify) and generated definitions, the members the
real-time path keeps (Redis, durable_rules, the schedule) are the members the SQL compiler
finds in ClickHouse at the same instant, also after time passes with no event."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from cdp.catalog import Product
from cdp.settings import Settings
from cdp.storage import Warehouse
from rules.membership import candidates_at
from rules.worker import HOT_PAUSE_MS
from tests.rules.shop import HOUR_MS, Shop, days

EVENTS = ["Product Viewed", "Product Added", "Product Removed", "Order Completed"]
WINDOWS = ["PT1H", "PT6H", "P1D", "P3D", "P7D"]

where = st.sampled_from([
    {"property": "category", "value": "Shoes"},
    {"property": "category", "op": "!=", "value": "Shoes"},
    {"property": "price", "op": ">=", "value": 10},
    {"property": "product_id", "op": "in", "value": ["p1", "p3"]},
    {"property": "price", "op": "!=", "value": 10},
    {"property": "price", "op": "in", "value": [5, "10"]},
    {"property": "category", "op": "in", "value": ["Shoes", 5]},
    {"property": "flag", "value": True},
    {"property": "flag", "op": "!=", "value": False},
])  # fmt: skip
wheres = st.lists(where, max_size=1)
others = st.sampled_from([
    {"cart": {"op": ">", "units": 0}},
    {"cart": {"op": ">=", "units": 2}},
    {"cart": {"op": ">=", "value": 20}},
    {"cart": {"op": "<", "value": 15.5}},
    {"bucket": {"salt": "holdout", "below": 50}},
    {"trait": {"name": "plan", "value": "pro"}},
    {"trait": {"name": "age", "op": ">=", "value": 30}},
    {"member_of": {"audience": "base"}},
    {"out_of_stock": {"within": "P1D"}},
    {"time_zone": {"in": ["Europe/Berlin"]}},
    {"time_zone": {"in": ["America/", "Asia/Tokyo"]}},
    {"orders": {"count": 1}},
    {"orders": {"op": "==", "count": 2}},
])  # fmt: skip


def tree_of(windows: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Definitions whose windows are among these."""
    performed = st.builds(
        lambda event, within, op, times, same, w: {"performed": {
            "event": event, "within": within, "op": op, "times": times, "where": w,
            **({"same": "category"} if same else {})}},
        st.sampled_from(EVENTS), st.sampled_from(windows),
        st.sampled_from([">=", "<=", "==", "<"]), st.integers(0, 3), st.booleans(), wheres,
    )  # fmt: skip
    not_followed_by = st.builds(
        lambda event, then, wait, within: {"not_followed_by": {
            "event": event, "then": {"event": then}, "wait": wait,
            **({"within": within} if within else {})}},
        st.sampled_from(EVENTS), st.sampled_from(EVENTS),
        st.sampled_from(["PT30M", "PT1H", "P1D"]), st.sampled_from([None, "P1D", "P3D"]),
    )  # fmt: skip
    last_performed = st.builds(
        lambda event, op, ago: {"last_performed": {"event": event, "op": op, "ago": ago}},
        st.sampled_from(EVENTS), st.sampled_from([">=", "<"]), st.sampled_from(windows),
    )  # fmt: skip
    aggregate = st.builds(
        lambda event, prop, fn, within, op, value: {"aggregate": {
            "event": event, "property": prop, "fn": fn, "within": within, "op": op,
            "value": value}},
        st.sampled_from(["Order Completed", "Product Added"]),
        st.sampled_from(["revenue", "price"]),
        st.sampled_from(["sum", "count", "avg", "min", "max"]),
        st.sampled_from(windows), st.sampled_from([">=", "<", "=="]),
        st.sampled_from([0, 10, 20.5, 30]),
    )  # fmt: skip
    leaf = st.one_of(performed, not_followed_by, last_performed, aggregate, others)
    return st.recursive(
        leaf,
        lambda children: st.one_of(
            st.lists(children, min_size=1, max_size=3).map(lambda c: {"and": c}),
            st.lists(children, min_size=1, max_size=3).map(lambda c: {"or": c}),
            children.map(lambda c: {"not": c}),
        ),
        max_leaves=4,
    )


tree = tree_of(WINDOWS)


def examples(count: int) -> Any:
    """Hypothesis settings for these tests: each example runs the whole pipeline (a shop per
    example, under the fixtures' Valkey and ClickHouse), so no deadline."""
    return hypothesis_settings(
        max_examples=count, deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )  # fmt: skip


def event_of(days_back: float) -> st.SearchStrategy[dict[str, Any]]:
    """Events that happened up to so many days back, and some dated ahead (a device's clock
    off, a server sending a time of its own): those count when their time comes."""
    return st.fixed_dictionaries({
        "who": st.integers(0, 2),
        "event": st.sampled_from(EVENTS),
        "before": st.one_of(
            st.integers(0, days(days_back) // 60_000),
            st.integers(-days(2) // 60_000, -1),
        ).map(lambda minutes: minutes * 60_000),
        "category": st.sampled_from(["Shoes", "Hats", None]),
        "product_id": st.sampled_from(["p1", "p2", "p3"]),
        "price": st.sampled_from([5, 10, 20.5, 10.0, "10", True]),  # typed as JSON has them
        "flag": st.sampled_from([True, False, "true", 1, None]),
        "quantity": st.sampled_from([1, 2, None]),
        "revenue": st.sampled_from([10, 25.5]),
        "tz": st.sampled_from([None, "Europe/Berlin", "America/New_York", "Asia/Tokyo",
                               "Mars/Olympus"]),
        "bot": st.sampled_from([False, False, False, True]),  # a crawler's: not counted
    })  # fmt: skip


event = event_of(8)
identify = st.fixed_dictionaries({
    "who": st.integers(0, 2), "user": st.sampled_from(["u1", "u2"]),
    "before": st.integers(-days(1) // 60_000, days(8) // 60_000).map(lambda m: m * 60_000),
    "plan": st.sampled_from(["pro", "free"]), "age": st.sampled_from([25, 40, "forty"]),
})  # fmt: skip


def send_all(shop: Shop, names: list[str], events: list[dict[str, Any]],
             identifies: list[dict[str, Any]]) -> None:  # fmt: skip
    for e in events:
        properties = {k: e[k] for k in ("category", "product_id", "price", "quantity", "revenue",
                                        "flag") if e[k] is not None}  # fmt: skip
        shop.track(names[e["who"]], e["event"], at=shop.now - e["before"], time_zone=e["tz"],
                   bot=e.get("bot", False), **properties)  # fmt: skip
    for i in identifies:
        # Identifies a millisecond apart at least: traits set at the very same moment are
        # a tie that each path may break its own way.
        shop.identify(names[i["who"]], f"{names[0]}-{i['user']}", at=shop.now - i["before"] - 1,
                      plan=i["plan"], age=i["age"])  # fmt: skip


@examples(30)
@given(
    root=tree,
    events=st.lists(event, min_size=1, max_size=10),
    identifies=st.lists(identify, max_size=2, unique_by=lambda i: i["before"]),
    later=st.lists(st.sampled_from([HOUR_MS // 2, HOUR_MS, days(1), days(2)]), max_size=2),
)
def test_real_time_and_sql_agree(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse,
    root: dict[str, Any], events: list[dict[str, Any]], identifies: list[dict[str, Any]],
    later: list[int],
) -> None:  # fmt: skip
    namespace = "h" + uuid.uuid4().hex[:10]
    example = settings.model_copy(update={"redis_prefix": namespace})
    with Shop(example, redis_client, warehouse) as shop:
        check(shop, namespace, root, events, identifies, later)


@examples(40)
@given(
    root=tree_of(["PT1H", "P1D", "P3D"]),
    events=st.lists(event_of(4), min_size=1, max_size=10),
    identifies=st.lists(identify, max_size=2, unique_by=lambda i: i["before"]),
    later=st.lists(
        st.sampled_from([HOUR_MS, days(1), days(2), days(3)]), min_size=1, max_size=3
    ),  # fmt: skip
)
def test_real_time_and_sql_agree_as_events_leave_the_kept_history(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse,
    root: dict[str, Any], events: list[dict[str, Any]], identifies: list[dict[str, Any]],
    later: list[int],
) -> None:  # fmt: skip
    """The same, with 4 days of history kept and events within them: as time passes with
    no event, what grows older than 4 days is forgotten by both paths at once."""
    namespace = "k" + uuid.uuid4().hex[:10]
    example = settings.model_copy(update={"redis_prefix": namespace, "history_days": 4})
    with Shop(example, redis_client, warehouse) as shop:
        shop.now = int(time.time() * 1000)  # the profile script keeps the days to its clock
        check(shop, namespace, root, events, identifies, later)


# Carts: adds, removals and orders of two products within seconds of each other (ties of the
# same millisecond among them), prices of every JSON type or none.
cart_move = st.fixed_dictionaries({
    "who": st.integers(0, 2),
    "event": st.sampled_from(["Product Added", "Product Added", "Product Removed",
                              "Order Completed"]),
    "before": st.one_of(st.integers(0, days(3) // 60_000),
                        st.integers(-days(1) // 60_000, -1)).map(lambda m: m * 60_000),
    "category": st.none(), "flag": st.none(), "revenue": st.just(10), "tz": st.none(),
    "product_id": st.sampled_from(["p1", "p2"]),
    "price": st.sampled_from([5, 10, 20.5, 10.0, "10", True, None]),
    "quantity": st.sampled_from([1, 2, None]),
})  # fmt: skip


@examples(60)
@given(
    root=st.sampled_from([
        {"cart": {"op": ">=", "value": 20}}, {"cart": {"op": "==", "value": 30}},
        {"not": {"cart": {"op": ">", "value": 10}}}, {"cart": {"op": ">=", "units": 2}},
    ]),
    events=st.lists(cart_move, min_size=1, max_size=12),
    later=st.lists(st.sampled_from([HOUR_MS, days(1), days(2)]), max_size=2),
)  # fmt: skip
def test_real_time_and_sql_agree_on_carts(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse,
    root: dict[str, Any], events: list[dict[str, Any]], later: list[int],
) -> None:  # fmt: skip
    """The cart's units and value (each product's units at the price of its latest add or
    removal that has a numeric one), which the trees above draw too seldom to try hard."""
    namespace = "c" + uuid.uuid4().hex[:10]
    example = settings.model_copy(update={"redis_prefix": namespace})
    with Shop(example, redis_client, warehouse) as shop:
        check(shop, namespace, root, events, [], later)


def check(shop: Shop, namespace: str, root: dict[str, Any], events: list[dict[str, Any]],
          identifies: list[dict[str, Any]], later: list[int]) -> None:  # fmt: skip
    shop.catalog.upsert([Product(id="p3", name="Sold out", stock=0)])
    # Another audience the generated one may reference: layers must order them.
    shop.define("base", {"performed": {"event": "Product Viewed", "within": "P1D", "times": 2}})
    shop.define("generated", root)
    names = [f"{namespace}-{i}" for i in range(3)]
    send_all(shop, names, events, identifies)
    shop.settle()
    profiles = {p for name in names if (p := shop.store.find("a", name))}
    assert profiles
    # What a backfill of this definition would decide now: everyone it holds for at any
    # moment from now on with no new event must be among them.
    tree = shop.audiences.get("generated").definition.root
    candidates = set(candidates_at(shop.sources, tree, shop.now))
    for step in [0, *later]:
        shop.advance(step)
        real_time = shop.members("generated") & profiles
        in_sql = shop.sql_members("generated") & profiles
        assert real_time == in_sql, repr((root, step, events, identifies, shop.changes()))
        assert in_sql <= candidates, repr((root, step, events, identifies))


def test_a_profile_past_the_history_cap_is_judged_alike(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """A bot's profile: real time keeps its newest `CDP_HISTORY_EVENTS`, and SQL counts the
    same ones, also where the cut falls among events of the very same millisecond (which
    ones stay then is the message ids' order), the events coming in calls of any size."""
    namespace = "cap" + uuid.uuid4().hex[:8]
    example = settings.model_copy(update={"redis_prefix": namespace, "history_events": 100})
    with Shop(example, redis_client, warehouse) as shop:
        thresholds = {f"signed-up-{n}": n for n in (1, 10, 14, 16, 20)}
        for audience, n in thresholds.items():
            shop.define(audience, {"performed": {"event": "Signed Up", "within": "P7D",
                                                 "times": n}})  # fmt: skip
        shop.define("viewed-100", {"performed": {"event": "Product Viewed", "within": "P7D",
                                                 "times": 100}})  # fmt: skip
        shop.define("viewed-80", {"performed": {"event": "Product Viewed", "within": "P7D",
                                                "times": 80}})  # fmt: skip
        shop.define("three-orders", {"orders": {"count": 3}})
        shop.define("ordered-in-history", {"performed": {"event": "Order Completed",
                                                         "within": "P7D", "times": 1}})  # fmt: skip
        bot = f"{namespace}-bot"
        tied = shop.now - days(1)
        for i in range(3):  # the oldest of all: gone from the history, yet orders placed
            shop.track(bot, "Order Completed", at=tied - days(2) + i)
        for i in range(20):  # the oldest, gone from the history whatever the order
            shop.track(bot, "Signed Up", at=tied - days(1) + i)
        for _ in range(20):  # 40 at one millisecond, of which 30 stay
            shop.track(bot, "Signed Up", at=tied)
            shop.track(bot, "Product Viewed", at=tied)
        shop.settle()
        for i in range(70):
            shop.track(bot, "Product Viewed", at=tied + 1 + i)
            if i % 25 == 0:  # calls of several sizes
                shop.settle()
        shop.settle()
        profile = shop.profile_of(bot)
        inputs = shop.store.audience_inputs(profile, 0)
        assert inputs is not None and len(inputs.history) == 100
        kept = sum(event == "Signed Up" for _, _, event, _ in inputs.history)
        assert 0 < kept < 20
        for audience in [*thresholds, "viewed-100", "viewed-80", "three-orders",
                         "ordered-in-history"]:  # fmt: skip
            assert shop.members(audience) == shop.sql_members(audience), audience
        assert shop.members("signed-up-1") == {profile}
        assert shop.members("viewed-100") == set()  # 90 kept of the 110 sent
        assert shop.members("viewed-80") == {profile}
        assert shop.members("three-orders") == {profile}
        assert shop.members("ordered-in-history") == set()


@examples(25)
@given(
    root=tree,
    calls=st.lists(st.lists(event, min_size=1, max_size=4), min_size=2, max_size=5),
    gaps=st.lists(st.sampled_from([0, 100, 400]), min_size=5, max_size=5),
)
def test_real_time_and_sql_agree_once_put_off_events_are_decided(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse,
    root: dict[str, Any], calls: list[list[dict[str, Any]]], gaps: list[int],
) -> None:  # fmt: skip
    """Profiles with long histories (here past 1 event) are evaluated at most once a second:
    events sent in calls within the second are put off to its end. Once it has passed, both
    paths agree, whatever was put off."""
    namespace = "p" + uuid.uuid4().hex[:10]
    example = settings.model_copy(update={"redis_prefix": namespace})
    with Shop(example, redis_client, warehouse) as shop:
        shop.worker = shop.audience_worker(hot_events=1)
        shop.catalog.upsert([Product(id="p3", name="Sold out", stock=0)])
        shop.define("base", {"performed": {"event": "Product Viewed", "within": "P1D", "times": 2}})
        shop.define("generated", root)
        names = [f"{namespace}-{i}" for i in range(3)]
        for call, gap in zip(calls, gaps, strict=False):
            shop.now += gap
            send_all(shop, names, call, [])
            shop.settle()
        shop.advance(HOT_PAUSE_MS)
        profiles = {p for name in names if (p := shop.store.find("a", name))}
        real_time = shop.members("generated") & profiles
        assert real_time == shop.sql_members("generated") & profiles, repr((root, calls, gaps))
