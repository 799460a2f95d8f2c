"""The warehouse writer: a consumer group on the events stream that inserts batches into
ClickHouse `events` (polars → Arrow → `insert_arrow`) and acknowledges only after the insert.

Delivery is at-least-once, storage exactly-once: entries left unacknowledged by a crash are
read again on start, and any of their message ids already in ClickHouse are skipped. A row
ClickHouse refuses is isolated by splitting the batch, kept in `rejected_events`, and never
holds back the rows beside it.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl
import redis
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from cdp.storage import Warehouse
from ingestion.stream import JSON_COLUMNS, StreamEntry, decode_entry, trim_consumed

log = logging.getLogger(__name__)

GROUP = "warehouse"
TIME_COLUMNS = ("timestamp", "original_timestamp", "sent_at", "received_at")
TEXT_COLUMNS = (
    "message_id", "type", "event", "name", "anonymous_id", "user_id", "group_id",
    "previous_id", "source_id", "ip", "user_agent", "browser", "os", "device_type",
    "page_url", "page_path", "referrer", "utm_source", "utm_medium", "utm_campaign",
    "utm_term", "utm_content",
)  # fmt: skip
SCHEMA: dict[str, Any] = {
    **{column: pl.Utf8 for column in TEXT_COLUMNS},
    **{column: pl.Int64 for column in TIME_COLUMNS},
    "is_bot": pl.Boolean,
    **{column: pl.Utf8 for column in JSON_COLUMNS},
}


def to_arrow(rows: Sequence[dict[str, Any]]) -> Any:
    frame = pl.DataFrame(
        {column: [row.get(column) for row in rows] for column in SCHEMA}, schema=SCHEMA
    )
    return frame.with_columns(
        [pl.col(column).cast(pl.Datetime("ms", "UTC")) for column in TIME_COLUMNS]
    ).to_arrow()


class WarehouseWriter:
    def __init__(
        self,
        client: redis.Redis,
        warehouse: Warehouse,
        stream: str,
        *,
        batch_size: int = 20_000,
        block_ms: int = 200,
        consumer: str | None = None,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.client = client
        self.warehouse = warehouse
        self.stream = stream
        self.batch_size = batch_size
        self.block_ms = block_ms
        # Stable across restarts on one host, so a restarted writer finds its own pending entries.
        self.consumer = consumer or f"writer-{socket.gethostname()}"
        self.claim_idle_ms = claim_idle_ms
        self.written = 0
        self.rejected = 0
        self.skipped_duplicates = 0

    def ensure_group(self) -> None:
        try:
            self.client.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise

    def recover(self) -> int:
        """Write what this consumer read but never acknowledged, and what dead writers left;
        returns how many entries were settled."""
        settled = 0
        while True:
            response = self.client.xreadgroup(
                GROUP, self.consumer, {self.stream: "0"}, count=self.batch_size
            )
            if not response or not response[0][1]:
                break
            settled += self._write(response[0][1], recovered=True)
        start = "0-0"
        while True:
            start, claimed, *_ = self.client.xautoclaim(
                self.stream, GROUP, self.consumer, self.claim_idle_ms, start, count=self.batch_size
            )
            if claimed:
                settled += self._write(claimed, recovered=True)
            if start in (b"0-0", "0-0"):
                break
        return settled

    def drain_once(self, block_ms: int | None = None) -> int:
        """Read one batch of new entries (waiting up to block_ms), write and acknowledge it."""
        response = self.client.xreadgroup(
            GROUP,
            self.consumer,
            {self.stream: ">"},
            count=self.batch_size,
            block=self.block_ms if block_ms is None else block_ms,
        )
        if not response:
            return 0
        return self._write(response[0][1], recovered=False)

    def run(self, stop: threading.Event) -> None:
        self.ensure_group()
        self.recover()
        last_trim = time.monotonic()
        while not stop.is_set():
            try:
                self.drain_once()
                if time.monotonic() - last_trim > 5:
                    trim_consumed(self.client, self.stream)
                    last_trim = time.monotonic()
            except (redis.ConnectionError, OperationalError) as error:
                log.warning("writer waiting for storage: %s", error)
                stop.wait(1.0)

    def _write(self, raw: list[Any], *, recovered: bool) -> int:
        """Insert, then acknowledge every id read, including entries already trimmed away."""
        entries = [decode_entry(entry_id, fields) for entry_id, fields in raw if fields]
        fresh = self._not_yet_stored(entries) if recovered else entries
        self.skipped_duplicates += len(entries) - len(fresh)
        self._insert(fresh)
        self.client.xack(self.stream, GROUP, *[entry_id for entry_id, _ in raw])
        return len(entries)

    def _not_yet_stored(self, entries: list[StreamEntry]) -> list[StreamEntry]:
        ids = [entry.row["message_id"] for entry in entries]
        stored = set(
            self.warehouse.query_rows(
                "SELECT source_id, message_id FROM events WHERE message_id IN {ids:Array(String)}",
                parameters={"ids": ids},
            )
        )
        return [e for e in entries if (e.row["source_id"], e.row["message_id"]) not in stored]

    def _insert(self, entries: list[StreamEntry]) -> None:
        if not entries:
            return
        try:
            self.warehouse.insert_arrow("events", to_arrow([entry.row for entry in entries]))
            self.written += len(entries)
        except OperationalError:
            raise
        except DatabaseError as error:
            if len(entries) == 1:
                self._reject(entries[0], str(error))
                return
            middle = len(entries) // 2
            self._insert(entries[:middle])
            self._insert(entries[middle:])

    def _reject(self, entry: StreamEntry, reason: str) -> None:
        log.warning("ClickHouse refused event %s: %s", entry.row.get("message_id"), reason[:300])
        self.rejected += 1
        self.warehouse.command(
            "INSERT INTO rejected_events (received_at, source_id, stage, reason, payload) "
            "VALUES ({at:DateTime64(3)}, {source:String}, 'warehouse', {reason:String}, "
            "{payload:String})",
            parameters={
                "at": datetime.now(UTC),
                "source": entry.row.get("source_id", ""),
                "reason": reason[:2000],
                "payload": orjson.dumps(entry.row).decode(),
            },
        )

