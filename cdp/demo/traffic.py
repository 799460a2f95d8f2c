"""`cdp demo`: a simulated shop's traffic sent over HTTP to a running server (started here
on the embedded defaults unless a URL is given), then a report read back from ClickHouse."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TypeVar

import httpx
from rich.columns import Columns
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from cdp.demo.audiences import print_audiences, print_draft, restock, stock_catalog
from cdp.demo.shop import Visitor, simulate_shop
from cdp.report import Overview

T = TypeVar("T")
BATCH_SIZE = 50


@dataclass
class Sent:
    accepted: int = 0
    refused: int = 0
    orders: int = 0
    revenue: float = 0.0
    people: int = 0
    devices: int = 0


def send_traffic(
    base_url: str, write_key: str, visitors: list[Visitor], console: Console, workers: int = 8
) -> Sent:
    """Each visitor's events go out as their browser would send them: small batches, one
    visitor per connection at a time, several visitors in parallel. One event in a hundred
    is sent broken on purpose, to show it refused while its batch is kept."""
    sent = Sent()
    rng = random.Random(len(visitors))
    with (
        httpx.Client(base_url=base_url, auth=(write_key, ""), timeout=30) as client,
        Progress(
            TextColumn("[bold]simulating shop"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("visitors"),
            TimeElapsedColumn(),
            console=console,
        ) as progress,
        ThreadPoolExecutor(workers) as pool,
    ):
        task = progress.add_task("visitors", total=len(visitors))

        def visit(visitor: Visitor) -> tuple[int, int]:
            accepted = refused = 0
            for chunk in _chunks(visitor.events, BATCH_SIZE):
                batch = [dict(event) for event in chunk]
                if rng.random() < 0.01:
                    batch[0].pop("anonymousId", None)
                    batch[0].pop("userId", None)
                response = client.post("/v1/batch", json={"batch": batch})
                if response.status_code == 200:
                    accepted += len(batch)
                elif response.status_code == 400 and "accepted" in response.json():
                    accepted += response.json()["accepted"]
                    refused += len(batch) - response.json()["accepted"]
                else:
                    response.raise_for_status()
            return accepted, refused

        for visitor, (accepted, refused) in zip(visitors, pool.map(visit, visitors), strict=True):
            sent.accepted += accepted
            sent.refused += refused
            sent.orders += visitor.orders
            sent.revenue += visitor.revenue
            sent.people += 1
            sent.devices += visitor.devices
            progress.advance(task)
    return sent


def wait_until_stored(
    read: Callable[[], Overview], expected: int, console: Console, timeout: float = 120
) -> Overview:
    deadline = time.monotonic() + timeout
    with console.status("waiting for the writers, the profile worker and the rules engine..."):
        while True:
            report = read()
            settled = report.events >= expected and report.backlog == 0
            if settled or time.monotonic() > deadline:
                return report
            time.sleep(0.25)


def print_report(console: Console, report: Overview, sent: Sent, started: datetime) -> None:
    elapsed = (datetime.now(UTC) - started).total_seconds()
    console.rule("[bold]Shop report[/] (read back from ClickHouse)")
    summary = Table.grid(padding=(0, 2))
    summary.add_row("events stored", f"{report.events:,}", f"of {sent.accepted:,} accepted")
    summary.add_row("events refused", f"{sent.refused:,}", "malformed on purpose, answered 400")
    summary.add_row("visitors", f"{report.visitors:,}", "anonymous ids: browsers and devices")
    summary.add_row(
        "profiles",
        f"{report.profiles:,}",
        f"{report.identified_profiles:,} identified, {report.anonymous_profiles:,} anonymous"
        f" (simulated {sent.people:,} people on {sent.devices:,} devices)",
    )
    summary.add_row(
        "merges",
        f"{report.merges:,}",
        f"{report.refused_merges:,} refused by a guard; {report.known_users:,} user ids",
    )
    summary.add_row("bot events", f"{report.bot_events:,}",
                    "flagged from the user agent; not counted by audiences")  # fmt: skip
    summary.add_row("bot profiles", f"{report.bot_profiles:,}",
                    "only bots sent them events: in no audience")  # fmt: skip
    summary.add_row("orders", f"{report.orders:,}", f"simulated {sent.orders:,}")
    summary.add_row("revenue", f"EUR {report.revenue:,.2f}", f"simulated EUR {sent.revenue:,.2f}")
    summary.add_row("elapsed", f"{elapsed:.1f} s", "")
    console.print(summary)
    console.print(
        Columns(
            [
                _counts("Events by type", "type", "events", report.events_by_type),
                _counts("Top tracked events", "event", "count", report.top_events),
            ]
        ),
        Columns(
            [
                _counts("Traffic sources", "utm_source", "visitors", report.visitors_by_source),
                _counts("Devices", "device", "visitors", report.visitors_by_device),
            ]
        ),
    )
    ok = report.events == sent.accepted and report.orders == sent.orders
    console.print(
        "[green]every accepted event is stored exactly once[/]"
        if ok
        else "[red]the warehouse does not match what was accepted[/]"
    )
    # In this shop only logged-in people have e-mails, so one user id should be one profile.
    console.print(
        f"[green]each of the {report.known_users:,} logged-in people is one profile[/]"
        if report.identified_profiles == report.known_users
        else "[red]identified profiles and user ids do not match[/]"
    )


def run(
    base_url: str,
    write_key: str,
    api_key: str,
    read_report: Callable[[datetime], Overview],
    visitors: int,
    seed: int | None,
    console: Console,
) -> bool:
    started = datetime.now(UTC)
    shop = simulate_shop(visitors, seed if seed is not None else random.randrange(2**32))
    console.print(
        f"[bold]{visitors}[/] visitors, [bold]{sum(len(v.events) for v in shop):,}[/] events "
        f"→ {base_url}"
    )
    stock_catalog(base_url, api_key)
    sent = send_traffic(base_url, write_key, shop, console)
    report = wait_until_stored(lambda: read_report(started), sent.accepted, console)
    print_report(console, report, sent, started)
    print_audiences(console, base_url, api_key)
    print_draft(console, base_url, api_key)
    restock(console, base_url, api_key)
    return report.events == sent.accepted


def _counts(title: str, key: str, value: str, counts: dict[str, int]) -> Table:
    table = Table(key, value, title=title)
    for name, count in counts.items():
        table.add_row(name, f"{count:,}")
    return table


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
