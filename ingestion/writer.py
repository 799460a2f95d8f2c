"""The warehouse writer: a consumer group on the events stream that inserts batches into
ClickHouse `events` (JSON lines → polars → Arrow → `insert_arrow`) and acknowledges only
after the insert.

Delivery is at-least-once, storage exactly-once: entries left unacknowledged by a crash are
read again on start, and any of their events already in ClickHouse are skipped. A row
ClickHouse refuses is isolated by splitting the batch, kept in `rejected_events`, and never
holds back the rows beside it; an entry that cannot be read is set aside as a dead letter
(`cdp.consumer`).
"""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime
from typing import Any

import orjson
import polars as pl
import redis
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from prometheus_client import Counter, Histogram

from cdp.consumer import Entries, StreamConsumer
from cdp.events import (
    BOOL_COLUMNS,
    COLUMNS,
    COUNT,
    JSON_COLUMNS,
    JSON_FIELDS,
    TEXT_COLUMNS,
    TIME_COLUMNS,
)
from cdp.storage import Warehouse
from cdp.streams import WAREHOUSE_GROUP

log = logging.getLogger(__name__)

GROUP = WAREHOUSE_GROUP
WRITTEN = Counter("cdp_warehouse_events", "Events the writer settled, by outcome", ["outcome"])
STORED, ALREADY_STORED, REJECTED = (
    WRITTEN.labels(o) for o in ("stored", "already_stored", "rejected")
)
INSERT_SECONDS = Histogram(
    "cdp_warehouse_insert_seconds",
    "Time of one insert into ClickHouse",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SCALARS: dict[str, Any] = {
    **{column: pl.Utf8 for column in TEXT_COLUMNS},
    **{column: pl.Int64 for column in TIME_COLUMNS},
    **{column: pl.Boolean for column in BOOL_COLUMNS},
}


def to_frame(entries: list[tuple[Any, dict[bytes, bytes] | None]]) -> pl.DataFrame:
    """The events of stream entries as one frame with the `events` table's column types."""
    present = [fields for _, fields in entries if fields]
    lines = b"\n".join(fields[COLUMNS] for fields in present)
    if not lines:
        return pl.DataFrame(schema={**SCALARS, **{column: pl.Utf8 for column in JSON_COLUMNS}})
    frame = pl.read_ndjson(io.BytesIO(lines), schema=SCALARS)
    json_columns = [
        pl.Series(
            column,
            b"\n".join(fields[key] for fields in present).decode().split("\n"),
            dtype=pl.Utf8,
        )
        for column, key in JSON_FIELDS.items()
    ]
    return frame.with_columns(
        *[pl.col(column).cast(pl.Datetime("ms", "UTC")) for column in TIME_COLUMNS],
        *json_columns,
    )


class WarehouseWriter(StreamConsumer):
    group = GROUP
    storage_errors = (redis.ConnectionError, OperationalError)

    def __init__(
        self, client: redis.Redis, warehouse: Warehouse, stream: str, **options: Any
    ) -> None:
        # A read gathers up to 10,000 events (`StreamConsumer`'s `gather`).
        super().__init__(client, stream, **{"gather": 10_000, **options})
        self.warehouse = warehouse
        self.written = 0
        self.rejected = 0
        self.skipped_duplicates = 0

    def size(self, entries: Entries) -> int:
        return _events_in(entries)

    def handle(self, entries: Entries, *, recovered: bool) -> int:
        """Insert (what is not stored yet, after a crash), then acknowledge."""
        frame = to_frame(entries)  # an entry it cannot read fails, and is set aside
        fresh = self._not_yet_stored(frame) if recovered else frame
        skipped = frame.height - fresh.height
        if skipped:
            self.skipped_duplicates += skipped
            ALREADY_STORED.inc(skipped)
        self._insert(fresh)
        self.ack(entries)
        return frame.height

    def _not_yet_stored(self, frame: pl.DataFrame) -> pl.DataFrame:
        if frame.is_empty():
            return frame
        stored = self.warehouse.query_rows(
            "SELECT source_id, message_id FROM events WHERE message_id IN {ids:Array(String)}",
            parameters={"ids": frame["message_id"].to_list()},
        )
        if not stored:
            return frame
        seen = pl.DataFrame(stored, schema=["source_id", "message_id"], orient="row")
        return frame.join(seen, on=["source_id", "message_id"], how="anti")

    def _insert(self, frame: pl.DataFrame) -> None:
        if frame.is_empty():
            return
        try:
            with INSERT_SECONDS.time():
                self.warehouse.insert_arrow("events", frame.to_arrow())
            self.written += frame.height
            STORED.inc(frame.height)
        except OperationalError:
            raise
        except DatabaseError as error:
            if frame.height == 1:
                self._reject(frame.row(0, named=True), str(error))
                return
            middle = frame.height // 2
            self._insert(frame.slice(0, middle))
            self._insert(frame.slice(middle))

    def _reject(self, row: dict[str, Any], reason: str) -> None:
        log.warning("ClickHouse refused event %s: %s", row.get("message_id"), reason[:300])
        self.rejected += 1
        REJECTED.inc()
        self.warehouse.command(
            "INSERT INTO rejected_events (received_at, source_id, stage, reason, payload) "
            "VALUES ({at:DateTime64(3)}, {source:String}, 'warehouse', {reason:String}, "
            "{payload:String})",
            parameters={
                "at": datetime.now(UTC),
                "source": row.get("source_id") or "",
                "reason": reason[:2000],
                "payload": orjson.dumps(row, default=str).decode(),
            },
        )


def _events_in(entries: list[Any]) -> int:
    return sum(int(fields[COUNT]) for _, fields in entries if fields)
