"""What one event changes in its profile: a pure function, tested without Redis."""

import orjson

from cdp.profiles.change import change_of, grouped
from cdp.profiles.reader import windowed_counts
from tests.events import BASE_MS, stored


def change(**kwargs):  # type: ignore[no-untyped-def]
    return change_of(stored(**kwargs))


def test_counts_by_event_category_and_product() -> None:
    product = {"product_id": "p1", "category": "Shoes", "name": "Runner"}
    viewed = change(event="Product Viewed", anonymous_id="a", properties=product)
    assert viewed["f"] == {"e:Product Viewed": 1, "ec:Product Viewed|Shoes": 1,
                           "ep:Product Viewed|p1": 1}  # fmt: skip
    [(product, at, item)] = viewed["views"]
    assert product == "p1" and at == viewed["t"] and orjson.loads(item)["name"] == "Runner"
    assert viewed["ids"] == ["a:a"]
    assert change(kind="page", anonymous_id="a")["f"] == {"e:page": 1}


def test_cart_events_and_orders() -> None:
    added = change(event="Product Added", anonymous_id="a",
                   properties={"sku": "s1", "quantity": 2, "price": 5})  # fmt: skip
    assert added["cart"][:3] == ["add", "s1", 2]
    removed = change(event="Product Removed", anonymous_id="a", properties={"sku": "s1"})
    assert removed["cart"] == ["remove", "s1", 2**31]  # no quantity: all of it
    order = change(event="Order Completed", anonymous_id="a",
                   properties={"products": [{"product_id": "p1", "price": 9.99, "quantity": 2},
                                            {"product_id": "p2", "price": 0.01}]})  # fmt: skip
    assert order["cart"] == ["clear", ""] and order["order"] == 1999
    assert "ep:Order Completed|p2" in order["f"]
    assert (
        change(event="Order Completed", anonymous_id="a", properties={"total": 12.345})["order"]
        == 1234
    )  # cents, rounded half to even like Python


def test_a_bots_track_events_are_counted_but_feed_no_cart_order_view_or_audience() -> None:
    for event, properties in (("Product Viewed", {"product_id": "p1"}),
                              ("Product Added", {"product_id": "p1"}),
                              ("Order Completed", {"total": 10})):  # fmt: skip
        person = change(event=event, anonymous_id="a", properties=properties)
        bot = change(event=event, anonymous_id="a", properties=properties, is_bot=True,
                     context={"timezone": "Europe/Rome"})  # fmt: skip
        assert person.keys() & {"views", "cart", "order"} and "h" in person
        assert not bot.keys() & {"views", "cart", "order", "h"}
        assert bot["f"] == person["f"]  # what happened is still counted by day
        assert bot["evs"] == ["time_zone"] and bot["tz"] == "Europe/Rome"


def test_identify_traits_consent_and_warnings() -> None:
    identify = change(kind="identify", user_id="u", anonymous_id="a",
                      traits={"email": "x@y.io", "plan": {"b": 1, "a": 2}, "gone": None,
                              "consent": {"email": True, "fax": True}},
                      context={"timezone": "Europe/Rome", "locale": "it-IT"})  # fmt: skip
    assert identify["ids"] == ["u:u", "a:a", "e:x@y.io"]
    assert identify["tr"] == {"email": '"x@y.io"', "plan": '{"a":2,"b":1}'}
    assert identify["consent"] == [["email", "marketing", "granted"]]
    assert identify["warn"] == ["consent channel 'fax' is unknown"]
    assert identify["tz"] == "Europe/Rome"
    assert "tz" not in change(anonymous_id="a", context={"timezone": "Mars/Olympus"})


def test_a_phone_without_country_code_takes_the_locale() -> None:
    found = change(kind="identify", user_id="u", traits={"phone": "06 1234 5678"},
                   context={"locale": "nl-NL"})  # fmt: skip
    assert "p:+31612345678" in found["ids"]


def test_an_alias_carries_the_previous_id() -> None:
    assert change(kind="alias", user_id="new", previous_id="old")["prev"] == "old"


def test_windowed_counts_sum_the_days_in_each_window() -> None:
    today = BASE_MS // 86_400_000
    days = {
        today: {"e:Product Viewed": "2", "ec:Product Viewed|Shoes": "2"},
        today - 5: {"e:Product Viewed": "1"},
        today - 20: {"e:Product Viewed": "4"},
    }
    counts = windowed_counts(days, today, (1, 7, 30))
    assert counts["1d"]["events"] == {"Product Viewed": 2}
    assert counts["7d"]["events"] == {"Product Viewed": 3}
    assert counts["30d"]["events"] == {"Product Viewed": 7}
    assert counts["7d"]["categories"] == {"Product Viewed": {"Shoes": 2}}


def test_browsing_of_the_same_identifiers_on_a_day_is_one_change() -> None:
    changes = [
        change(kind="page", anonymous_id="a", at=5, context={"timezone": "Europe/Rome"}),
        change(event="Product Viewed", anonymous_id="a", at=1, properties={"product_id": "p"}),
        change(kind="identify", anonymous_id="a", user_id="u", at=6),  # other identifiers
        change(
            event="Product Added", anonymous_id="a", at=7, properties={"product_id": "p"}
        ),  # cart: alone
        change(kind="page", anonymous_id="b", at=8),
        change(kind="page", anonymous_id="a", at=9, context={"timezone": "Europe/Paris"}),
    ]
    out = grouped(changes)
    assert [c["type"] for c in out] == ["page", "identify", "track", "page"]
    browsing = out[0]
    assert browsing["n"] == 3 and (browsing["t0"], browsing["t"]) == (
        BASE_MS + 1000,
        BASE_MS + 9000,
    )
    assert browsing["f"] == {"e:page": 2, "e:Product Viewed": 1, "ep:Product Viewed|p": 1}
    assert browsing["tz"] == "Europe/Paris" and browsing["tzt"] == BASE_MS + 9000
    assert [v[0] for v in browsing["views"]] == ["p"]
    assert out[1]["ids"] == ["u:u", "a:a"] and out[2]["cart"][0] == "add"


def test_an_event_of_nobody_changes_no_profile() -> None:
    from cdp.profiles.change import change_of, grouped

    event = stored("track", "Back In Stock", properties={"product_id": "boot"})
    assert grouped([change_of(event)]) == []
