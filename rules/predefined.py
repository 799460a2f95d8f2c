"""The audiences every shop gets, with fixed ids. They can be changed or disabled, never
deleted (campaigns and nudges name them)."""

from __future__ import annotations

from rules.definition import Definition

ADDED, VIEWED, ORDERED = "Product Added", "Product Viewed", "Order Completed"


def predefined(vip_revenue: float) -> list[Definition]:
    """The shipped definitions; `vip_revenue` is the `vip` audience's threshold
    (`CDP_VIP_REVENUE`, in the shop's currency, over 90 days of `Order Completed.revenue`)."""
    documents = [
        ("category-viewed-3x-7d", "Viewed one category 3 times in 7 days",
         "Viewed products of the same category at least 3 times within the last 7 days.",
         {"performed": {"event": VIEWED, "within": "P7D", "times": 3, "same": "category"}}),
        ("added-to-cart-2x-7d", "Added to cart twice in 7 days",
         "Added products to the cart at least twice within the last 7 days.",
         {"performed": {"event": ADDED, "within": "P7D", "times": 2}}),
        ("abandoned-cart", "Abandoned cart",
         "Added to cart, no order for an hour since, and the cart still holds items.",
         {"and": [{"not_followed_by": {"event": ADDED, "then": {"event": ORDERED},
                                       "wait": "PT1H"}},
                  {"cart": {"op": ">", "units": 0}}]}),
        ("browse-abandonment", "Browse abandonment",
         "Viewed products within 7 days, and no add to cart for an hour since the last view.",
         {"not_followed_by": {"event": VIEWED, "then": {"event": ADDED}, "wait": "PT1H",
                              "within": "P7D"}}),
        ("recent-purchasers", "Recent purchasers", "Ordered within the last 30 days.",
         {"last_performed": {"event": ORDERED, "op": "<", "ago": "P30D"}}),
        ("back-in-stock-watchers", "Watching a product out of stock",
         "Viewed or wishlisted, within 30 days, a product that is out of stock now.",
         {"out_of_stock": {"within": "P30D"}}),
        ("vip", "VIP customers",
         f"Order revenue over the last 90 days of at least {vip_revenue:g}.",
         {"aggregate": {"event": ORDERED, "property": "revenue", "fn": "sum", "within": "P90D",
                        "op": ">=", "value": vip_revenue}}),
        ("lapsed-customers", "Lapsed customers",
         "Ordered before (ever), but not within the last 90 days.",
         {"and": [{"orders": {"count": 1}},
                  {"not": {"performed": {"event": ORDERED, "within": "P90D", "times": 1}}}]}),
    ]  # fmt: skip
    return [
        Definition.model_validate({"id": id_, "name": name, "description": text, "root": root})
        for id_, name, text, root in documents
    ]


def predefined_ids() -> frozenset[str]:
    return frozenset(d.id for d in predefined(0))
