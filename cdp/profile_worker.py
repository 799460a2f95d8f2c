"""The profile worker: a consumer group on the events stream that applies each event to its
profile in Redis (identity graph, features, consent). Applying is idempotent by message id,
so entries handled again after a crash change nothing twice."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import redis
from prometheus_client import Counter

from cdp.consumer import Entries, StreamConsumer
from cdp.events import StoredEvent, entry_events
from cdp.profiles import Applied, ProfileStore

log = logging.getLogger(__name__)

PROFILE_EVENTS = Counter("cdp_profile_events", "Events the profile worker settled", ["outcome"])
APPLIED, SEEN_BEFORE, FAILED = (
    PROFILE_EVENTS.labels(o) for o in ("applied", "seen_before", "failed")
)
MERGES = Counter("cdp_identity_merges", "Profiles merged into another")
REFUSED = Counter("cdp_identity_merges_refused", "Merges refused by a guard")


class ProfileWorker(StreamConsumer):
    group = "profiles"

    def __init__(self, client: redis.Redis, store: ProfileStore, stream: str, **options: Any):
        super().__init__(client, stream, **options)
        self.store = store

    def handle(self, entries: Entries, *, recovered: bool) -> int:
        events: list[StoredEvent] = []
        for entry_id, fields in entries:
            if not fields:
                continue
            try:
                events.extend(entry_events(fields))
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
                log.error("events entry %s unreadable, skipped: %s", entry_id, error)
        try:
            applied = self.store.apply_events(events)
        except redis.ResponseError:
            applied = self._one_by_one(events)
        self._count(applied)
        self.ack(entries)
        return len(events)

    def _one_by_one(self, events: list[StoredEvent]) -> Applied:
        """A batch the script refused: apply its events alone, so one cannot hold back the rest."""
        applied = Applied()
        for event in events:
            try:
                single = self.store.apply_events([event])
            except redis.ResponseError as error:
                FAILED.inc()
                log.error("event %s not applied to its profile: %s", event.message_id, error)
                continue
            applied.add([single.events, single.seen_before, single.merges, single.refused_merges])
        return applied

    @staticmethod
    def _count(applied: Applied) -> None:
        APPLIED.inc(applied.events)
        SEEN_BEFORE.inc(applied.seen_before)
        MERGES.inc(applied.merges)
        REFUSED.inc(applied.refused_merges)
