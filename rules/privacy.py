"""Erasure of what the rules engine holds on a person: memberships, the schedule, watchers of
products, the audience-change entries and the `audience_log` rows naming the profile ids."""

from __future__ import annotations

import redis

from cdp.storage import Warehouse, text
from cdp.streams import forget
from rules.audiences import Audiences


def erase(client: redis.Redis, warehouse: Warehouse, audiences: Audiences,
          profile_ids: list[str]) -> dict[str, int]:  # fmt: skip
    """Remove the profiles from every audience structure; returns what was removed where."""
    keys = audiences.keys
    pipe = client.pipeline(transaction=True)
    audience_ids = audiences.ids()  # those whose definition is not valid too
    for pid in profile_ids:
        pipe.delete(keys.of(pid))
        pipe.zrem(keys.due, pid)
        for audience_id in audience_ids:
            pipe.zrem(keys.members(audience_id), pid)
    removed = sum(int(n) for n in pipe.execute())
    for watchers in client.scan_iter(match=keys.watchers("*"), count=1000):
        removed += int(client.zrem(text(watchers), *profile_ids))
    report = {
        "audience_keys": removed,
        "stream_entries:audience_changes": forget(client, keys.changes, profile_ids),
    }
    where = "profile_id IN {pids:Array(String)}"
    parameters = {"pids": profile_ids}
    count = int(
        warehouse.query_rows(f"SELECT count() FROM audience_log WHERE {where}", parameters)[0][0]
    )
    if count:
        warehouse.command(
            f"ALTER TABLE audience_log DELETE WHERE {where} SETTINGS mutations_sync = 2", parameters
        )
    report["audience_log"] = count
    return report
