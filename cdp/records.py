"""The records writer: moves the rows Redis-side changes produce (identity mappings, merges,
consent and suppression statements) from the records stream into their ClickHouse tables.
The row is written in the same atomic step as the change, so the history in ClickHouse
misses nothing; each row keeps its stream entry id (`record_id`), so a retried batch is
not stored twice."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import polars as pl
import redis
from clickhouse_connect.driver.exceptions import OperationalError

from cdp.consumer import Entries, StreamConsumer
from cdp.storage import Warehouse, text
from cdp.streams import WAREHOUSE_GROUP

log = logging.getLogger(__name__)

MS = pl.Datetime("ms", "UTC")
TABLES: dict[str, dict[str, Any]] = {
    "identities": {"kind": pl.Utf8, "value": pl.Utf8, "profile_id": pl.Utf8,
                   "version": pl.UInt64, "at": MS},
    "identity_merges": {"survivor": pl.Utf8, "merged": pl.Utf8, "cause": pl.Utf8,
                        "message_id": pl.Utf8, "event_at": MS, "at": MS},
    "consent_log": {"profile_id": pl.Utf8, "channel": pl.Utf8, "purpose": pl.Utf8,
                    "status": pl.Utf8, "at": MS, "source": pl.Utf8, "message_id": pl.Utf8,
                    "current": pl.Boolean, "recorded_at": MS},
    "suppression_log": {"profile_id": pl.Utf8, "channel": pl.Utf8, "reason": pl.Utf8,
                        "suppressed": pl.Boolean, "at": MS, "source": pl.Utf8},
}  # fmt: skip


def frame_of(table: str, rows: list[dict[str, Any]]) -> pl.DataFrame:
    columns = TABLES[table]
    raw = pl.DataFrame(
        rows, schema={"record_id": pl.Utf8, **{c: _raw(t) for c, t in columns.items()}}
    )
    return raw.with_columns(pl.col(c).cast(t) for c, t in columns.items() if t == MS)


def _raw(dtype: Any) -> Any:
    return pl.Int64 if dtype == MS else dtype


class RecordsWriter(StreamConsumer):
    group = WAREHOUSE_GROUP
    storage_errors = (redis.ConnectionError, OperationalError)

    def __init__(self, client: redis.Redis, warehouse: Warehouse, stream: str, **options: Any):
        super().__init__(client, stream, **options)
        self.warehouse = warehouse

    def handle(self, entries: Entries, *, recovered: bool) -> int:
        by_table: dict[str, list[dict[str, Any]]] = {}
        for entry_id, fields in entries:
            if not fields:
                continue
            table = fields[b"table"].decode()
            if table not in TABLES:
                log.warning("record for unknown table %r dropped", table)
                continue
            # One entry holds a script call's rows for the table; each has its own id.
            base = text(entry_id)
            for index, row in enumerate(orjson.loads(fields[b"rows"])):
                row["record_id"] = f"{base}/{index}"
                by_table.setdefault(table, []).append(row)
        for table, rows in by_table.items():
            frame = frame_of(table, rows)
            if recovered:
                stored = self.warehouse.query_rows(
                    f"SELECT record_id FROM {table} WHERE record_id IN {{ids:Array(String)}}",
                    {"ids": frame["record_id"].to_list()},
                )
                frame = frame.filter(~pl.col("record_id").is_in([row[0] for row in stored]))
            if not frame.is_empty():
                self.warehouse.insert_arrow(table, frame.to_arrow())
        self.ack(entries)
        return sum(len(rows) for rows in by_table.values())
