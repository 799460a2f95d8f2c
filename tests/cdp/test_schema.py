from cdp.schema import MIGRATIONS, migrate
from cdp.storage import Warehouse


def test_migrations_apply_once_and_are_recorded(warehouse: Warehouse) -> None:
    assert migrate(warehouse) == [m.version for m in MIGRATIONS]
    assert migrate(warehouse) == []
    versions = warehouse.query_rows("SELECT version FROM schema_migrations ORDER BY version")
    assert [v for (v,) in versions] == [m.version for m in MIGRATIONS]


def test_events_table_is_partitioned_by_month_and_ordered_for_scans(warehouse: Warehouse) -> None:
    migrate(warehouse)
    [(partition_key, sorting_key)] = warehouse.query_rows(
        "SELECT partition_key, sorting_key FROM system.tables "
        "WHERE database = currentDatabase() AND name = 'events'"
    )
    assert partition_key == "toYYYYMM(timestamp)"
    assert sorting_key == "type, event, anonymous_id, timestamp"
    columns = dict(
        warehouse.query_rows(
            "SELECT name, type FROM system.columns "
            "WHERE database = currentDatabase() AND table = 'events'"
        )
    )
    for json_column in ("properties", "traits", "context"):
        assert columns[json_column] == "JSON"
    for name in ("message_id", "anonymous_id", "user_id", "sent_at", "received_at", "source_id"):
        assert name in columns
