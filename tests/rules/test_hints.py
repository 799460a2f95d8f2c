"""Hints of the kept history, on what it holds (`tests/rules/test_api.py` reads them of
ClickHouse): every place a definition names an event or a property is looked at."""

from __future__ import annotations

import time
from typing import Any

from cdp.schema import migrate
from cdp.storage import Warehouse
from rules.definition import Definition
from rules.hints import Heard, checked, heard, hints, top_level


def test_every_event_a_condition_names_is_looked_at_and_only_those_never_received_named() -> None:
    root = Definition.model_validate({"id": "x", "name": "x", "root": {"or": [
        {"not": {"not_followed_by": {"event": "Product Added", "wait": "PT1H",
                                     "then": {"event": "Order Compleated"}}}},
        {"out_of_stock": {"within": "P7D", "events": ["Product Viewed", "Wishlisted"]}},
        {"last_performed": {"event": "Signed Up", "ago": "P7D"}},
        {"performed": {"event": "ORDER COMPLETED", "within": "P1D", "times": 1}},
        {"cart": {"units": 1}},
        {"orders": {"count": 1}},
    ]}}).root  # fmt: skip
    heard = Heard(30, frozenset({"Product Added", "Order Completed", "Product Viewed"}), {})
    assert hints(root, heard) == [
        {"path": "root.or[0].not.not_followed_by.then.event",
         "hint": "no `Order Compleated` event within the kept 30 days (did you mean "
                 "`Order Completed`?)"},
        {"path": "root.or[1].out_of_stock.events[1]",
         "hint": "no `Wishlisted` event within the kept 30 days"},
        {"path": "root.or[2].last_performed.event",
         "hint": "no `Signed Up` event within the kept 30 days"},
        {"path": "root.or[3].performed.event",  # by case, however far the spelling
         "hint": "no `ORDER COMPLETED` event within the kept 30 days (did you mean "
                 "`Order Completed`?)"},
    ]  # fmt: skip
    without_adds = Heard(30, frozenset({"Added to Cart", "Order Completed"}), {})
    assert hints(root, without_adds)[-1] == {
        "path": "root.or[4].cart",
        "hint": "no `Product Added` event within the kept 30 days: the cart counts none (the "
                "e-commerce spec's names are read: Order Completed, Product Added, Product "
                "Removed)"}  # fmt: skip
    without_orders = Heard(30, frozenset({"Product Added", "Purchased"}), {})
    assert hints(root, without_orders)[-1] == {
        "path": "root.or[5].orders",
        "hint": "no `Order Completed` event within the kept 30 days: orders are counted from it "
                "(the e-commerce spec's name)"}  # fmt: skip


def test_a_property_with_paths_below_it_is_an_object_and_a_same_groups_only_text() -> None:
    properties = top_level({"size": ["Int64"], "shoe.size": ["Int64"], "tags": ["Array(String)"]})
    assert properties == {"size": frozenset({"Int64"}), "shoe": frozenset({"Object"}),
                          "tags": frozenset({"Array(String)"})}  # fmt: skip
    root = Definition.model_validate({"id": "x", "name": "x", "root": {"and": [
        {"performed": {"event": "Viewed", "within": "P1D", "times": 2, "same": "size"}},
        {"performed": {"event": "Viewed", "within": "P1D", "times": 1,
                       "where": [{"property": "tags", "value": "red"},
                                 {"property": "size", "op": ">=", "value": 40}]}},
    ]}}).root  # fmt: skip
    heard = Heard(30, frozenset({"Viewed"}), {"Viewed": properties})
    assert hints(root, heard) == [
        {"path": "root.and[0].performed.same",
         "hint": "`size` of `Viewed` was only ever a number: compared with text it never matches"},
        {"path": "root.and[1].performed.where[0].property",
         "hint": "`tags` of `Viewed` was only ever a list: compared with text it never matches"},
    ]  # fmt: skip


def test_a_warehouse_that_cannot_answer_leaves_one_hint_saying_so(warehouse: Warehouse) -> None:
    """Hints are advice: a save or preview goes on without them (here the test's ClickHouse
    database has no tables)."""
    root = Definition.model_validate({"id": "x", "name": "x", "root": {
        "performed": {"event": "Viewed", "within": "P1D", "times": 1}}}).root  # fmt: skip
    [hint] = checked(warehouse, root, 30, 0)
    assert hint["path"] == "root"
    assert hint["hint"].startswith("not checked against the kept history: the warehouse did not")


def test_a_cart_by_value_where_no_price_was_ever_a_number() -> None:
    root = Definition.model_validate({"id": "x", "name": "x", "root": {
        "cart": {"op": ">=", "value": 100}}}).root  # fmt: skip
    texts = Heard(30, frozenset({"Product Added"}), {"Product Added": {"price": frozenset({
        "String"})}})  # fmt: skip
    assert hints(root, texts) == [{"path": "root.cart.value", "hint": "`price` of `Product "
                                   "Added` was only ever text: compared with a number it never "
                                   "matches"}]  # fmt: skip
    numbers = Heard(30, frozenset({"Product Added"}), {"Product Added": {"price": frozenset({
        "Float64", "String"})}})  # fmt: skip
    assert hints(root, numbers) == []


def test_what_is_heard_is_read_of_clickhouse_only_for_the_events_named(
    warehouse: Warehouse,
) -> None:
    migrate(warehouse)
    warehouse.command(
        "INSERT INTO events (type, event, message_id, timestamp, properties, traits) VALUES "
        "('track', 'Product Added', 'm1', now64(3), '{\"price\": \"12\", \"sku\": {\"a\": 1}}', "
        "'{}'), ('track', 'Product Viewed', 'm2', now64(3), '{\"price\": 3}', '{}'), "
        "('track', 'Old', 'm3', now64(3) - INTERVAL 40 DAY, '{}', '{}'), "
        "('identify', '', 'm4', now64(3), '{}', '{\"plan\": \"pro\"}')"
    )  # fmt: skip
    root = Definition.model_validate({"id": "x", "name": "x", "root": {"and": [
        {"cart": {"value": 10}}, {"trait": {"name": "plan", "value": "pro"}},
        {"time_zone": {"in": ["Europe/"]}}]}}).root  # fmt: skip
    typo = Definition.model_validate(
        {
            "id": "x",
            "name": "x",
            "root": {
                "or": [
                    {"trait": {"name": "plan", "value": "Pro"}},
                    {"trait": {"name": "plan", "op": "!=", "value": "Pro"}},
                ]
            },
        }
    ).root  # holds: no hint
    found = heard(warehouse, root, 30, int(time.time() * 1000))
    assert found.names == {"Product Added", "Product Viewed"}  # not `Old`: 40 days back
    assert found.properties == {"Product Added": {"price": {"String"}, "sku": {"Object"}}}
    assert found.traits == {"plan": {"String"}}
    assert [h["path"] for h in hints(root, found)] == ["root.and[0].cart.value",
                                                       "root.and[2].time_zone"]  # fmt: skip
    warehouse.command("INSERT INTO events (type, message_id, timestamp, context) VALUES "
                      "('page', 'm5', now64(3), '{\"timezone\": \"Europe/Rome\"}')")  # fmt: skip
    told = heard(warehouse, root, 30, int(time.time() * 1000))
    assert [h["path"] for h in hints(root, told)] == ["root.and[0].cart.value"]
    assert hints(typo, heard(warehouse, typo, 30, int(time.time() * 1000))) == [
        {
            "path": "root.or[0].trait.value",
            "hint": "no profile was given the trait `plan` `Pro` (did you mean `pro`?)",
        }
    ]


def test_a_membership_of_a_disabled_audience_is_hinted() -> None:
    root = Definition.model_validate({"id": "x", "name": "x", "root": {"or": [
        {"member_of": {"audience": "vip"}}, {"not": {"member_of": {"audience": "lapsed"}}},
    ]}}).root  # fmt: skip
    heard = Heard(30, frozenset(), {})
    assert hints(root, heard, frozenset({"lapsed"})) == [{
        "path": "root.or[1].not.member_of.audience",
        "hint": "`lapsed` is disabled: no one is a member of it until it is enabled"}]  # fmt: skip
    assert hints(root, heard) == []


def test_a_text_value_no_such_event_had_is_hinted_with_the_one_likely_meant(
    warehouse: Warehouse,
) -> None:
    migrate(warehouse)
    rows = ", ".join(f"('track', 'Product Viewed', 'v{i}', now64(3), "
                     f"'{{\"category\": \"{c}\"}}')"
                     for i, c in enumerate(["Shoes", "Shoes", "Hats", "Bags"]))  # fmt: skip
    warehouse.command("INSERT INTO events (type, event, message_id, timestamp, properties) "
                      f"VALUES {rows}")  # fmt: skip

    def viewed(op: str, value: Any) -> dict[str, Any]:
        return {
            "performed": {
                "event": "Product Viewed",
                "within": "P1D",
                "times": 1,
                "where": [{"property": "category", "op": op, "value": value}],
            }
        }

    root = Definition.model_validate({"id": "x", "name": "x", "root": {"and": [
        viewed("==", "shoes"), viewed("in", ["Coats", "Scarves"]),
        # Each may hold: no hint.
        viewed("==", "Hats"), viewed("in", ["Coats", "Bags"]), viewed("!=", "Shoe"),
        viewed("in", ["Coats", 3]),
    ]}}).root  # fmt: skip
    assert hints(root, heard(warehouse, root, 30, int(time.time() * 1000))) == [
        {"path": "root.and[0].performed.where[0].value",
         "hint": "no `Product Viewed` event within the kept history has `category` `shoes` "
                 "(did you mean `Shoes`?)"},
        {"path": "root.and[1].performed.where[0].value",
         "hint": "no `Product Viewed` event within the kept history has `category` `Coats`, "
                 "`Scarves`"},
    ]  # fmt: skip
