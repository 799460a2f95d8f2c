"""Storage clients, created in one place from settings and passed in: ClickHouse (a server,
or the embedded chdb engine, through the same clickhouse-connect API) and Redis (a server,
or the embedded Valkey)."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
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

    def query_rows(self, sql: str, parameters: dict[str, Any] | None = None) -> list[tuple]:
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


class ScriptPipe:
    """Calls of one Lua script sent ahead on a connection of their own: Redis runs one call
    while the caller prepares and sends the next, so it never waits for our process between
    calls. Replies come back in the order sent, each to its future, through a reader thread.
    The body goes with every call (EVAL, cached by Redis under its digest), so a restarted or
    flushed server cannot answer NOSCRIPT to calls already under way. If the connection fails,
    every call not answered fails with the error, and the next call makes a new connection."""

    def __init__(self, client: redis.Redis, source: str, name: str) -> None:
        """`name` names the connection (CLIENT SETNAME) and the reader thread."""
        self.name = name
        self._pool = client.connection_pool
        self._source = source
        self._connection: Any = None
        self._lock = threading.Lock()
        self._waiting: queue.SimpleQueue[tuple[Any, Future[Any]] | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name=f"{name}-replies", daemon=True)
        self._reader.start()

    def submit(self, *args: Any) -> Future[Any]:
        """Send one call (ARGV only: the scripts here name their keys from a prefix)."""
        future: Future[Any] = Future()
        with self._lock:
            if self._connection is None:
                self._connection = self._pool.make_connection()
                self._connection.client_name = self.name  # CLIENT LIST tells it from others
            connection = self._connection
            try:
                connection.send_command("EVAL", self._source, 0, *args, check_health=False)
            except BaseException as error:
                self._connection = None
                connection.disconnect()
                future.set_exception(error)
                return future
            self._waiting.put((connection, future))
        return future

    def close(self) -> None:
        self._waiting.put(None)
        self._reader.join(timeout=5)
        with self._lock:
            if self._connection is not None:
                self._connection.disconnect()
                self._connection = None

    def _read(self) -> None:
        broken: Any = None  # the connection that failed; calls sent on it get no answer
        while (waiting := self._waiting.get()) is not None:
            connection, future = waiting
            if connection is broken:
                future.set_exception(redis.ConnectionError("connection to Redis lost"))
                continue
            try:
                future.set_result(connection.read_response())
            except redis.ResponseError as error:  # the call failed; the connection is fine
                future.set_exception(error)
            except BaseException as error:
                broken = connection
                with self._lock:
                    if self._connection is connection:
                        self._connection = None
                connection.disconnect()
                future.set_exception(error)


def text(value: Any) -> str:
    """A Redis reply (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
