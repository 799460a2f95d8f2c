"""Replay: rebuild all live profile state from ClickHouse. The events, in time order, go
through the same change function and script as live ones; consent and suppression set
through the API (not carried by events) come back from their audit logs. The audit tables
are not written again; identity mappings are, so `profile_events` follows the new graph.

Run it while no worker runs (their writes would interleave with the rebuild), then
`streams.align_profiles_group`, so that the profile workers go on exactly after what the warehouse
held: entries replayed are not applied again, and none is missed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis

from cdp.events import STORED_SELECT, StoredEvent, from_row
from cdp.profiles.keyspace import Keyspace
from cdp.profiles.store import Applied, ProfileStore
from cdp.storage import Warehouse

EVENTS = f"SELECT {STORED_SELECT} FROM events ORDER BY timestamp, message_id"
BLOCK = 2_000


def wipe(client: redis.Redis, prefix: str) -> int:
    removed = 0
    for pattern in Keyspace(prefix).rebuilt():
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) == 1000:
                removed += int(client.delete(*batch))
                batch = []
        if batch:
            removed += int(client.delete(*batch))
    return removed


def replay(
    warehouse: Warehouse,
    store: ProfileStore,
    on_progress: Callable[[int, int], None] | None = None,
) -> Applied:
    """Rebuild; `on_progress(done, total)` is called as events are applied."""
    total = int(warehouse.query_rows("SELECT count() FROM events")[0][0])
    wipe(store.client, store.prefix)
    applied = Applied()
    done = 0
    with warehouse.locked(), warehouse.client.query_row_block_stream(EVENTS) as blocks:
        pending: list[StoredEvent] = []
        for block in blocks:
            pending.extend(from_row(row) for row in block)
            if len(pending) >= BLOCK:
                applied.add(store.apply_events(pending, replaying=True))
                done += len(pending)
                pending = []
                if on_progress:
                    on_progress(done, total)
        applied.add(store.apply_events(pending, replaying=True))
        done += len(pending)
    if on_progress:
        on_progress(done, total)
    store.apply(_statements(warehouse), replaying=True)
    return applied


def _statements(warehouse: Warehouse) -> list[dict[str, Any]]:
    """Consent and suppression given outside events, in the order they were given."""
    rows = warehouse.query_rows(
        """
        SELECT toUnixTimestamp64Milli(at) AS at, 'consent', profile_id, channel, purpose, status,
               source
        FROM consent_log WHERE message_id = ''
        UNION ALL
        SELECT toUnixTimestamp64Milli(at), if(suppressed, 'suppress', 'unsuppress'), profile_id,
               channel, reason, '', source
        FROM suppression_log
        ORDER BY at
        """
    )
    changes = []
    for at, kind, profile_id, channel, purpose_or_reason, status, source in rows:
        change = {"kind": kind, "profile": profile_id, "t": at, "source": source}
        if kind == "consent":
            change["consent"] = [channel, purpose_or_reason, status]
        else:
            change |= {"channel": channel, "reason": purpose_or_reason}
        changes.append(change)
    return changes
