"""The `events` columns have one source: what every reader and writer uses agrees with it."""

from dataclasses import fields
from datetime import UTC, datetime

from cdp.api.profiles import EventOut
from cdp.events import (
    EVENT_COLUMNS,
    JSON_COLUMNS,
    SCALAR_COLUMNS,
    STORED_SCALARS,
    TIMELINE_COLUMNS,
    StoredEvent,
    column_definitions,
)
from ingestion.normalize import to_row
from ingestion.segment import SegmentEvent


def test_the_row_ingestion_makes_has_exactly_the_tables_columns() -> None:
    event = SegmentEvent.model_validate({"type": "track", "event": "x", "userId": "u"})
    row = to_row(event, received_at=datetime.now(UTC), source_id="s", ip="127.0.0.1")
    assert tuple(row.columns) == SCALAR_COLUMNS
    assert row._fields[1:] == JSON_COLUMNS


def test_readers_name_only_columns_the_table_has() -> None:
    names = {c.name for c in EVENT_COLUMNS}
    assert set(TIMELINE_COLUMNS) <= names and set(STORED_SCALARS) <= names
    assert set(EventOut.model_fields) == set(TIMELINE_COLUMNS)
    stored = {f.name for f in fields(StoredEvent)}
    assert stored == set(STORED_SCALARS) | set(JSON_COLUMNS)


def test_the_ddl_lists_every_column_once() -> None:
    lines = column_definitions().split(",\n")
    assert [line.split()[0] for line in lines] == [c.name for c in EVENT_COLUMNS]
