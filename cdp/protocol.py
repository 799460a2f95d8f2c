"""HTTP/1.1 connections with limits the stock server lacks: the request line and headers
together at most `max_header_bytes` (else `431`); they must arrive within `header_timeout`
seconds of the first byte, and a body within `body_timeout` seconds of its headers (else
`408`), so neither a huge header nor a client sending one byte at a time holds memory or a
connection. Sizes are checked before the parser sees the bytes: its header buffer grows by
copying, so a 128 MB header would cost seconds of CPU. The timers cost nothing for the usual
request, whose body comes with its headers: a body timer is armed only when it does not."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cdp.settings import Settings

LINGER_SECONDS = 2.0
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class GuardedHttpProtocol(HttpToolsProtocol):
    max_header_bytes = 16 * 1024
    header_timeout = 10.0
    body_timeout = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._reading_headers = True
        self._header_bytes = 0
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # read and dropped until the connection closes (see _refuse)
        if not self._reading_headers:
            super().data_received(data)
            self._body_expected()
            return
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._too_slow)
        room = self.max_header_bytes - self._header_bytes
        if len(data) <= room:
            self._header_bytes += len(data)
            super().data_received(data)
            self._body_expected()
            return
        # More than the headers may take: they must end within what fits.
        self._header_bytes = self.max_header_bytes
        super().data_received(data[:room])
        if self.transport.is_closing():
            return
        if self._reading_headers and self._header_bytes == self.max_header_bytes:
            self._refuse(431, f"request line and headers exceed {self.max_header_bytes} bytes")
        else:  # they ended (and perhaps a whole request did): the rest goes on as usual
            self.data_received(data[room:])

    def on_headers_complete(self) -> None:
        self._reading_headers = False
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._reading_headers = True  # the next request on this connection
        self._header_bytes = 0
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        super().connection_lost(exc)

    def _body_expected(self) -> None:
        """After the bytes at hand: a request whose body is still to come gets a deadline."""
        if not self._reading_headers and self._body_timer is None and self.cycle is not None:
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_too_slow)

    def _body_too_slow(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if self._reading_headers or self.transport.is_closing() or cycle is None:
            return
        # The application waits for the rest: it is told the client left, and its answer,
        # if it has not started one, is ours.
        cycle.disconnected = True
        cycle.message_event.set()
        if cycle.response_started:
            self.transport.close()
        else:
            self._refuse(408, f"the body did not arrive within {self.body_timeout:.0f}s")

    def _too_slow(self) -> None:
        self._header_timer = None
        if self._reading_headers and not self.transport.is_closing():
            self._refuse(408, f"headers did not arrive within {self.header_timeout:.0f}s")

    def _refuse(self, status: int, message: str) -> None:
        body = orjson.dumps({"success": False, "error": message})
        head = b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
        self.transport.write(
            head + b"content-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % len(body) + body
        )
        # Closing while the client still sends would reset the connection, and the client
        # would lose the answer: say we are done, drop what comes, close a little later.
        self._refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, self.transport.close)


def guarded(
    max_header_bytes: int, header_timeout: float, body_timeout: float
) -> type[GuardedHttpProtocol]:
    """The protocol class with these limits, for `uvicorn.Config(http=...)`."""
    limits: dict[str, Any] = {
        "max_header_bytes": max_header_bytes,
        "header_timeout": header_timeout,
        "body_timeout": body_timeout,
    }
    return type("GuardedHttpProtocol", (GuardedHttpProtocol,), limits)


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """How `cdp serve` (and the tests' live server) serve the app: the guarded protocol, the
    access log of our own (`cdp.access`) in place of the server's."""
    return uvicorn.Config(
        app,
        http=guarded(
            settings.max_header_bytes,
            settings.header_timeout_seconds,
            settings.body_timeout_seconds,
        ),
        access_log=False,
        **options,
    )
