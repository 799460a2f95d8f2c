"""Script calls sent ahead on a connection of their own: the caller submits, a reader
thread hands the replies back in order, so Redis runs one call while the next is prepared."""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future
from typing import Any

import redis


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
        # Which taking of a connection a call went out on: the pool may hand back the same
        # object after a failure, so a failed connection is known by its taking, not itself.
        self._taking = 0
        self._lock = threading.Lock()
        self._waiting: queue.SimpleQueue[tuple[int, Any, Future[Any]] | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name=f"{name}-replies", daemon=True)
        self._reader.start()

    def submit(self, *args: Any) -> Future[Any]:
        """Send one call (ARGV only: the scripts here name their keys from a prefix)."""
        future: Future[Any] = Future()
        with self._lock:
            if self._connection is None:
                # Taken from the pool and given back on close or failure, so a pool's
                # limit counts it once however often it is made again.
                self._connection = self._pool.get_connection()
                self._taking += 1
                self._connection.send_command("CLIENT", "SETNAME", self.name)
                self._connection.read_response()  # CLIENT LIST tells it from others
            connection, taking = self._connection, self._taking
            try:
                connection.send_command("EVAL", self._source, 0, *args, check_health=False)
            except BaseException as error:
                self._connection = None
                connection.disconnect()
                self._pool.release(connection)
                future.set_exception(error)
                return future
            self._waiting.put((taking, connection, future))
        return future

    def close(self) -> None:
        self._waiting.put(None)
        self._reader.join(timeout=5)
        with self._lock:
            if self._connection is not None:
                self._connection.disconnect()
                self._pool.release(self._connection)
                self._connection = None

    def _read(self) -> None:
        broken = 0  # the taking that failed; calls sent on it get no answer
        while (waiting := self._waiting.get()) is not None:
            taking, connection, future = waiting
            if taking == broken:
                future.set_exception(redis.ConnectionError("connection to Redis lost"))
                continue
            try:
                future.set_result(connection.read_response())
            except redis.ResponseError as error:  # the call failed; the connection is fine
                future.set_exception(error)
            except BaseException as error:
                broken = taking
                with self._lock:
                    if self._taking == taking and self._connection is not None:
                        self._connection = None
                        connection.disconnect()
                        self._pool.release(connection)
                future.set_exception(error)
