"""Time passes with no event, on an injected clock: transitions happen at their moment."""

from __future__ import annotations

import time

import orjson
import redis

from cdp.settings import Settings
from cdp.storage import Warehouse
from rules.api import schedule
from rules.worker import AudienceWorker
from tests.rules.shop import HOUR_MS, Shop, days


def test_abandoned_cart_enters_when_the_hour_passes_and_exits_on_an_order(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    shop = Shop(settings, redis_client, warehouse)
    shop.track("sam", "Product Added", product_id="p1", quantity=1, price=20)
    shop.settle()
    sam = shop.profile_of("sam")
    assert sam not in shop.members("abandoned-cart")

    shop.advance(HOUR_MS - 1)
    assert sam not in shop.members("abandoned-cart")
    shop.advance(1)  # the hour has passed, to the millisecond
    assert sam in shop.members("abandoned-cart")
    [entered] = [c for c in shop.changes() if c["audience"] == "abandoned-cart"]
    assert entered["change"] == "enter" and entered["cause"] == "time"
    assert int(entered["at"]) == shop.now  # at its moment, not when noticed
    reasons = orjson.loads(entered["reason"])
    assert [r["holds"] for r in reasons] == [True, True]
    assert reasons[1]["value"] == 1  # one unit in the cart

    shop.now += 5 * 60_000
    shop.track("sam", "Order Completed", revenue=20)
    shop.settle()
    assert sam not in shop.members("abandoned-cart")
    assert shop.sql_members("abandoned-cart") == set()
    assert [c["change"] for c in shop.changes() if c["audience"] == "abandoned-cart"] == [
        "enter",
        "exit",
    ]


def test_category_viewed_3x_exits_when_the_third_view_slides_out_of_the_window(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    shop = Shop(settings, redis_client, warehouse)
    first = shop.now
    for hours in (0, 5, 30):
        shop.track("kim", "Product Viewed", at=first + hours * HOUR_MS, category="Shoes")
    shop.track("kim", "Product Viewed", at=first + 2 * HOUR_MS, category="Hats")
    shop.now = first + 31 * HOUR_MS
    shop.settle()
    kim = shop.profile_of("kim")
    assert kim in shop.members("category-viewed-3x-7d")
    assert kim in shop.sql_members("category-viewed-3x-7d")

    shop.advance(first + days(7) - 1 - shop.now)
    assert kim in shop.members("category-viewed-3x-7d")
    shop.advance(1)  # the first view leaves the window (now - 7d, now]
    assert kim not in shop.members("category-viewed-3x-7d")
    assert kim not in shop.sql_members("category-viewed-3x-7d")
    exited = [c for c in shop.changes() if c["audience"] == "category-viewed-3x-7d"][-1]
    assert exited["change"] == "exit" and int(exited["at"]) == first + days(7)
    assert orjson.loads(exited["reason"])[0]["value"] == {"count": 2, "of": "category",
                                                          "value": "Shoes"}  # fmt: skip


class Recording(AudienceWorker):
    """Notes which audiences each evaluation matched."""

    matched: list[set[str]]

    def _settle(self, writes, plan, look, outcome, *rest):  # type: ignore[no-untyped-def]
        if outcome.matched:
            self.matched.append(set(outcome.matched))
        super()._settle(writes, plan, look, outcome, *rest)


def test_when_a_moment_comes_only_the_audiences_due_then_are_matched(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        for saved in shop.audiences.all():  # the predefined ones, disabled
            off = saved.definition.model_copy(update={"enabled": False})
            shop.audiences.save(off, create=False)
        shop.define("recent", {"last_performed": {"event": "Product Viewed", "op": "<",
                                                  "ago": "PT1H"}})  # fmt: skip
        shop.define("week", {"performed": {"event": "Product Viewed", "within": "P7D",
                                           "times": 1}})  # fmt: skip
        shop.define("holdout", {"bucket": {"salt": "h", "below": 100}})  # never changes
        shop.worker = shop.audience_worker(Recording)
        shop.worker.matched = []
        shop.track("ann", "Product Viewed")
        shop.settle()
        ann = shop.profile_of("ann")
        assert shop.worker.matched == [{"recent", "week", "holdout"}]  # first seen: in full

        shop.advance(HOUR_MS)
        assert shop.worker.matched[1:] == [{"recent"}]  # its hour passed; the week has not
        assert ann not in shop.members("recent") and ann in shop.members("week")

        shop.track("ann", "Product Viewed")
        shop.settle()
        assert shop.worker.matched[2:] == [{"recent", "week"}]  # those reading the event
        shop.advance(HOUR_MS + days(7))  # each at its own moment, the hour first
        # The week: when the first view slides out (still a member), then the second.
        assert shop.worker.matched[3:] == [{"recent"}, {"week"}, {"week"}]
        assert shop.members("recent") == shop.members("week") == set()
        assert shop.members("holdout") == {ann}

        schedule(shop.client, shop.keys, [ann], shop.now)  # a look asked for: no audience due
        shop.advance(0)
        assert shop.worker.matched[6:] == [{"recent", "week", "holdout"}]


def test_what_leaves_the_kept_history_changes_memberships_on_time(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """An event older than `CDP_HISTORY_DAYS` is forgotten, by both paths: a condition that
    reads it with no window of its own (the last order of a lapsed customer, an add-to-cart
    never followed by an order, the cart) changes when it leaves, with no new event."""
    kept = settings.model_copy(update={"history_days": 10})
    with Shop(kept, redis_client, warehouse) as shop:
        shop.now = int(time.time() * 1000)  # the profile script keeps the days to its clock
        shop.define("lapsed", {"last_performed": {"event": "Order Completed", "op": ">=",
                                                  "ago": "P5D"}})  # fmt: skip
        shop.define(
            "never-ordered",
            {
                "not_followed_by": {
                    "event": "Product Added",
                    "then": {"event": "Order Completed"},
                    "wait": "P1D",
                }
            },
        )
        shop.define("cart", {"cart": {"op": ">", "units": 0}})
        ordered, added = shop.now - days(8), shop.now - days(7)
        shop.track("old", "Order Completed", at=ordered, revenue=10)
        shop.track("old", "Product Added", at=added, product_id="p1")
        shop.settle()
        old = shop.profile_of("old")
        for audience in ("lapsed", "never-ordered", "cart"):
            assert shop.members(audience) == {old} == shop.sql_members(audience), audience
        shop.advance(days(2))  # the order leaves the kept 10 days: lapsed no longer says
        assert shop.members("lapsed") == set() == shop.sql_members("lapsed")
        assert shop.members("never-ordered") == {old} == shop.sql_members("never-ordered")
        shop.advance(days(1))  # the add to cart leaves too
        for audience in ("never-ordered", "cart"):
            assert shop.members(audience) == set() == shop.sql_members(audience), audience
        exits = {
            c["audience"]: (c["cause"], int(c["at"]))
            for c in shop.changes()
            if c["change"] == "exit" and c["audience"] in ("lapsed", "never-ordered", "cart")
        }
        assert exits == {"lapsed": ("time", ordered + days(10)),  # at the moment it was forgotten
                         "never-ordered": ("time", added + days(10)),
                         "cart": ("time", added + days(10))}  # fmt: skip
