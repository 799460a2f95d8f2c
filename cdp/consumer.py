"""A consumer group on a Redis stream, the shape every worker here shares: read new entries,
handle them, acknowledge after the effect is stored. Entries left unacknowledged by a crash
are handled again on start (the consumer's own, then those idle under a dead consumer), so
delivery is at-least-once and each `handle` makes a second delivery a no-op."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, ClassVar

import redis

from cdp.storage import trim_consumed

log = logging.getLogger(__name__)

Entries = list[tuple[Any, dict[bytes, bytes] | None]]


class StreamConsumer:
    group: ClassVar[str]
    # Failures that mean "storage is away, wait": the loop retries quietly after them.
    storage_errors: ClassVar[tuple[type[BaseException], ...]] = (redis.ConnectionError,)

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        *,
        batch_size: int = 200,
        block_ms: int = 200,
        consumer: str | None = None,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.batch_size = batch_size  # stream entries a read
        self.block_ms = block_ms
        # Stable across restarts on one host, so a restarted worker finds its own pending entries.
        self.consumer = consumer or f"{self.group}-{socket.gethostname()}"
        self.claim_idle_ms = claim_idle_ms

    def handle(self, entries: Entries, *, recovered: bool) -> int:
        """Store the effect of the entries and acknowledge them; returns events handled.
        `recovered` entries may have been handled, wholly or partly, before."""
        raise NotImplementedError

    def ack(self, entries: Entries) -> None:
        """Every entry read is acknowledged, including ones already trimmed away."""
        self.client.xack(self.stream, self.group, *[entry_id for entry_id, _ in entries])

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def recover(self) -> int:
        """Handle what this consumer read but never acknowledged, and what dead consumers
        left; returns how many events were handled."""
        handled = 0
        while True:
            response: Any = self.client.xreadgroup(
                self.group, self.consumer, {self.stream: "0"}, count=self.batch_size
            )
            if not response or not response[0][1]:
                break
            handled += self.handle(response[0][1], recovered=True)
        start = "0-0"
        while True:
            start, claimed, *_ = self.client.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start,
                count=self.batch_size,
            )  # fmt: skip
            if claimed:
                handled += self.handle(claimed, recovered=True)
            if start in (b"0-0", "0-0"):
                break
        return handled

    def read_new(self, block_ms: int | None) -> Entries:
        response: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch_size, block=block_ms
        )
        return list(response[0][1]) if response else []

    def drain_once(self, block_ms: int | None = None) -> int:
        """Read new entries (waiting up to block_ms for the first) and handle them."""
        entries = self.read_new(self.block_ms if block_ms is None else block_ms)
        return self.handle(entries, recovered=False) if entries else 0

    def run(self, stop: threading.Event) -> None:
        recovering = True
        last_trim = time.monotonic()
        while not stop.is_set():
            try:
                if recovering:  # also after an outage: the group may have to be made again
                    self.ensure_group()
                    self.recover()
                    recovering = False
                self.drain_once()
                if time.monotonic() - last_trim > 5:
                    trim_consumed(self.client, self.stream)
                    last_trim = time.monotonic()
            except self.storage_errors as error:
                log.warning("%s waiting for storage: %s", self.group, error)
                recovering = True
                stop.wait(1.0)
            except Exception:
                # What was read stays unacknowledged and is handled again by recover().
                log.exception("%s failed; retrying", self.group)
                recovering = True
                stop.wait(1.0)
