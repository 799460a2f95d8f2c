"""The Redis streams and their consumer groups: names, and everything that inspects or
settles them (positions, backlogs, trimming, waiting until what came before is processed).

Streams (keys under the Redis prefix, named by `Settings`): `stream:events` (what the
tracking API accepted), `stream:records` (rows bound for ClickHouse's audit tables),
`stream:dead_letters` (entries a worker set aside), `stream:profile_changes` (the profiles
and products each change touched), `stream:audience_changes` (enters and exits). Groups on
them: `warehouse` (the writers, on events and records), `profiles` (the profile workers,
on events) and `audiences` (the audience workers, on profile changes)."""

from __future__ import annotations

import time
from typing import Any

import redis

from cdp.storage import text

WAREHOUSE_GROUP = "warehouse"
PROFILES_GROUP = "profiles"
AUDIENCES_GROUP = "audiences"


def trim_consumed(client: redis.Redis, stream: str) -> int:
    """Drop entries every consumer group has read and acknowledged; returns how many."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return 0
    if not groups:
        return 0
    floor: tuple[int, int] | None = None
    for group in groups:
        candidates = [entry_id(group["last-delivered-id"])]
        pending = oldest_pending(client, stream, group) if group["pending"] else None
        if pending is not None:
            candidates.append(pending)
        lowest = min(candidates)
        floor = lowest if floor is None else min(floor, lowest)
    if floor is None or floor == (0, 0):
        return 0
    return int(client.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))


def oldest_pending(client: redis.Redis, stream: str, group: Any) -> tuple[int, int] | None:
    """The group's oldest entry read and not acknowledged; None when all are (they may have
    been acknowledged since the group was described)."""
    oldest = client.xpending(stream, group["name"])["min"]
    return entry_id(oldest) if oldest else None


def group_states(client: redis.Redis, stream: str, now_ms: int) -> dict[str, dict[str, int]]:
    """Each consumer group's backlog: entries not yet acknowledged (`waiting`) and the age in
    milliseconds of the oldest of them (`oldest_ms`, 0 when none waits). Entry ids carry the
    time they were added, so the age is read off the id."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return {}
    states = {}
    for group in groups:
        lag = group.get("lag")
        oldest = oldest_pending(client, stream, group) if group["pending"] else None
        if oldest is None:
            after: Any = client.xrange(stream, min="(" + text(group["last-delivered-id"]), count=1)
            oldest = entry_id(after[0][0]) if after else None
        if lag is None:  # the group's position is unknown to the server: count what is left
            after = client.xrange(stream, min="(" + text(group["last-delivered-id"]), count=10**4)
            lag = len(after)
        states[text(group["name"])] = {
            "waiting": int(lag) + int(group["pending"]),
            "oldest_ms": max(0, now_ms - oldest[0]) if oldest else 0,
        }
    return states


def entry_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def settled(
    client: redis.Redis, stream: str, upto: tuple[int, int], groups: tuple[str, ...] = ()
) -> bool:
    """Whether every consumer group (or those named) has read and acknowledged the stream
    up to `upto`."""
    try:
        infos = client.xinfo_groups(stream)
    except redis.ResponseError:
        return True  # no stream yet
    for group in infos:
        if groups and text(group["name"]) not in groups:
            continue
        if entry_id(group["last-delivered-id"]) < upto:
            return False
        oldest = oldest_pending(client, stream, group) if group["pending"] else None
        if oldest is not None and oldest <= upto:
            return False
    return True


def last_entry(client: redis.Redis, stream: str) -> tuple[int, int]:
    try:
        return entry_id(client.xinfo_stream(stream)["last-generated-id"])
    except redis.ResponseError:
        return (0, 0)


def wait_until_settled(
    client: redis.Redis, streams: list[str], timeout: float
) -> dict[str, tuple[int, int]] | None:
    """Wait for each stream in turn (the later ones are fed by consumers of the earlier);
    returns the entry each stream is settled up to, or None when time ran out."""
    deadline = time.monotonic() + timeout
    marks = {}
    for stream in streams:
        upto = last_entry(client, stream)
        while not settled(client, stream, upto):
            if time.monotonic() > deadline:
                return None
            time.sleep(0.05)
        marks[stream] = upto
    return marks


def align_profiles_group(client: redis.Redis, stream: str) -> str:
    """Start the profile workers' group where the warehouse writers' group stands; returns
    that entry id."""
    try:
        groups = {text(g["name"]): g for g in client.xinfo_groups(stream)}
    except redis.ResponseError:
        return ""  # nothing was ever sent
    if WAREHOUSE_GROUP not in groups:
        return ""
    position = text(groups[WAREHOUSE_GROUP]["last-delivered-id"])
    if PROFILES_GROUP in groups:
        client.xgroup_destroy(stream, PROFILES_GROUP)
    client.xgroup_create(stream, PROFILES_GROUP, id=position)
    return position


def backlog(client: redis.Redis, streams: list[str]) -> int:
    """Entries delivered to no worker yet, or delivered and not acknowledged, over all groups."""
    waiting = 0
    for stream in streams:
        try:
            groups = client.xinfo_groups(stream)
        except redis.ResponseError:
            continue
        waiting += sum(int(group.get("lag") or 0) + int(group["pending"]) for group in groups)
    return waiting


def forget(client: redis.Redis, stream: str, values: list[str]) -> int:
    """Delete the entries whose fields mention any of these values (an erased person's
    identifiers and profile ids); returns how many."""
    if not values:
        return 0
    doomed = []
    start = "-"
    while True:
        page: Any = client.xrange(stream, min=start, max="+", count=500)
        for letter_id, fields in page:
            payload = b" ".join(fields.values()).decode(errors="replace")
            if any(value in payload for value in values):
                doomed.append(letter_id)
        if len(page) < 500:
            break
        start = "(" + text(page[-1][0])
    return int(client.xdel(stream, *doomed)) if doomed else 0
