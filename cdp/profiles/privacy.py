"""GDPR: export all we hold on a person (Art. 15 and 20) and erase it everywhere (Art. 17):
the profile's Redis keys, its identifiers in the identity graph, its rows in every ClickHouse
table, and the stream entries that carried its events.

Erasure first waits until every consumer has settled what was received before it, so no
event on its way to ClickHouse or to the profile brings the person back afterwards."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from cdp import streams
from cdp.errors import NotFound, Unavailable
from cdp.profiles.history import audit, events_of, profile_ids
from cdp.profiles.identity import Kind, tagged
from cdp.profiles.keyspace import PARTS
from cdp.profiles.reader import Profile
from cdp.profiles.store import ProfileStore
from cdp.storage import Warehouse, text

# Erases what a feature package holds on the profile ids given; returns counts by place.
Eraser = Callable[[list[str]], dict[str, int]]


def export(warehouse: Warehouse, profile: Profile) -> dict[str, Any]:
    return {
        "profile": profile.as_dict(),
        **audit(warehouse, profile),
        "events": events_of(warehouse, profile),
    }


def erase(
    client: redis.Redis,
    warehouse: Warehouse,
    store: ProfileStore,
    profile: Profile,
    settled_upto: dict[str, tuple[int, int]],
    scanned: list[str],
    erasers: list[Eraser],
) -> dict[str, int]:
    """Remove the person everywhere; returns what was removed where."""
    pids = profile_ids(warehouse, profile)
    values = [identity["value"] for identity in profile.identities]
    keys = [store.keys.profile(profile.id),
            *(store.keys.profile(profile.id, part) for part in PARTS)]  # fmt: skip
    days = client.zrange(store.keys.profile(profile.id, "days"), 0, -1)
    keys += [store.keys.day(profile.id, text(day)) for day in days]
    keys += [store.keys.identity(tagged(Kind(i["kind"]), i["value"])) for i in profile.identities]
    keys += [store.keys.merged(pid) for pid in pids]
    pipe = client.pipeline(transaction=True)
    pipe.delete(*keys)
    pipe.srem(store.keys.profiles, profile.id)
    pipe.srem(store.keys.known, profile.id)
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
    report.update(trim_settled(client, settled_upto))  # what carried the events
    for stream in scanned:  # dead letters, profile changes: whatever names the person
        report[f"stream_entries:{stream}"] = streams.forget(client, stream, values + pids)
    for eraser in erasers:
        report.update(eraser(pids))
    return report


def trim_settled(client: redis.Redis, settled: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Delete each stream's entries up to the one it is settled to, exactly (an approximate
    trim keeps whole nodes, the person's entries among newer ones); how many, by stream."""
    return {
        f"stream_entries:{stream}": int(
            client.xtrim(stream, minid=f"{ms}-{seq + 1}", approximate=False)
        )
        for stream, (ms, seq) in settled.items()
    }


@dataclass(frozen=True)
class Erasure:
    """Everything erasure touches, and how long it waits for what is under way."""

    client: redis.Redis
    warehouse: Warehouse
    store: ProfileStore
    streams: list[str]  # events, then records: each fed by consumers of the one before
    scanned: list[str]  # streams whose entries naming the person are deleted
    wait_seconds: float
    erasers: list[Eraser] = field(default_factory=list)  # what feature packages hold
    # Streams whose workers may still write about the person while it is erased (the
    # audience worker, then the records writer): settled again, then swept.
    after: list[str] = field(default_factory=list)

    def forget(self, profile_id: str) -> tuple[str, dict[str, int]]:
        """Erase the person once everything received before is processed; the erased id
        and what was removed where. NotFound, or Unavailable when processing lags."""
        if self.store.read(profile_id) is None:
            raise NotFound(f"no profile {profile_id}")
        settled = streams.wait_until_settled(self.client, self.streams, self.wait_seconds)
        if settled is None:
            raise Unavailable("events received before this request are still being processed")
        profile = self.store.read(profile_id)  # as it is now all is settled
        if profile is None:
            raise NotFound(f"no profile {profile_id}")
        removed = erase(self.client, self.warehouse, self.store, profile, settled,
                        self.scanned, self.erasers)  # fmt: skip
        if self.after:
            self._sweep(profile, removed)
        return profile.id, removed

    def _sweep(self, profile: Profile, removed: dict[str, int]) -> None:
        """What a worker wrote about the person while it was being erased (an evaluation
        under way when its memberships went): once those workers have settled, erased too."""
        settled = streams.wait_until_settled(self.client, self.after, self.wait_seconds)
        if settled is None:
            raise Unavailable("the erasure is done but for what workers were writing meanwhile")
        pids = [profile.id, *profile.merged_profiles]
        for counts in [trim_settled(self.client, settled), *(e(pids) for e in self.erasers)]:
            for place, count in counts.items():
                removed[place] = removed.get(place, 0) + count
