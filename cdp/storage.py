"""Storage clients, created in one place from settings and passed in: ClickHouse (a server,
or the embedded chdb engine, through the same clickhouse-connect API) and Redis (a server,
or the embedded Valkey)."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager
from typing import Any

import clickhouse_connect
import redis
import redis.asyncio as aioredis
from clickhouse_connect.driver.client import Client

from cdp.settings import Settings


class Warehouse:
    """A ClickHouse client shared by threads. The chdb engine is one per process and its
    client is not thread-safe, so calls are serialised; a server client is used the same way
    for one code path."""

    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        self.database = database
        self._lock = threading.Lock()

    def locked(self) -> AbstractContextManager[Any]:
        return self._lock

    def query_rows(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[tuple[Any, ...]]:
        with self._lock:
            return [tuple(row) for row in self.client.query(sql, parameters=parameters).result_rows]

    def query_dicts(
        self, sql: str, parameters: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Rows as dicts keyed by the result's column names."""
        with self._lock:
            result = self.client.query(sql, parameters=parameters)
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def command(self, sql: str, parameters: dict[str, Any] | None = None) -> Any:
        with self._lock:
            return self.client.command(sql, parameters=parameters)

    def insert_arrow(self, table: str, arrow_table: Any) -> None:
        with self._lock:
            self.client.insert_arrow(table, arrow_table, database=self.database)

    def close(self) -> None:
        with self._lock:
            self.client.close()


def connect_warehouse(settings: Settings) -> Warehouse:
    if settings.embedded_clickhouse:
        path = settings.clickhouse_url or f"chdb://{(settings.data_dir / 'chdb').resolve()}"
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        client = clickhouse_connect.get_client(dsn=path)
    else:
        client = clickhouse_connect.get_client(dsn=settings.clickhouse_url)
    client.command(f"CREATE DATABASE IF NOT EXISTS `{settings.clickhouse_database}`")
    client.database = settings.clickhouse_database
    return Warehouse(client, settings.clickhouse_database)


# RESP2 pinned: stream replies keep one shape whatever the client library's default.
def connect_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, protocol=2)


def connect_async_redis(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(url, protocol=2)


def text(value: Any) -> str:
    """A Redis reply (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
