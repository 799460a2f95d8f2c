"""A profile's history in ClickHouse: its event timeline across all its identifiers, and
its rows in the audit tables (merges, consent and suppression statements, audience enters
and exits with their reasons). They serve the profile API and the export."""

from __future__ import annotations

from typing import Any

import orjson

from cdp.events import TIMELINE_COLUMNS
from cdp.profiles.reader import Profile
from cdp.storage import Warehouse


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


def audit(
    warehouse: Warehouse, profile: Profile, tables: tuple[str, ...] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The profile's rows in the audit tables (`tables` of them, or all): merges, consent and
    suppression statements, and the audiences it entered and left (the profiling done on the
    person, with each decision's reason: GDPR Art. 15 asks for it)."""
    ids = {"ids": profile_ids(warehouse, profile)}
    queries = {
        "merges": "SELECT survivor, merged, cause, message_id, event_at, at FROM identity_merges "
        "WHERE survivor IN {ids:Array(String)} OR merged IN {ids:Array(String)} ORDER BY at",
        "consent_log": "SELECT channel, purpose, status, at, source, message_id, current "
        "FROM consent_log WHERE profile_id IN {ids:Array(String)} ORDER BY at",
        "suppression_log": "SELECT channel, reason, suppressed, at, source FROM suppression_log "
        "WHERE profile_id IN {ids:Array(String)} ORDER BY at",
        "audience_log": "SELECT audience_id, profile_id, change, at, cause, reason "
        "FROM audience_log WHERE profile_id IN {ids:Array(String)} ORDER BY at, audience_id",
    }
    found = {name: warehouse.query_dicts(sql, ids) for name, sql in queries.items()
             if tables is None or name in tables}  # fmt: skip
    for row in found.get("audience_log", []):
        row["reason"] = orjson.loads(row["reason"])  # each condition, as it was then
    return found


def timeline(
    warehouse: Warehouse, profile: Profile, limit: int, before: tuple[int, str] | None
) -> tuple[list[dict[str, Any]], str | None]:
    """A page of the timeline, and the cursor of the next page (None at the end)."""
    events = events_of(warehouse, profile, limit=limit + 1, before=before)
    page = events[:limit]
    if len(events) <= limit:
        return page, None
    last = page[-1]
    return page, f"{int(last['timestamp'].timestamp() * 1000)}:{last['message_id']}"


def decode_cursor(cursor: str) -> tuple[int, str]:
    """The position a `next_cursor` names; ValueError for one this API did not give."""
    ms, _, message_id = cursor.partition(":")
    if not ms.isdigit() or not message_id:
        raise ValueError(cursor)
    return int(ms), message_id
