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
from cdp.events import Column, column_definitions
from cdp.storage import Warehouse, text
from cdp.streams import WAREHOUSE_GROUP

log = logging.getLogger(__name__)

MS_TYPE = "DateTime64(3, 'UTC')"
# The audit tables' columns, one source: their DDL (`cdp/schema.py`) and the frames written
# here derive from it. Each table also has `record_id String` first: the row's stream id.
AUDIT_COLUMNS: dict[str, tuple[Column, ...]] = {
    table: tuple(Column(name, type_) for name, type_ in columns)
    for table, columns in {
        "identities": (("kind", "LowCardinality(String)"), ("value", "String"),
                       ("profile_id", "String"), ("version", "UInt64"), ("at", MS_TYPE)),
        "identity_merges": (("survivor", "String"), ("merged", "String"), ("cause", "String"),
                            ("message_id", "String"), ("event_at", MS_TYPE), ("at", MS_TYPE)),
        "consent_log": (("profile_id", "String"), ("channel", "LowCardinality(String)"),
                        ("purpose", "LowCardinality(String)"),
                        ("status", "LowCardinality(String)"), ("at", MS_TYPE),
                        ("source", "LowCardinality(String)"), ("message_id", "String"),
                        ("current", "Bool"), ("recorded_at", MS_TYPE)),
        "suppression_log": (("profile_id", "String"), ("channel", "LowCardinality(String)"),
                            ("reason", "LowCardinality(String)"), ("suppressed", "Bool"),
                            ("at", MS_TYPE), ("source", "LowCardinality(String)")),
        # Audience transitions (`rules/changes.py` describes them).
        "audience_log": (("audience_id", "LowCardinality(String)"), ("profile_id", "String"),
                         ("change", "LowCardinality(String)"), ("at", MS_TYPE),
                         ("cause", "LowCardinality(String)"), ("generation", "UInt64"),
                         ("reason", "String")),
    }.items()
}  # fmt: skip
MS = pl.Datetime("ms", "UTC")
POLARS_TYPES: dict[str, Any] = {"String": pl.Utf8, "LowCardinality(String)": pl.Utf8,
                                "UInt64": pl.UInt64, "Bool": pl.Boolean, MS_TYPE: MS}  # fmt: skip
TABLES: dict[str, dict[str, Any]] = {
    table: {c.name: POLARS_TYPES[c.type] for c in columns}
    for table, columns in AUDIT_COLUMNS.items()
}


def audit_table_columns(table: str) -> str:
    """The table's columns as its CREATE TABLE lists them."""
    return "record_id String,\n" + column_definitions(AUDIT_COLUMNS[table])


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

    def __init__(
        self, client: redis.Redis, warehouse: Warehouse, stream: str, **options: Any
    ) -> None:
        # An entry per script call (a batch of profiles' transitions, a merge, a consent
        # statement): a read gathers up to 1,000 as the events writer does, or every few
        # milliseconds under load would be an insert (a part for ClickHouse to make and merge).
        super().__init__(client, stream, **{"gather": 1_000, **options})
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
