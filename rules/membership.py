"""Membership from the warehouse: who a definition holds for at a moment, by its SQL
(`rules/sql.py`), with what the events cannot say read from live state: the members of
referenced audiences, the catalog's stock, and consent (asked of Redis only for the
profiles the events already let through). Preview shows it; backfill hands its superset
to the real-time path, which decides each profile and records the transitions; audit
holds the members kept in real time against it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from cdp.catalog import Catalog
from cdp.profiles.reader import ProfileReader
from cdp.storage import Warehouse, text
from rules.audiences import DAY_MS
from rules.definition import Definition, Node
from rules.keyspace import AudienceKeys
from rules.sql import Query, members_query


@dataclass(frozen=True)
class Sources:
    """Where live sets come from."""

    warehouse: Warehouse
    redis: redis.Redis
    reader: ProfileReader
    catalog: Catalog
    keys: AudienceKeys
    history_days: int
    history_events: int  # the newest kept a profile (`CDP_HISTORY_EVENTS`)

    def live_set(self, name: str, among: list[str] | None) -> list[str]:
        kind, _, rest = name.partition(":")
        if kind == "member":
            return [text(m) for m in self.redis.zrange(self.keys.members(rest), 0, -1)]
        if kind == "out_of_stock":
            return self.catalog.all_out_of_stock()
        assert kind == "consent" and among is not None
        channel, _, purpose = rest.partition(":")
        return sorted(self.reader.granted(among, channel, purpose))

    def run(self, query: Query, among: list[str] | None = None) -> list[str]:
        parameters: dict[str, Any] = dict(query.parameters)
        for parameter, name in query.needs.items():
            parameters[parameter] = self.live_set(name, among)
        return [row[0] for row in self.warehouse.query_rows(query.sql, parameters)]


def members_at(sources: Sources, root: Node, now: int) -> list[str]:
    """The profiles the tree holds for at `now` (epoch ms), sorted."""
    history, cap = sources.history_days * DAY_MS, sources.history_events
    candidates = sources.run(members_query(root, history, cap, now,
                                           relaxed=frozenset({"consent"})))  # fmt: skip
    exact = members_query(root, history, cap, now)
    if not any(name.startswith("consent:") for name in exact.needs.values()):
        return sorted(candidates)
    return sorted(sources.run(exact, among=candidates)) if candidates else []


def candidates_at(sources: Sources, root: Node, now: int) -> list[str]:
    """A superset of the members at `now` and of those who may become members later with no
    new event (time passing: the real-time path, deciding them, schedules their moments),
    with nothing read from live state."""
    query = members_query(root, sources.history_days * DAY_MS, sources.history_events, now,
                          relaxed=frozenset({"consent", "member", "time"}))  # fmt: skip
    return sorted(sources.run(query))


@dataclass(frozen=True)
class Audit:
    """The members kept in real time against the definition's SQL at one moment."""

    live: frozenset[str]
    sql: frozenset[str]
    due: frozenset[str]  # profiles whose evaluation was due then: not counted against either

    @property
    def only_live(self) -> list[str]:
        return sorted(self.live - self.sql - self.due)

    @property
    def only_sql(self) -> list[str]:
        return sorted(self.sql - self.live - self.due)

    @property
    def pending(self) -> int:
        """Profiles on one side only whose evaluation was due (time passed, not yet run)."""
        return len((self.live ^ self.sql) & self.due)


def audit(sources: Sources, definition: Definition, now: int) -> Audit:
    """The audience's members now, and who its SQL holds for at the same moment (a disabled
    audience holds for nobody)."""
    pipe = sources.redis.pipeline(transaction=True)
    pipe.zrange(sources.keys.members(definition.id), 0, -1)
    pipe.zrange(sources.keys.due, "-inf", now, byscore=True)
    live, due = pipe.execute()
    sql = members_at(sources, definition.root, now) if definition.enabled else []
    return Audit(frozenset(text(m) for m in live), frozenset(sql), frozenset(text(p) for p in due))
