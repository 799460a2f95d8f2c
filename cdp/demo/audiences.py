"""The demo's audience section, read over the HTTP API like a marketer would: each audience's
size with its enters and exits, why one shopper is in one of them, and a draft with typos
previewed: its hints."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
from rich.console import Console
from rich.table import Table

from cdp.demo.shop import CATALOG

SHOWN_FIRST = ("abandoned-cart", "browse-abandonment", "category-viewed-3x-7d")
SOLD_OUT = "sku-202"  # the Down Parka: out of stock while the shop's traffic runs
WATCHERS = "back-in-stock-watchers"


def stock_catalog(base_url: str, api_key: str) -> None:
    """The shop's catalog, one product sold out."""
    products = [
        {"id": sku, "name": name, "price": price, "currency": "EUR", "category": category,
         "url": f"https://shop.example/p/{sku}", "stock": 0 if sku == SOLD_OUT else 25}
        for category, items in CATALOG.items() for sku, name, price in items
    ]  # fmt: skip
    headers = {"Authorization": f"Bearer {api_key}"}
    url = f"{base_url}/api/v1/catalog/products"
    httpx.put(url, json={"products": products}, headers=headers, timeout=30).raise_for_status()


def restock(console: Console, base_url: str, api_key: str, timeout: float = 60) -> None:
    """The sold-out product comes back: its watchers leave the audience at once."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as api:
        watching = api.get(f"/api/v1/audiences/{WATCHERS}").json()["size"]
        restocked = {"products": [{"id": SOLD_OUT, "name": "Down Parka", "stock": 12}]}
        answer = api.put("/api/v1/catalog/products", json=restocked)
        started = time.monotonic()
        while api.get(f"/api/v1/audiences/{WATCHERS}").json()["size"] and (
            time.monotonic() - started < timeout
        ):
            time.sleep(0.1)
        left = watching - api.get(f"/api/v1/audiences/{WATCHERS}").json()["size"]
    console.print(
        f"[bold]Back in stock:[/] {', '.join(answer.json()['back_in_stock'])} restocked; "
        f"{left} of {watching} watchers left {WATCHERS} in "
        f"{time.monotonic() - started:.2f} s (a `Back In Stock` event is stored)"
    )


def print_audiences(console: Console, base_url: str, api_key: str) -> dict[str, int]:
    """Print the audiences and one shopper's reasons; returns the sizes by audience."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as api:
        audiences = api.get("/api/v1/audiences").raise_for_status().json()["audiences"]
        table = Table("audience", "members", "entered", "exited", "what it means",
                      title="Audiences, kept live by the rules engine")  # fmt: skip
        sizes = {}
        for audience in audiences:
            history = api.get(f"/api/v1/audiences/{audience['id']}/sizes").json()["sizes"]
            entered = sum(s["entered"] for s in history)
            exited = sum(s["exited"] for s in history)
            sizes[audience["id"]] = audience["size"]
            table.add_row(audience["id"], f"{audience['size']:,}", f"{entered:,}", f"{exited:,}",
                          audience["description"])  # fmt: skip
        console.print(table)
        print_audit(console, api, [audience["id"] for audience in audiences])
        shown = next((a for a in SHOWN_FIRST if sizes.get(a)), None)
        if shown is None:
            return sizes
        member = api.get(f"/api/v1/audiences/{shown}/members", params={"limit": 1}).json()
        profile = member["members"][0]["profile_id"]
        why = api.get(f"/api/v1/profiles/{profile}/audiences/{shown}").json()
        console.print(f"[bold]Why is {profile} in {shown}?[/] (member since {why['since']})")
        for condition in why["conditions"]:
            mark = "[green]✓[/]" if condition["holds"] else "[red]✗[/]"
            console.print(f"  {mark} {condition['path']} {condition['condition']}: "
                          f"{_shown(condition['value'])} ({condition['threshold']})")  # fmt: skip
        if why["unchanged_until"]:
            console.print(f"  (so until {why['unchanged_until']} with no new event)")
    return sizes


# A marketer's draft with two typos, then as meant: "viewed jackets twice in a week, and
# ordered nothing".
MEANT = {"and": [
    {"performed": {"event": "Product Viewed", "within": "P7D", "times": 2,
                   "where": [{"property": "category", "value": "Jackets"}]}},
    {"not": {"performed": {"event": "Order Completed", "within": "P7D", "times": 1}}},
]}  # fmt: skip
DRAFT = orjson.loads(orjson.dumps(MEANT).replace(b'"category"', b'"categroy"')
                     .replace(b'"Order Completed"', b'"Order Complete"'))  # fmt: skip


def print_draft(console: Console, base_url: str, api_key: str) -> None:
    """A draft previewed before saving: its hints, then the size of what was meant."""
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as api:
        draft = api.post("/api/v1/audiences/preview", json={"root": DRAFT}).raise_for_status()
        meant = api.post("/api/v1/audiences/preview", json={"root": MEANT}).raise_for_status()
    console.print(f"[bold]A draft previewed[/] (POST /api/v1/audiences/preview): "
                  f"{draft.json()['size']:,} members, and hints:")  # fmt: skip
    for hint in draft.json()["hints"]:
        console.print(f"  [yellow]{hint['path']}[/]: {hint['hint']}", soft_wrap=True)
    console.print(f"  as meant: {meant.json()['size']:,} members, "
                  f"{len(meant.json()['hints'])} hints")  # fmt: skip


def print_audit(console: Console, api: httpx.Client, audience_ids: list[str]) -> None:
    """Each audience's members kept in real time against its SQL over the warehouse."""
    audits = [api.get(f"/api/v1/audiences/{a}/audit").raise_for_status().json()
              for a in audience_ids]  # fmt: skip
    agreeing = sum(audit["agree"] for audit in audits)
    console.print(f"Real time and the SQL over ClickHouse agree on [bold]{agreeing} of "
                  f"{len(audits)}[/] audiences (GET /api/v1/audiences/{{id}}/audit)")  # fmt: skip
    for audit in audits:
        if not audit["agree"]:
            console.print(f"  [red]{audit['audience']}[/]: {audit['live']:,} live, "
                          f"{audit['sql']:,} by SQL, {audit['differences']:,} differ "
                          f"(e.g. {(audit['only_live'] + audit['only_sql'])[:3]})")  # fmt: skip


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()
