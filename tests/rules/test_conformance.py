"""The conformance table: events, clock moves, the members expected after each; run against
both paths (the real-time worker and the SQL compiler), which must both say the expected."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis

from cdp.settings import Settings
from cdp.storage import Warehouse
from tests.rules.shop import HOUR_MS, Shop, days

MIN = 60_000
V, A, R, ORDER = "Product Viewed", "Product Added", "Product Removed", "Order Completed"

# (name, definition, events as (who, event, ms before now, properties), steps as
# (ms the clock moves, who is a member then)).
CASES: list[tuple[str, dict[str, Any], list[tuple[str, str, int, dict[str, Any]]],
                  list[tuple[int, set[str]]]]] = [
    ("3 views in a day, the oldest slides out",
     {"performed": {"event": V, "within": "P1D", "times": 3}},
     [("ann", V, 23 * HOUR_MS, {}), ("ann", V, HOUR_MS, {}), ("ann", V, 0, {}),
      ("bob", V, 0, {})],
     [(0, {"ann"}), (HOUR_MS - 1, {"ann"}), (1, set())]),
    ("the same category twice; another category does not add up",
     {"performed": {"event": V, "within": "P7D", "times": 2, "same": "category"}},
     [("ann", V, 0, {"category": "Shoes"}), ("ann", V, MIN, {"category": "Shoes"}),
      ("bob", V, 0, {"category": "Shoes"}), ("bob", V, MIN, {"category": "Hats"})],
     [(0, {"ann"})]),
    ("a late event counts from when it happened",
     {"performed": {"event": V, "within": "PT1H", "times": 2}},
     [("ann", V, 0, {}), ("ann", V, 2 * HOUR_MS, {}), ("bob", V, 0, {}), ("bob", V, 10 * MIN, {})],
     [(0, {"bob"}), (50 * MIN - 1, {"bob"}), (1, set())]),
    ("an event dated ahead counts when its time comes; a shopper with only that is judged",
     {"not": {"performed": {"event": V, "within": "PT1H", "times": 1}}},
     [("ann", V, -30 * MIN, {}), ("bob", V, 2 * HOUR_MS, {})],
     [(0, {"ann", "bob"}), (30 * MIN - 1, {"ann", "bob"}), (1, {"bob"}),
      (HOUR_MS, {"ann", "bob"})]),
    ("at most once: nobody who never did it is left out",
     {"performed": {"event": ORDER, "within": "P30D", "op": "<=", "times": 1}},
     [("ann", ORDER, 0, {"revenue": 5}), ("ann", ORDER, MIN, {"revenue": 5}), ("bob", V, 0, {})],
     [(0, {"bob"})]),
    ("a filter on a number",
     {"performed": {"event": A, "within": "P1D", "times": 1,
                    "where": [{"property": "price", "op": ">=", "value": 100}]}},
     [("ann", A, 0, {"price": 120}), ("bob", A, 0, {"price": 80}), ("cy", A, 0, {"price": "120"})],
     [(0, {"ann"})]),
    ("browse abandonment: an hour after the last view, until an add",
     {"not_followed_by": {"event": V, "then": {"event": A}, "wait": "PT1H", "within": "P7D"}},
     [("ann", V, 30 * MIN, {}), ("bob", V, 30 * MIN, {}), ("bob", A, 10 * MIN, {})],
     [(0, set()), (30 * MIN - 1, set()), (1, {"ann"}), (days(7) - 30 * MIN, set())]),
    ("lapsed: ordered, not within the window",
     {"last_performed": {"event": ORDER, "op": ">=", "ago": "P1D"}},
     [("ann", ORDER, 23 * HOUR_MS, {}), ("bob", V, days(2), {})],
     [(0, set()), (HOUR_MS, {"ann"})]),
    ("recent: ordered within the window",
     {"last_performed": {"event": ORDER, "op": "<", "ago": "PT1H"}},
     [("ann", ORDER, 30 * MIN, {}), ("bob", V, 0, {})],
     [(0, {"ann"}), (30 * MIN, set())]),
    ("revenue over a window",
     {"aggregate": {"event": ORDER, "property": "revenue", "within": "P1D", "op": ">=",
                    "value": 100}},
     [("ann", ORDER, HOUR_MS, {"revenue": 60}), ("ann", ORDER, 0, {"revenue": 40.5}),
      ("bob", ORDER, 0, {"revenue": 99.99})],
     [(0, {"ann"}), (23 * HOUR_MS, set())]),
    ("revenues summing past the float range count as the largest",
     {"aggregate": {"event": ORDER, "property": "revenue", "within": "P1D", "op": ">=",
                    "value": 1e300}},
     [("ann", ORDER, MIN, {"revenue": 1e308}), ("ann", ORDER, 0, {"revenue": 1e308}),
      ("bob", ORDER, 0, {"revenue": 1e299})],
     [(0, {"ann"})]),
    ("average of nothing holds for nobody, even negated",
     {"not": {"aggregate": {"event": ORDER, "property": "revenue", "fn": "avg", "within": "P1D",
                            "op": "<", "value": 10}}},
     [("ann", ORDER, 0, {"revenue": 5}), ("bob", V, 0, {})],
     [(0, {"bob"})]),
    ("`!=` holds for another value, not for a missing or nested one",
     {"performed": {"event": V, "within": "P1D", "times": 1,
                    "where": [{"property": "tag", "op": "!=", "value": "x"}]}},
     [("ann", V, 0, {"tag": ["y"]}), ("bob", V, 0, {"tag": "y"}), ("cy", V, 0, {}),
      ("dee", V, 0, {"tag": "x"}), ("eve", V, 0, {"tag": 3})],
     [(0, {"bob", "eve"})]),
    ("the cart: added, removed, emptied by an order",
     {"cart": {"op": ">", "units": 0}},
     [("ann", A, 3 * MIN, {"product_id": "p1", "quantity": 2}),
      ("ann", R, 2 * MIN, {"product_id": "p1"}),
      ("bob", A, 3 * MIN, {"product_id": "p1"}), ("bob", R, 2 * MIN, {"product_id": "p1"}),
      ("cy", A, 3 * MIN, {"product_id": "p1"}), ("cy", ORDER, 2 * MIN, {})],
     [(0, {"ann"})]),
    ("the cart's value: each product's units at its latest price; a removal keeps its price",
     {"cart": {"op": ">=", "value": 50}},
     [("ann", A, 4 * MIN, {"product_id": "p1", "price": 10, "quantity": 2}),
      ("ann", A, 3 * MIN, {"product_id": "p1", "price": 15}),  # 3 at 15: 45
      ("ann", A, 2 * MIN, {"product_id": "p2", "price": 5.5}),  # 50.5
      ("bob", A, 3 * MIN, {"product_id": "p1", "price": 30, "quantity": 3}),
      ("bob", R, 2 * MIN, {"product_id": "p1", "price": 20}),  # 2 at 20: 40
      ("bob", A, MIN, {"product_id": "p3", "price": "99"}),  # a price as text: 0
      ("cy", A, 3 * MIN, {"product_id": "p1", "price": 60}), ("cy", ORDER, 2 * MIN, {}),
      ("dee", A, 3 * MIN, {"product_id": "p1", "price": 25, "quantity": 2}),
      ("dee", A, 2 * MIN, {"product_id": "p1"})],  # no price: 25 still, 3 units: 75
     [(0, {"ann", "dee"})]),
    ("the time zone of the latest event in event time that told a known one",
     {"time_zone": {"in": ["Europe/Berlin", "America/"]}},
     [("ann", V, 2 * MIN, {"time_zone": "Asia/Tokyo"}),
      ("ann", V, MIN, {"time_zone": "Europe/Berlin"}),
      ("bob", V, MIN, {"time_zone": "Europe/Berlin"}),
      ("bob", V, 2 * MIN, {"time_zone": "Asia/Tokyo"}),  # received later, happened before
      ("cy", V, MIN, {"time_zone": "America/New_York"}),  # in the region
      ("cy", V, 0, {"time_zone": "Mars/Olympus"}),  # not a zone: not kept
      ("dee", V, 0, {}), ("eve", V, 0, {"time_zone": "Europe/Paris"}),
      # Two told at the same moment: the greater name, in either order of arrival (views are
      # grouped before the profile script, adds each go alone).
      ("fay", V, MIN, {"time_zone": "Europe/Berlin"}), ("fay", V, MIN, {"time_zone": "Asia/Tokyo"}),
      ("gus", V, MIN, {"time_zone": "Asia/Tokyo"}), ("gus", V, MIN, {"time_zone": "Europe/Berlin"}),
      ("hal", A, MIN, {"time_zone": "Europe/Berlin", "product_id": "p1"}),
      ("hal", A, MIN, {"time_zone": "Asia/Tokyo", "product_id": "p1"}),
      ("ida", A, MIN, {"time_zone": "Asia/Tokyo", "product_id": "p1"}),
      ("ida", A, MIN, {"time_zone": "Europe/Berlin", "product_id": "p1"})],
     [(0, {"ann", "bob", "cy", "fay", "gus", "hal", "ida"})]),
    ("a crawler's events are not counted; a profile only crawlers sent events to is in none",
     {"or": [{"not_followed_by": {"event": V, "then": {"event": A}, "wait": "PT1H"}},
             {"not": {"performed": {"event": ORDER, "within": "P1D", "times": 1}}}]},
     [("ann", V, 2 * HOUR_MS, {}), ("ann", ORDER, HOUR_MS, {}),
      ("bot", V, 2 * HOUR_MS, {"bot": True}), ("bot", ORDER, HOUR_MS, {"bot": True}),
      ("cy", ORDER, HOUR_MS, {}), ("cy", V, 2 * HOUR_MS, {"bot": True}),  # a crawler's view
      ("dee", ORDER, HOUR_MS, {}), ("dee", A, MIN, {"bot": True})],  # in another's name
     [(0, {"ann"}), (days(1) - HOUR_MS, {"ann", "cy", "dee"})]),
    ("orders placed, ever; a crawler's are none",
     {"orders": {"op": ">=", "count": 2}},
     [("ann", ORDER, days(3), {}), ("ann", ORDER, -HOUR_MS, {}),  # one dated ahead counts too
      ("bob", ORDER, 0, {}), ("bob", ORDER, 0, {"bot": True}), ("cy", V, 0, {})],
     [(0, {"ann"}), (days(30), {"ann"})]),
    ("and, or, not together",
     {"and": [{"performed": {"event": V, "within": "P1D", "times": 1}},
              {"or": [{"not": {"performed": {"event": A, "within": "P1D", "times": 1}}},
                      {"trait": {"name": "plan", "value": "pro"}}]}]},
     [("ann", V, 0, {}), ("bob", V, 0, {}), ("bob", A, 0, {}), ("cy", A, 0, {})],
     [(0, {"ann"})]),
]  # fmt: skip


@pytest.mark.parametrize(("name", "root", "events", "steps"), CASES, ids=[c[0] for c in CASES])
def test_both_paths_give_the_expected_members(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse,
    name: str, root: dict[str, Any], events: list[tuple[str, str, int, dict[str, Any]]],
    steps: list[tuple[int, set[str]]],
) -> None:  # fmt: skip
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("case", root)
        tag = uuid.uuid4().hex[:6]
        for who, event, before, properties in events:
            shop.track(f"{who}-{tag}", event, at=shop.now - before, **properties)
        shop.settle()
        names = {shop.profile_of(f"{who}-{tag}"): who for who, *_ in events}
        for moved, expected in steps:
            shop.advance(moved)
            real_time = {names[p] for p in shop.members("case")}
            in_sql = {names[p] for p in shop.sql_members("case") if p in names}
            assert (real_time, in_sql) == (expected, expected), f"{name}, after {moved} ms"


def test_the_sql_at_a_past_moment_judges_the_profiles_there_were_then(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """A preview or audit at a past moment: a shopper whose every event was received later
    did not exist then (one dated ahead of its receipt exists from its receipt on)."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("no-order", {"not": {"performed": {"event": ORDER, "within": "P1D",
                                                       "times": 1}}})  # fmt: skip
        start = shop.now
        shop.track("early", V)  # received at start
        shop.track("ahead", V, at=start + days(1))  # received at start, dated a day ahead
        shop.now = start + HOUR_MS
        shop.track("late", V, at=start - HOUR_MS)  # dated before start, received after it
        shop.track("new", V)  # dated and received an hour after start
        shop.settle()
        names = {shop.profile_of(who): who for who in ("early", "ahead", "late", "new")}
        at_start = {names[p] for p in shop.sql_members("no-order", at=start) if p in names}
        assert at_start == {"early", "ahead", "late"}  # a late event counts from its time
        now = {names[p] for p in shop.sql_members("no-order") if p in names}
        assert (
            now == {names[p] for p in shop.members("no-order") if p in names} == set(names.values())
        )
