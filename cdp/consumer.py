"""A consumer group on a Redis stream, the shape every worker here shares: read new entries,
handle them, acknowledge after the effect is stored. Entries left unacknowledged by a crash
are handled again on start (the consumer's own, then those idle under a dead consumer), so
delivery is at-least-once and each `handle` makes a second delivery a no-op.

An entry that cannot be processed never blocks the others: after a failure the entries are
tried again one by one, and one that fails `tries` times is set aside as a dead letter
(`cdp.deadletters`) with its error, and acknowledged."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, ClassVar

import redis

from cdp.deadletters import set_aside
from cdp.streams import trim_consumed

log = logging.getLogger(__name__)

Entry = tuple[Any, dict[bytes, bytes] | None]
Entries = list[Entry]


class StreamConsumer:
    group: ClassVar[str]
    # Failures that mean "storage is away (or the like), wait": the loop retries after them,
    # and sets nothing aside.
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
        tries: int = 3,
        index: int = 0,
        gather: int = 0,
        gather_wait_ms: int = 500,
    ) -> None:
        """`index`: which of the host's workers of this group it is (when several run);
        `gather`: how much (by `size`) a read gathers before it is handled, for ClickHouse's
        sake (it wants few large inserts): while less came, one nap of `gather_wait_ms`, then
        what came meanwhile. One nap, not a wake-up per arriving entry: the event loop keeps
        the GIL."""
        self.client = client
        self.stream = stream
        self.batch_size = batch_size  # stream entries a read
        self.block_ms = block_ms
        # Stable across restarts on one host, so a restarted worker finds its own pending entries.
        self.consumer = consumer or f"{self.group}-{socket.gethostname()}" + (
            f"-{index}" if index else ""
        )
        self.claim_idle_ms = claim_idle_ms
        self.tries = tries  # before an entry is set aside
        self.gather = gather
        self.gather_wait_ms = gather_wait_ms
        self.set_aside = 0

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
            handled += self.handle_isolated(response[0][1])
        start = "0-0"
        while True:
            start, claimed, *_ = self.client.xautoclaim(
                self.stream, self.group, self.consumer, self.claim_idle_ms, start,
                count=self.batch_size,
            )  # fmt: skip
            if claimed:
                handled += self.handle_isolated(claimed)
            if start in (b"0-0", "0-0"):
                break
        return handled

    def handle_isolated(self, entries: Entries) -> int:
        """Handle recovered entries; when that fails, each alone, so a bad one holds back
        nobody: it is tried `tries` times in all, then set aside as a dead letter."""
        try:
            return self.handle(entries, recovered=True)
        except self.storage_errors:
            raise
        except Exception as error:
            if len(entries) > 1:
                log.warning("%s: a batch failed (%s); trying its entries one by one",
                            self.group, error)  # fmt: skip
            else:
                log.warning("%s: entry %s failed: %s", self.group, entries[0][0], error)
            self.reset()
        handled = 0
        for entry in entries:
            handled += self._handle_alone(entry)
        return handled

    def _handle_alone(self, entry: Entry) -> int:
        error: BaseException | None = None
        for attempt in range(1, self.tries):
            try:
                return self.handle([entry], recovered=True)
            except self.storage_errors:
                raise
            except Exception as failure:
                error = failure
                self.reset()
                log.warning("%s: entry %s failed (try %d of %d): %s",
                            self.group, entry[0], attempt + 1, self.tries, failure)  # fmt: skip
                time.sleep(0.05 * 2**attempt)
        error = error or RuntimeError("failed as part of its batch")
        log.error("%s: entry %s set aside as a dead letter: %s", self.group, entry[0], error)
        set_aside(self.client, self.stream, self.group, entry, error, self.tries)
        self.set_aside += 1
        return 0

    def reset(self) -> None:
        """Forget work under way after a failure (its entries stay pending)."""

    def read_new(self, block_ms: int | None) -> Entries:
        response: Any = self.client.xreadgroup(
            self.group, self.consumer, {self.stream: ">"}, count=self.batch_size, block=block_ms
        )
        return list(response[0][1]) if response else []

    def drain_once(self, block_ms: int | None = None) -> int:
        """Read new entries (waiting up to block_ms for the first), gather more (`gather`),
        and handle them."""
        entries = self.read_new(self.block_ms if block_ms is None else block_ms)
        return self.handle(self.gathered(entries), recovered=False) if entries else 0

    def size(self, entries: Entries) -> int:
        """How much the entries hold, as `gather` counts it."""
        return len(entries)

    def gathered(self, entries: Entries) -> Entries:
        held = self.size(entries)
        if held < self.gather:
            time.sleep(self.gather_wait_ms / 1000)
            while held < self.gather:
                more = self.read_new(None)
                if not more:
                    break
                entries += more
                held += self.size(more)
        return entries

    def finish(self) -> int:
        """Handle what the stream holds now, without waiting for more: the last step of a
        graceful stop, so what was acknowledged to clients is stored before we go."""
        handled = 0
        while entries := self.read_new(None):
            handled += self.handle(entries, recovered=False)
        return handled

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
                log.warning("%s waiting: %s", self.group, error)
                recovering = True
                stop.wait(1.0)
            except Exception as error:
                # What was read stays pending; recover() handles it again, entry by entry.
                log.warning("%s failed (%s); recovering", self.group, error)
                self.reset()
                recovering = True
                stop.wait(0.1)
