"""The warehouse writer on real Valkey and chdb: at-least-once delivery, exactly-once rows."""

import asyncio

import redis
import redis.asyncio as aioredis

from cdp.schema import migrate
from cdp.settings import Settings
from cdp.storage import Warehouse
from cdp.streams import entry_id, oldest_pending, trim_consumed
from ingestion.stream import EventStream
from ingestion.writer import GROUP, WarehouseWriter, to_frame
from tests.conftest import count_events
from tests.streams import append, rows


def test_concurrent_small_requests_are_committed_together_and_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    requests = [rows(3, prefix=f"r{i % 10}") for i in range(40)]  # each request sent 4 times

    async def run() -> list[int]:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            stream = EventStream(client, settings.events_stream, settings.redis_prefix, 3600)
            return await asyncio.gather(*(stream.append(batch) for batch in requests))
        finally:
            await client.aclose()

    added = asyncio.run(run())
    assert sum(added) == 30 and set(added) <= {0, 3}
    entries = redis_client.xrange(settings.events_stream)
    assert sum(int(fields[b"n"]) for _, fields in entries) == 30
    assert len(entries) < 10  # grouped into few calls, not one per request


def writer(settings: Settings, client: redis.Redis, warehouse: Warehouse) -> WarehouseWriter:
    migrate(warehouse)
    made = WarehouseWriter(
        client, warehouse, settings.events_stream, batch_size=50, block_ms=10, gather_wait_ms=10
    )
    made.ensure_group()
    return made


def drain(made: WarehouseWriter) -> None:
    while made.drain_once(block_ms=10):
        pass


def test_append_skips_message_ids_seen_before(
    settings: Settings, redis_client: redis.Redis
) -> None:
    assert append(settings, rows(10)) == 10
    assert append(settings, rows(12)) == 2
    assert append(settings, rows(12)) == 0
    # One entry a store call, holding only its new events; none for a call that added nothing.
    entries = redis_client.xrange(settings.events_stream)
    assert [int(fields[b"n"]) for _, fields in entries] == [10, 2]


def test_drained_entries_are_stored_and_acknowledged(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    made = writer(settings, redis_client, warehouse)
    for start in range(0, 120, 20):
        append(settings, rows(120)[start : start + 20])
    drain(made)
    assert count_events(warehouse) == 120
    assert redis_client.xpending(settings.events_stream, GROUP)["pending"] == 0
    assert trim_consumed(redis_client, settings.events_stream) == 5  # all but the last read


def test_a_crash_between_insert_and_ack_stores_nothing_twice(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    crashed = writer(settings, redis_client, warehouse)
    for start in range(0, 80, 10):  # eight requests of ten events: eight stream entries
        append(settings, rows(80)[start : start + 10])
    # The crashed writer read five entries, inserted three, and died before acknowledging.
    response = redis_client.xreadgroup(
        GROUP, crashed.consumer, {settings.events_stream: ">"}, count=5
    )
    crashed._insert(to_frame(response[0][1][:3]))
    assert count_events(warehouse) == 30

    restarted = writer(settings, redis_client, warehouse)
    assert restarted.recover() == 50
    drain(restarted)
    assert count_events(warehouse) == 80
    assert warehouse.query_rows("SELECT uniqExact(message_id) FROM events")[0][0] == 80
    assert restarted.skipped_duplicates == 30
    assert redis_client.xpending(settings.events_stream, GROUP)["pending"] == 0


def test_entries_of_a_dead_writer_are_claimed(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    writer(settings, redis_client, warehouse)
    append(settings, rows(10))
    redis_client.xreadgroup(GROUP, "writer-gone", {settings.events_stream: ">"}, count=10)
    survivor = WarehouseWriter(
        redis_client, warehouse, settings.events_stream, consumer="writer-2", claim_idle_ms=0
    )
    assert survivor.recover() == 10
    assert count_events(warehouse) == 10


def test_a_row_clickhouse_refuses_is_set_aside_and_its_neighbours_stored(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    made = writer(settings, redis_client, warehouse)
    good = rows(40, prefix="good")
    # A path given twice ("a.b" and a → b) is valid JSON that ClickHouse's JSON type refuses.
    poison = rows(1, prefix="poison", properties={"a.b": 1, "a": {"b": 2}})
    append(settings, good[:20] + poison + good[20:])
    drain(made)
    assert count_events(warehouse) == 40
    assert made.rejected == 1
    [(reason, payload)] = warehouse.query_rows("SELECT reason, payload FROM rejected_events")
    assert "poison-0" in payload and "Duplicate path" in reason
    assert redis_client.xpending(settings.events_stream, GROUP)["pending"] == 0


def test_a_group_described_with_pending_entries_acknowledged_since_trims_safely(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # Workers acknowledge from another thread, so a group's description may already be old.
    append(settings, rows(2))
    redis_client.xgroup_create(settings.events_stream, "late", id="0")
    [(_, entries)] = redis_client.xreadgroup("late", "c", {settings.events_stream: ">"})
    stale = {"name": "late", "pending": 1}
    assert oldest_pending(redis_client, settings.events_stream, stale) == entry_id(entries[0][0])
    redis_client.xack(settings.events_stream, "late", entries[0][0])
    assert oldest_pending(redis_client, settings.events_stream, stale) is None
