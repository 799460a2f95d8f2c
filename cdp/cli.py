"""The `cdp` command: serve, demo, migrate, writer."""

from __future__ import annotations

import gc
import logging
import socket
import threading
import time
from datetime import datetime

import httpx
import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from rich.logging import RichHandler

from cdp import demo as demo_module
from cdp.report import Overview
from cdp.settings import Settings

app = typer.Typer(help="Customer data platform for web shops.", no_args_is_help=True)
console = Console()


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as error:
        for item in error.errors():
            name = "CDP_" + str(item["loc"][0]).upper() if item["loc"] else "settings"
            console.print(f"[red]{name}[/]: {item['msg']}")
        raise typer.Exit(2) from None


def _logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True), show_path=False)],
    )


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on."),
    port: int = typer.Option(8080, help="Port to listen on."),
    log_level: str = typer.Option("info", help="debug, info, warning or error."),
) -> None:
    """Serve the tracking API, the snippet and the marketer API (docs at /docs)."""
    from cdp.app import create_app

    _logging(log_level)
    app_ = create_app(_settings())
    # Long-lived objects made at start-up need no scanning by every collection on the hot path.
    gc.freeze()
    uvicorn.run(app_, host=host, port=port, log_level=log_level, access_log=False)


@app.command()
def migrate() -> None:
    """Apply pending schema migrations to ClickHouse."""
    from cdp.schema import migrate as apply
    from cdp.storage import connect_warehouse

    warehouse = connect_warehouse(_settings())
    applied = apply(warehouse)
    console.print(f"applied migrations: {applied}" if applied else "schema is up to date")


@app.command()
def writer(log_level: str = typer.Option("info")) -> None:
    """Run a warehouse writer alone (production: a ClickHouse server and a Redis URL)."""
    from cdp.app import Runtime

    _logging(log_level)
    settings = _settings()
    if settings.embedded_clickhouse:
        console.print("[red]the embedded engine is written by `cdp serve`; set CDP_CLICKHOUSE_URL")
        raise typer.Exit(2)
    runtime = Runtime.start(settings.model_copy(update={"run_writer": True}))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        runtime.close()


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

        ok = demo_module.run(url, write_key, read_remote, visitors, seed, console)
        raise typer.Exit(0 if ok else 1)

    from cdp.app import create_app
    from cdp.report import overview

    _logging("warning")
    settings = _settings()
    app_ = create_app(settings)
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app_, host="127.0.0.1", port=port, log_level="warning"))
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
            sorted(runtime.keys.write_keys)[0],
            lambda since: overview(runtime.warehouse, since, runtime.profiles),
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
