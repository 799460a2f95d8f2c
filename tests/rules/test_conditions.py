"""What conditions read on a subject, beyond what both membership paths check."""

from __future__ import annotations

from rules.conditions import SHOWN_PRODUCTS, Happened, Subject, read
from rules.definition import parse_node

NOW = 1_790_000_000_000


def test_a_reason_names_a_bounded_number_of_out_of_stock_products() -> None:
    """The reason goes with every transition record and "why" answer."""
    viewed = [Happened(NOW - 1000 + i, f"m{i}", "Product Viewed", {"product_id": f"p{i:02d}"})
              for i in range(SHOWN_PRODUCTS + 10)]  # fmt: skip
    subject = Subject("p", viewed, out_of_stock=frozenset(h.properties["product_id"]
                                                          for h in viewed))  # fmt: skip
    root = parse_node({"out_of_stock": {"within": "P1D"}})
    [reading] = read(root, subject, NOW)
    assert reading.holds and reading.value == 1
    assert reading.shown == [f"p{i:02d}" for i in range(SHOWN_PRODUCTS)] + ["and 10 more"]


def test_a_cart_s_next_moment_is_its_next_cart_event_not_any_event_dated_ahead() -> None:
    """The cart reads adds, removals and orders: a page viewed with a time ahead (a client's
    clock) changes nothing; an order dated ahead empties the cart when its time comes. The
    batch reads the same (`tests/rules/test_batch.py`)."""
    root = parse_node({"cart": {"op": ">", "units": 0}})
    added = Happened(NOW - 1000, "a", "Product Added", {"product_id": "p1"})
    ahead = [Happened(NOW + 60_000, "v", "Product Viewed", {})]
    [reading] = read(root, Subject("p", [added, *ahead]), NOW)
    assert reading.holds and reading.next_at is None
    ahead.append(Happened(NOW + 120_000, "o", "Order Completed", {}))
    [reading] = read(root, Subject("p", [added, *ahead]), NOW)
    assert reading.holds and reading.next_at == NOW + 120_000
    [later] = read(root, Subject("p", [added, *ahead]), NOW + 120_000)
    assert not later.holds
