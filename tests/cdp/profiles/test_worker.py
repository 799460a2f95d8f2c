"""The profile worker and the records writer on real Valkey and chdb: entries handled again
after a crash change nothing twice."""

from __future__ import annotations

import threading

import orjson
import pytest
import redis

from cdp.consumer import Entries
from cdp.events import entry_events
from cdp.profiles.store import ProfileStore
from cdp.profiles.worker import ProfileWorker
from cdp.records import RecordsWriter
from cdp.schema import migrate
from cdp.settings import Settings
from cdp.storage import Warehouse
from tests.streams import append, rows


class Crash(Exception):
    pass


def test_entries_applied_but_not_acknowledged_count_once(
    settings: Settings, redis_client: redis.Redis
) -> None:
    store = ProfileStore(redis_client, settings.redis_prefix, settings.records_stream)
    worker = ProfileWorker(redis_client, store, settings.events_stream, consumer="w1")
    worker.ensure_group()
    append(settings, rows(5, anonymousId="visitor"))
    append(settings, rows(3, prefix="n", anonymousId="visitor"))

    entries = worker.read_new(None)
    store.apply_entries([(i.decode(), entry_events(f or {})) for i, f in entries])  # then died
    assert worker.recover() == 8  # the same worker, restarted, handles its pending entries
    profile = store.read(store.find("a", "visitor") or "")
    assert profile is not None and profile.features["events"] == 8
    assert worker.drain_once(block_ms=10) == 0
    pending = redis_client.xpending(settings.events_stream, "profiles")["pending"]
    assert pending == 0


class CrashBeforeAck(RecordsWriter):
    def ack(self, entries: Entries) -> None:
        raise Crash


def test_records_inserted_but_not_acknowledged_are_stored_once(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    migrate(warehouse)
    store = ProfileStore(redis_client, settings.redis_prefix, settings.records_stream)
    append(settings, rows(1, anonymousId="a1"))
    worker = ProfileWorker(redis_client, store, settings.events_stream)
    worker.ensure_group()
    worker.drain_once(block_ms=10)  # one new profile: one identity record
    worker.wait()

    crashing = CrashBeforeAck(redis_client, warehouse, settings.records_stream, consumer="r1")
    crashing.ensure_group()
    with pytest.raises(Crash):
        crashing.drain_once(block_ms=10)
    assert warehouse.query_rows("SELECT count() FROM identities")[0][0] == 1

    restarted = RecordsWriter(redis_client, warehouse, settings.records_stream, consumer="r1")
    assert restarted.recover() == 1
    assert warehouse.query_rows("SELECT count() FROM identities")[0][0] == 1
    assert redis_client.xpending(settings.records_stream, "warehouse")["pending"] == 0


def test_entries_without_events_are_acknowledged(
    settings: Settings, redis_client: redis.Redis
) -> None:
    # An entry trimmed after it was handed out comes back without its fields.
    store = ProfileStore(redis_client, settings.redis_prefix, settings.records_stream)
    worker = ProfileWorker(redis_client, store, settings.events_stream, consumer="w1")
    worker.ensure_group()
    append(settings, rows(1))
    [(entry_id, _)] = worker.read_new(None)
    redis_client.xdel(settings.events_stream, entry_id)
    assert worker.recover() == 0
    assert redis_client.xpending(settings.events_stream, "profiles")["pending"] == 0


def test_records_coming_while_the_writer_naps_go_in_one_insert(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """A script call writes an entry of records (a batch's transitions, a new profile's
    identity): inserted each alone, every few milliseconds under load, they cost the
    embedded ClickHouse most of a core (a part made and merged each)."""
    migrate(warehouse)
    writer = RecordsWriter(redis_client, warehouse, settings.records_stream, gather_wait_ms=300)
    writer.ensure_group()

    def record(n: int) -> None:
        row = {"kind": "anonymous_id", "value": f"v{n}", "profile_id": f"p{n}", "version": 1,
               "at": 1_700_000_000_000}  # fmt: skip
        redis_client.xadd(settings.records_stream, {"table": "identities",
                                                    "rows": orjson.dumps([row])})  # fmt: skip

    record(0)
    later = threading.Timer(0.1, lambda: [record(n) for n in range(1, 20)])
    later.start()
    assert writer.drain_once(block_ms=10) == 20  # the first, and those that came meanwhile
    later.join()
    assert warehouse.query_rows("SELECT count() FROM identities")[0][0] == 20
