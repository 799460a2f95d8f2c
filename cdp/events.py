"""The `events` table's columns (the one source of their names and types: the DDL, the
writer's frame, the stream layout and the reads derive from it), and one stored event as
its consumers see it, read from an events-stream entry (the layout ingestion writes) or
from a ClickHouse `events` row, so live processing and replay share every step after it.

An entry holds `n` events: their scalar columns as JSON lines in `d`, and their
properties, traits and context as JSON lines in `p`, `t` and `c`, in the same order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # ClickHouse's


EVENT_COLUMNS: tuple[Column, ...] = tuple(
    Column(name, type_)
    for name, type_ in (
        ("message_id", "String"),
        ("type", "LowCardinality(String)"),
        ("event", "String"),
        ("name", "String"),
        ("anonymous_id", "String"),
        ("user_id", "String"),
        ("group_id", "String"),
        ("previous_id", "String"),
        ("timestamp", "DateTime64(3, 'UTC')"),  # when it happened, corrected for clock skew
        ("original_timestamp", "Nullable(DateTime64(3, 'UTC'))"),
        ("sent_at", "Nullable(DateTime64(3, 'UTC'))"),
        ("received_at", "DateTime64(3, 'UTC')"),
        ("source_id", "LowCardinality(String)"),
        ("ip", "String"),
        ("user_agent", "String"),
        ("browser", "LowCardinality(String)"),
        ("os", "LowCardinality(String)"),
        ("device_type", "LowCardinality(String)"),
        ("is_bot", "Bool"),
        ("page_url", "String"),
        ("page_path", "String"),
        ("referrer", "String"),
        ("utm_source", "String"),
        ("utm_medium", "String"),
        ("utm_campaign", "String"),
        ("utm_term", "String"),
        ("utm_content", "String"),
        ("properties", "JSON"),
        ("traits", "JSON"),
        ("context", "JSON"),
    )
)
TEXT_COLUMNS = tuple(c.name for c in EVENT_COLUMNS if "String" in c.type)
TIME_COLUMNS = tuple(c.name for c in EVENT_COLUMNS if "DateTime64" in c.type)  # epoch ms
BOOL_COLUMNS = tuple(c.name for c in EVENT_COLUMNS if c.type == "Bool")
JSON_COLUMNS = tuple(c.name for c in EVENT_COLUMNS if c.type == "JSON")
SCALAR_COLUMNS = tuple(c.name for c in EVENT_COLUMNS if c.type != "JSON")


# What the profile timeline and export show of each event (`EventOut` in the API).
TIMELINE_COLUMNS = ("message_id", "type", "event", "name", "anonymous_id", "user_id",
                    "timestamp", "received_at", "page_url", *JSON_COLUMNS)  # fmt: skip


def column_definitions(columns: tuple[Column, ...] = EVENT_COLUMNS) -> str:
    """The columns as a CREATE TABLE lists them."""
    return ",\n".join(f"{c.name} {c.type}" for c in columns)


# A stream entry's fields: the count, the scalar columns as JSON lines, then one field of
# JSON lines for each JSON column.
COUNT, COLUMNS, PROPERTIES, TRAITS, CONTEXT = b"n", b"d", b"p", b"t", b"c"
JSON_FIELDS = {"properties": PROPERTIES, "traits": TRAITS, "context": CONTEXT}


@dataclass(slots=True)  # not frozen: a frozen dataclass is slow to make, and many are
class StoredEvent:
    message_id: str
    source_id: str
    type: str
    event: str
    anonymous_id: str
    user_id: str
    previous_id: str
    timestamp: int  # epoch milliseconds, UTC
    is_bot: bool  # its user agent says so (`ingestion/normalize.py`)
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]

    @property
    def crawled(self) -> bool:
        """A bot's track event (a crawler rendering the shop's pages runs the snippet): stored
        and counted, but no shopper's doing (no views, cart, orders or audience history)."""
        return self.is_bot and self.type == "track"

    @classmethod
    def of(cls, columns: dict[str, Any], properties: Any, traits: Any, context: Any) -> StoredEvent:
        return cls(
            message_id=columns["message_id"],
            source_id=columns["source_id"],
            type=columns["type"],
            event=columns.get("event") or "",
            anonymous_id=columns.get("anonymous_id") or "",
            user_id=columns.get("user_id") or "",
            previous_id=columns.get("previous_id") or "",
            timestamp=int(columns["timestamp"]),
            is_bot=bool(columns.get("is_bot")),
            properties=properties if isinstance(properties, dict) else {},
            traits=traits if isinstance(traits, dict) else {},
            context=context if isinstance(context, dict) else {},
        )


# What a StoredEvent reads of an `events` row, as SELECT expressions (times in epoch ms,
# JSON columns as text), in the order `StoredEvent.from_row` takes them.
STORED_SCALARS = ("message_id", "source_id", "type", "event", "anonymous_id", "user_id",
                  "previous_id", "timestamp", "is_bot")  # fmt: skip
STORED_SELECT = ", ".join(
    [f"toUnixTimestamp64Milli({n})" if n in TIME_COLUMNS else n for n in STORED_SCALARS]
    + [f"toJSONString({n})" for n in JSON_COLUMNS]
)


def from_row(row: Sequence[Any]) -> StoredEvent:
    """The event of a row selected with `STORED_SELECT`."""
    width = len(STORED_SCALARS)
    columns = dict(zip(STORED_SCALARS, row[:width], strict=True))
    return StoredEvent.of(columns, *(orjson.loads(text) for text in row[width:]))


def system_event(event: str, at: int, message_id: str, source_id: str,
                 properties: dict[str, Any]) -> dict[str, bytes]:  # fmt: skip
    """The stream fields of one track event the platform itself records (no person's: its
    ids are empty), in the layout ingestion writes, so the warehouse writer stores it."""
    columns: dict[str, Any] = {
        c.name: "" if c.name in TEXT_COLUMNS else False if c.name in BOOL_COLUMNS else None
        for c in EVENT_COLUMNS if c.type != "JSON"
    }  # fmt: skip
    columns.update(message_id=message_id, type="track", event=event, timestamp=at,
                   received_at=at, source_id=source_id)  # fmt: skip
    return {"n": b"1", "d": orjson.dumps(columns), "p": orjson.dumps(properties), "t": b"{}",
            "c": b"{}"}  # fmt: skip


def _lines(data: bytes) -> list[Any]:
    # JSON never holds a raw newline, so the lines join into one array: one parse, not n.
    return orjson.loads(b"[" + data.replace(b"\n", b",") + b"]")  # type: ignore[no-any-return]


def entry_events(fields: dict[bytes, bytes]) -> list[StoredEvent]:
    if not fields.get(COLUMNS):
        return []
    parts = [_lines(fields.get(name, b"")) for name in (COLUMNS, PROPERTIES, TRAITS, CONTEXT)]
    of = StoredEvent.of
    return [of(*event) for event in zip(*parts, strict=True)]
