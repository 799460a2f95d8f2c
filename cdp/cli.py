"""The `cdp` command: serve, demo, migrate, writer, profile-worker, audience-worker, replay,
keys."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import httpx
import redis
import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler
from rich.panel import Panel
from rich.table import Table

from cdp import demo as demo_module
from cdp.access import JSONFormatter
from cdp.credentials import ApiKeys, Credentials, Scope, load_credentials
from cdp.redis_server import redis_for
from cdp.report import Overview
from cdp.settings import Settings
from cdp.storage import connect_redis

app = typer.Typer(help="Customer data platform for web shops.", no_args_is_help=True)
console = Console()

# A worker run on its own serves its metrics (`serve_metrics`).
MetricsPort = Annotated[int, typer.Option(help="Serve this process's /metrics on this port.")]
MetricsHost = Annotated[str, typer.Option(help="The address to serve metrics on.")]


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        for item in error.errors():
            name = "CDP_" + str(item["loc"][0]).upper() if item["loc"] else "settings"
            console.print(f"[red]{name}[/]: {item['msg']}")
        raise typer.Exit(2) from None


def _logging(level: str, json_lines: bool = False) -> None:
    if json_lines:
        handler: logging.Handler = logging.StreamHandler()
        handler.setFormatter(JSONFormatter())
        logging.basicConfig(level=level.upper(), handlers=[handler])
        return
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )
    # The access log is one plain line a request: cheap, and easy to grep.
    access = logging.StreamHandler()
    access.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logging.getLogger("cdp.access").addHandler(access)
    logging.getLogger("cdp.access").propagate = False


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
    access_log: bool | None = typer.Option(
        None, "--access-log/--no-access-log", help="A line per request (CDP_ACCESS_LOG)."
    ),
) -> None:
    """Serve the tracking API, the snippet and the marketer API (docs at /docs)."""
    from cdp.app import create_app
    from cdp.protocol import server_config

    settings = _settings()
    if access_log is not None:
        settings = settings.model_copy(update={"access_log": access_log})
    _logging(log_level, settings.log_format == "json")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    credentials = load_credentials(settings)  # made here on first start, to be shown
    console.print(banner(credentials, f"http://{host}:{port}", settings.data_dir / "keys.json"))
    app_ = create_app(settings)
    # Long-lived objects made at start-up need no scanning by every collection on the hot path.
    gc.freeze()
    config = server_config(app_, settings, host=host, port=port, log_level=log_level,
                           log_config=None)  # fmt: skip
    uvicorn.Server(config).run()


def banner(credentials: Credentials, url: str, stored: Path) -> Panel:
    """What a new user needs first: where it runs, the write key and the snippet to paste;
    the admin key only when it was just made (it is secret)."""
    write_key = sorted(credentials.write_keys)[0]
    lines = [
        f"[bold]CDP[/] on [link={url}]{url}[/]  ·  API docs: {url}/docs  ·  health: {url}/healthz",
        "",
        f"Write key (public: the snippet and SDKs send events with it): [bold]{write_key}[/]",
    ]
    if credentials.generated:
        lines += [
            f"Admin API key (secret: the marketer API, Bearer): [bold]{credentials.admin_key}[/]",
            f"[dim]Generated now and kept in {stored}; `cdp keys create` makes more.[/]",
        ]
    lines += [
        "",
        "Paste into your shop's pages:",
        f'[cyan]<script src="{url}/sdk/cdp.js" data-write-key="{write_key}" async></script>[/]',
    ]
    return Panel("\n".join(lines), title="ready to receive events", expand=False)


@app.command()
def migrate() -> None:
    """Apply pending schema migrations to ClickHouse."""
    from cdp.schema import migrate as apply
    from cdp.storage import connect_warehouse

    warehouse = connect_warehouse(_settings())
    applied = apply(warehouse)
    console.print(f"applied migrations: {applied}" if applied else "schema is up to date")


@app.command()
def writer(
    log_level: str = typer.Option("info"),
    metrics_port: MetricsPort = 0,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """Run a warehouse writer alone (production: a ClickHouse server and a Redis URL)."""
    from cdp.app import Runtime

    _logging(log_level)
    settings = _settings()
    if settings.embedded_clickhouse:
        console.print("[red]the embedded engine is written by `cdp serve`; set CDP_CLICKHOUSE_URL")
        raise typer.Exit(2)
    serve_metrics(metrics_port, metrics_host)
    # The writers only: the profile and audience workers run as commands of their own.
    alone = {"run_writer": True, "run_profile_worker": False, "run_audience_worker": False}
    runtime = Runtime.start(settings.model_copy(update=alone))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        runtime.close()


@app.command("profile-worker")
def profile_worker(
    log_level: str = typer.Option("info"),
    parent: int = typer.Option(0, help="Exit when this process is gone (set by cdp serve)."),
    metrics_port: MetricsPort = 0,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """Run a profile worker alone: it needs Redis only; more of them share the stream."""
    from cdp.catalog import Catalog
    from cdp.credentials import source_id
    from cdp.profiles.store import ProfileStore
    from cdp.profiles.worker import ProfileWorker

    def build(client: redis.Redis, settings: Settings) -> ProfileWorker:
        catalog = Catalog(client, settings.redis_prefix, settings.profile_changes_stream,
                          settings.events_stream)  # fmt: skip
        return ProfileWorker(
            client,
            ProfileStore.from_settings(client, settings),
            settings.events_stream,
            catalog=catalog if settings.catalog_write_keys else None,
            catalog_sources=frozenset(source_id(k) for k in settings.catalog_write_keys),
            batch_size=settings.profile_batch_size,
            block_ms=settings.writer_block_ms,
        )

    serve_metrics(metrics_port, metrics_host)
    _run_worker(log_level, parent, build)


@app.command("audience-worker")
def audience_worker(
    log_level: str = typer.Option("info"),
    parent: int = typer.Option(0, help="Exit when this process is gone (set by cdp serve)."),
    index: int = typer.Option(0, help="Which of the host's audience workers (0, 1, ...)."),
    metrics_port: MetricsPort = 0,
    metrics_host: MetricsHost = "127.0.0.1",
) -> None:
    """Run an audience worker alone (the rules engine): it needs Redis only. Several share
    the work, each with its own index."""
    from cdp.catalog import Catalog
    from cdp.profiles.reader import ProfileReader
    from rules.audiences import Audiences
    from rules.worker import AudienceWorker, tune_collector

    def build(client: redis.Redis, settings: Settings) -> AudienceWorker:
        prefix = settings.redis_prefix
        return AudienceWorker(
            client,
            settings.profile_changes_stream,
            ProfileReader(client, prefix),
            Audiences(client, prefix, settings.history_days, settings.vip_revenue),
            Catalog(client, prefix, settings.profile_changes_stream),
            settings.records_stream,
            settings.history_days,
            changes_kept=settings.audience_changes_kept,
            block_ms=settings.writer_block_ms,
            index=index,
        )

    tune_collector()
    serve_metrics(metrics_port, metrics_host)
    _run_worker(log_level, parent, build)


def _run_worker(log_level: str, parent: int, build: Any) -> None:
    """Run a stream worker until SIGTERM, or until the serving process `parent` is gone."""
    import os
    import signal
    import threading as threads

    _logging(log_level)
    settings = _settings()
    stop = threads.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if parent:

        def orphaned() -> None:
            while not stop.wait(1.0):
                if os.getppid() != parent:
                    stop.set()

        threads.Thread(target=orphaned, daemon=True).start()
    with _redis(settings) as client:
        worker = build(client, settings)
        quiet_collector()
        try:
            worker.run(stop)
        except KeyboardInterrupt:
            stop.set()


def serve_metrics(port: int, host: str) -> None:
    """A worker run alone (not by `cdp serve`, whose /metrics shows its workers' counts)
    serves its own metrics for Prometheus to scrape, on a thread of its own (port 0: none)."""
    if port:
        from prometheus_client import start_http_server

        start_http_server(port, host)
        console.print(f"metrics on http://{host}:{port}/metrics")


def quiet_collector() -> None:
    """A stream worker makes many short-lived objects a batch and keeps few cycles: what it
    built at start is set aside and the cyclic collector runs a hundredth as often (an
    audience worker evaluating in full spent ~20% of its time in it)."""
    import gc

    gc.freeze()
    gc.set_threshold(70_000, 20, 100)


@app.command()
def replay() -> None:
    """Rebuild all live profile state from ClickHouse (stop profile workers first)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from cdp.app import Runtime
    from cdp.profiles.replay import replay as rebuild
    from cdp.streams import align_profiles_group, last_entry, settled

    _logging("warning")
    settings = _settings()
    # The warehouse writer first stores what is still buffered, so replay sees all of it.
    runtime = Runtime.start(settings.model_copy(update={"run_profile_worker": False}))
    try:
        upto = last_entry(runtime.redis, settings.events_stream)
        with console.status("storing buffered events"):
            while runtime.writer and not settled(
                runtime.redis, settings.events_stream, upto, groups=("warehouse",)
            ):
                time.sleep(0.1)
        runtime.stop_workers()
        align_profiles_group(runtime.redis, settings.events_stream)
        columns = (*Progress.get_default_columns()[:1], BarColumn(), MofNCompleteColumn(),
                   TimeRemainingColumn())  # fmt: skip
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("replaying events", total=None)
            applied = rebuild(
                runtime.warehouse,
                runtime.profiles,
                lambda done, total: progress.update(task, completed=done, total=total),
            )
        total, known = runtime.profiles.counts()
        console.print(
            f"replayed {applied.events:,} events into {total:,} profiles "
            f"({known:,} identified, {applied.merges:,} merges, "
            f"{applied.refused_merges:,} refused)"
        )
    finally:
        runtime.close()


keys_app = typer.Typer(help="Secret API keys for the marketer API.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    scope: Scope = typer.Option(..., help="read, write or admin."),
    name: str = typer.Option("", help="What the key is for."),
) -> None:
    """Make a key; its secret is printed once."""
    settings = _settings()
    with _redis(settings) as client:
        secret, key = _api_keys(settings, client).create(scope, name)
    console.print(f"{key.scope} key {key.id} ({key.name}): [bold]{secret}[/]")
    console.print("keep the secret now: it is stored only as a digest")


@keys_app.command("list")
def keys_list() -> None:
    """The keys, never their secrets."""
    settings = _settings()
    with _redis(settings) as client:
        keys = _api_keys(settings, client).list()
    table = Table("id", "scope", "name", "created")
    for key in keys:
        table.add_row(key.id, key.scope, key.name, key.created_at)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id (`cdp keys list`)."""
    settings = _settings()
    with _redis(settings) as client:
        revoked = _api_keys(settings, client).revoke(key_id)
    if not revoked:
        console.print(f"[red]no key {key_id}")
        raise typer.Exit(1)
    console.print(f"revoked {key_id}")


def _api_keys(settings: Settings, client: redis.Redis) -> ApiKeys:
    return ApiKeys(client, settings.redis_prefix, load_credentials(settings).admin_key)


@contextmanager
def _redis(settings: Settings) -> Iterator[redis.Redis]:
    """Redis for a command that needs nothing else: the embedded server is reused when a
    server runs, else started for the command and stopped after."""
    embedded, url = redis_for(settings)
    client = connect_redis(url)
    try:
        yield client
    finally:
        client.close()
        if embedded is not None and not embedded.reused:
            embedded.stop()


@app.command()
def demo(
    url: str = typer.Option("", help="Use this running server instead of starting one."),
    write_key: str = typer.Option("", envvar="CDP_DEMO_WRITE_KEY", help="With --url."),
    api_key: str = typer.Option("", envvar="CDP_DEMO_API_KEY", help="With --url."),
    visitors: int = typer.Option(300, min=1, help="How many simulated visitors."),
    seed: int | None = typer.Option(None, help="Repeat a simulation exactly."),
) -> None:
    """Run a simulated shop's traffic end to end and print a report from ClickHouse."""
    if url:
        if not (write_key and api_key):
            console.print("[red]--url needs --write-key and --api-key")
            raise typer.Exit(2)

        def read_remote(since: datetime) -> Overview:
            response = httpx.get(
                f"{url.rstrip('/')}/api/v1/reports/overview",
                params={"since": since.isoformat()},
                headers={"Authorization": f"Bearer {api_key}"},
                timeout=30,
            )
            response.raise_for_status()
            return Overview(**response.json())

        ok = demo_module.run(url, write_key, api_key, read_remote, visitors, seed, console)
        raise typer.Exit(0 if ok else 1)

    from cdp.app import create_app
    from cdp.protocol import server_config
    from cdp.report import overview

    _logging("warning")
    settings = _settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if load_credentials(settings).generated:
        console.print(f"keys generated and kept in {settings.data_dir / 'keys.json'} "
                      "(`cdp serve` shows them)")  # fmt: skip
    app_ = create_app(settings)
    port = _free_port()
    server = uvicorn.Server(
        server_config(app_, settings, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    with console.status(f"starting the server on the embedded engines in {settings.data_dir}"):
        thread.start()
        while not server.started:
            if not thread.is_alive():
                raise typer.Exit(1)
            time.sleep(0.05)
    runtime = app_.state.runtime
    try:
        ok = demo_module.run(
            f"http://127.0.0.1:{port}",
            sorted(runtime.credentials.write_keys)[0],
            runtime.credentials.admin_key,
            lambda since: overview(runtime.warehouse, since, runtime.redis, settings.streams),
            visitors,
            seed,
            console,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    raise typer.Exit(0 if ok else 1)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    app()
