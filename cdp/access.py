"""What an operator sees of each request: one access-log line (method, path, status,
duration, bytes sent, the write key's id — never a key) and requests by route and status in
`/metrics`, paths that match no route included (as `unrouted`). The outermost ASGI layer,
so it sees every answer, the tracking routes' included."""

from __future__ import annotations

import logging
import time
from typing import Any

import orjson
from prometheus_client import Counter, Histogram

from cdp.asgi import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("cdp.access")

REQUESTS = Counter(
    "cdp_http_requests", "HTTP requests answered, by method, route and status",
    ["method", "route", "status"],
)  # fmt: skip
SECONDS = Histogram(
    "cdp_http_request_seconds",
    "Time to answer an HTTP request, by route",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)


METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class AccessLog:
    def __init__(
        self,
        app: ASGIApp,
        *,
        enabled: bool,
        known_paths: frozenset[str],
        json_lines: bool = False,
    ) -> None:
        self.app = app
        self.enabled = enabled
        self.known_paths = known_paths  # answered ahead of the framework's routing
        self.json_lines = json_lines  # the record carries its fields for JSONFormatter
        # Metric children by label values (a look-up per request costs more than the rest).
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status, sent = 500, 0

        async def counted(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, counted)
        finally:
            seconds = time.perf_counter() - started
            self.count(scope, status, seconds)
            if self.enabled and log.isEnabledFor(logging.INFO):
                self.write(scope, status, seconds, sent)

    def count(self, scope: Scope, status: int, seconds: float) -> None:
        route = self.route_of(scope)
        method = scope["method"] if scope["method"] in METHODS else "other"
        key = (method, route, status)
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = REQUESTS.labels(method, route, status)
        counter.inc()
        timer = self._timed.get(route)
        if timer is None:
            timer = self._timed[route] = SECONDS.labels(route)
        timer.observe(seconds)

    def write(self, scope: Scope, status: int, seconds: float, sent: int) -> None:
        key_id = scope.get("state", {}).get("write_key_id")
        extra = None
        if self.json_lines:
            extra = {"access": {
                "client": _client(scope), "method": scope["method"], "path": scope["path"],
                "status": status, "duration_ms": round(seconds * 1000, 3), "bytes": sent,
                "write_key_id": key_id,
            }}  # fmt: skip
        log.info('%s "%s %s" %d %.1fms %dB%s', _client(scope), scope["method"], scope["path"],
                 status, seconds * 1000, sent, f" key={key_id}" if key_id else "",
                 extra=extra)  # fmt: skip

    def route_of(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is not None:
            return str(getattr(route, "path", "unrouted"))
        return scope["path"] if scope["path"] in self.known_paths else "unrouted"


def _client(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "-"


class JSONFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, and an access record's fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        access = getattr(record, "access", None)
        if access:
            entry.update(access)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()
