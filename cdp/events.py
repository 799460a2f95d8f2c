"""One stored event as its consumers see it, read from an events-stream entry (the layout
ingestion writes) or from a ClickHouse `events` row, so live processing and replay share
every step after this one.

An entry holds `n` events: their scalar columns as JSON lines in `d`, and their
properties, traits and context as JSON lines in `p`, `t` and `c`, in the same order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

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
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]

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
            properties=properties if isinstance(properties, dict) else {},
            traits=traits if isinstance(traits, dict) else {},
            context=context if isinstance(context, dict) else {},
        )


def _lines(data: bytes) -> list[Any]:
    # JSON never holds a raw newline, so the lines join into one array: one parse, not n.
    return orjson.loads(b"[" + data.replace(b"\n", b",") + b"]")  # type: ignore[no-any-return]


def entry_events(fields: dict[bytes, bytes]) -> list[StoredEvent]:
    if not fields.get(COLUMNS):
        return []
    parts = [_lines(fields.get(name, b"")) for name in (COLUMNS, PROPERTIES, TRAITS, CONTEXT)]
    of = StoredEvent.of
    return [of(*event) for event in zip(*parts, strict=True)]
