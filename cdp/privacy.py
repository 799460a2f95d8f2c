"""GDPR: export all we hold on a person (Art. 15 and 20) and erase it everywhere (Art. 17):
the profile's Redis keys, its identifiers in the identity graph, its rows in every ClickHouse
table, and the stream entries that carried its events.

Erasure first waits until every consumer has settled what was received before it, so no
event on its way to ClickHouse or to the profile brings the person back afterwards."""

from __future__ import annotations

from typing import Any

import redis

from cdp import deadletters
from cdp.events import TIMELINE_COLUMNS
from cdp.identity import Kind, tagged
from cdp.profiles import PARTS, Profile, ProfileStore
from cdp.storage import Warehouse, text


def events_of(
    warehouse: Warehouse,
    profile: Profile,
    limit: int | None = None,
    before: tuple[int, str] | None = None,
) -> list[dict[str, Any]]:
    """The profile's events, newest first: those of all its anonymous ids and user ids."""
    where = "(anonymous_id IN {anonymous:Array(String)} OR user_id IN {users:Array(String)})"
    parameters: dict[str, Any] = {
        "anonymous": profile.identifiers("anonymous_id"),
        "users": profile.identifiers("user_id"),
    }
    if before is not None:
        where += " AND (toUnixTimestamp64Milli(timestamp), message_id) < ({ms:Int64}, {mid:String})"
        parameters |= {"ms": before[0], "mid": before[1]}
    sql = (
        f"SELECT {', '.join(TIMELINE_COLUMNS)} FROM events WHERE {where} "
        "ORDER BY timestamp DESC, message_id DESC"
    )
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return warehouse.query_dicts(sql, parameters)


def profile_ids(warehouse: Warehouse, profile: Profile) -> list[str]:
    """The profile's id and every id merged into it, by the live graph or the merge history
    (a replay may have rebuilt the graph through fewer intermediate profiles)."""
    ids = {profile.id, *profile.merged_profiles}
    while True:
        merged = warehouse.query_rows(
            "SELECT DISTINCT merged FROM identity_merges WHERE survivor IN {ids:Array(String)} "
            "AND NOT startsWith(cause, 'refused')",
            {"ids": sorted(ids)},
        )
        found = {row[0] for row in merged} - ids
        if not found:
            return sorted(ids)
        ids |= found


def history(warehouse: Warehouse, profile: Profile) -> dict[str, list[dict[str, Any]]]:
    """The profile's rows in the audit tables: merges, consent and suppression statements."""
    ids = {"ids": profile_ids(warehouse, profile)}
    queries = {
        "merges": "SELECT survivor, merged, cause, message_id, event_at, at FROM identity_merges "
        "WHERE survivor IN {ids:Array(String)} OR merged IN {ids:Array(String)} ORDER BY at",
        "consent_log": "SELECT channel, purpose, status, at, source, message_id, current "
        "FROM consent_log WHERE profile_id IN {ids:Array(String)} ORDER BY at",
        "suppression_log": "SELECT channel, reason, suppressed, at, source FROM suppression_log "
        "WHERE profile_id IN {ids:Array(String)} ORDER BY at",
    }
    return {name: warehouse.query_dicts(sql, ids) for name, sql in queries.items()}


def export(warehouse: Warehouse, profile: Profile) -> dict[str, Any]:
    return {
        "profile": profile.as_dict(),
        **history(warehouse, profile),
        "events": events_of(warehouse, profile),
    }


def erase(
    client: redis.Redis,
    warehouse: Warehouse,
    store: ProfileStore,
    profile: Profile,
    settled_upto: dict[str, tuple[int, int]],
    dead_letter_stream: str,
) -> dict[str, int]:
    """Remove the person everywhere; returns what was removed where."""
    pids = profile_ids(warehouse, profile)
    values = [identity["value"] for identity in profile.identities]
    keys = [store.key(profile.id), *(store.key(profile.id, part) for part in PARTS)]
    days = client.zrange(store.key(profile.id, "days"), 0, -1)
    keys += [f"{store.key(profile.id)}:day:{text(day)}" for day in days]
    keys += [
        f"{store.prefix}:identity:{tagged(Kind(i['kind']), i['value'])}" for i in profile.identities
    ]
    keys += [f"{store.prefix}:merged:{pid}" for pid in pids]
    pipe = client.pipeline(transaction=True)
    pipe.delete(*keys)
    pipe.srem(f"{store.prefix}:profiles", profile.id)
    pipe.srem(f"{store.prefix}:profiles:known", profile.id)
    removed_keys = int(pipe.execute()[0])

    anonymous, users = profile.identifiers("anonymous_id"), profile.identifiers("user_id")
    deletions = {
        "events": ("anonymous_id IN {anonymous:Array(String)} OR user_id IN {users:Array(String)}"),
        "identities": "profile_id IN {pids:Array(String)} OR value IN {values:Array(String)}",
        "identity_merges": "survivor IN {pids:Array(String)} OR merged IN {pids:Array(String)}",
        "consent_log": "profile_id IN {pids:Array(String)}",
        "suppression_log": "profile_id IN {pids:Array(String)}",
        "rejected_events": "multiSearchAny(payload, {values:Array(String)})",
    }
    parameters = {"anonymous": anonymous, "users": users, "pids": pids, "values": values}
    report = {"redis_keys": removed_keys}
    for table, where in deletions.items():
        count = warehouse.query_rows(f"SELECT count() FROM {table} WHERE {where}", parameters)[0][0]
        if count:
            warehouse.command(
                f"ALTER TABLE {table} DELETE WHERE {where} SETTINGS mutations_sync = 2", parameters
            )
        report[table] = int(count)
    for stream, (ms, seq) in settled_upto.items():  # what carried the events, all settled
        report[f"stream_entries:{stream}"] = int(client.xtrim(stream, minid=f"{ms}-{seq + 1}"))
    report["dead_letters"] = deadletters.forget(client, dead_letter_stream, values)
    return report
