"""Real engines, started once per test session: an embedded Valkey server and the embedded
ClickHouse engine (chdb). Each test gets a clean namespace: its own ClickHouse database and
its own Redis key prefix."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import uvicorn
from fastapi import FastAPI

from cdp.protocol import server_config
from cdp.redis_server import EmbeddedRedis
from cdp.settings import Settings
from cdp.storage import Warehouse, connect_warehouse

WRITE_KEY = "wk_test_key"
API_KEY = "sk_test_key"


@pytest.fixture(scope="session")
def engines_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("engines")


@pytest.fixture(scope="session")
def redis_url(engines_dir: Path) -> Iterator[str]:
    server = EmbeddedRedis(engines_dir)
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def chdb_url(engines_dir: Path) -> str:
    return f"chdb://{engines_dir / 'chdb'}"


@pytest.fixture
def settings(tmp_path: Path, redis_url: str, chdb_url: str) -> Settings:
    namespace = "t" + uuid.uuid4().hex[:12]
    return Settings(
        data_dir=tmp_path / "data",
        clickhouse_url=chdb_url,
        clickhouse_database=namespace,
        redis_url=redis_url,
        redis_prefix=namespace,
        write_keys=[WRITE_KEY],
        admin_key=API_KEY,
        writer_block_ms=20,
        writer_max_wait_ms=20,
    )


@pytest.fixture
def warehouse(settings: Settings) -> Iterator[Warehouse]:
    connection = connect_warehouse(settings)
    yield connection
    connection.command(f"DROP DATABASE IF EXISTS `{settings.clickhouse_database}`")


@pytest.fixture
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.redis_url)
    yield client
    keys = list(client.scan_iter(match=f"{settings.redis_prefix}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


class LiveServer:
    """The app served by uvicorn on a free loopback port, in this process, so tests can use
    real HTTP clients and read the same embedded ClickHouse."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        self.app = app
        self.server = uvicorn.Server(
            server_config(app, settings, host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def live_server(
    settings: Settings, warehouse: Warehouse, redis_client: redis.Redis
) -> Iterator[LiveServer]:
    from cdp.app import create_app

    with LiveServer(create_app(settings), settings) as server:
        yield server


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.05, sleep=time.sleep):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; returns its value or fails the test. `sleep` lets a
    caller keep another event loop turning meanwhile (Playwright's sync API)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s (last value {value!r})")
        sleep(interval)


def count_events(warehouse: Warehouse, where: str = "1", parameters: dict | None = None) -> int:
    return int(warehouse.query_rows(f"SELECT count() FROM events WHERE {where}", parameters)[0][0])


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    """A data directory for a server process; its Valkey is killed if a test left it."""
    yield tmp_path / "data"
    pid_file = tmp_path / "data" / "valkey" / "valkey.pid"
    if pid_file.exists():  # a server a failed test left behind
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
