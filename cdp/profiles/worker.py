"""The profile worker: a consumer group on the events stream that applies each event to its
profile in Redis (identity graph, features, consent). The stream holds each message id
once (the edge deduplicates), and each entry is applied once (a marker is set in the same
script call as its effects), so entries handed out again after a crash change nothing
twice."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import redis
from prometheus_client import Counter

from cdp.catalog import PRODUCT_UPDATED, Catalog, Product, product_of_event
from cdp.consumer import Entries, StreamConsumer
from cdp.events import StoredEvent, entry_events
from cdp.profiles.store import ProfileStore, Submitted
from cdp.storage import text
from cdp.streams import PROFILES_GROUP

log = logging.getLogger(__name__)

PROFILE_EVENTS = Counter("cdp_profile_events", "Events the profile worker settled", ["outcome"])
APPLIED, SEEN_BEFORE = (PROFILE_EVENTS.labels(o) for o in ("applied", "seen_before"))
MERGES = Counter("cdp_identity_merges", "Profiles merged into another")
REFUSED = Counter("cdp_identity_merges_refused", "Merges refused by a guard")


class ProfileWorker(StreamConsumer):
    group = PROFILES_GROUP
    IN_FLIGHT = 2  # batches read ahead while earlier ones are applied

    def __init__(
        self,
        client: redis.Redis,
        store: ProfileStore,
        stream: str,
        catalog: Catalog | None = None,
        catalog_sources: frozenset[str] = frozenset(),
        **options: Any,
    ):
        """With a catalog, `Product Updated` track events from `catalog_sources` (the source
        ids of the shop's server write keys) update it once their entries are applied."""
        super().__init__(client, stream, **options)
        self.store = store
        self.catalog = catalog
        self.catalog_sources = catalog_sources
        # Settles batches in order: waits for their calls, counts, acknowledges.
        self._settler = ThreadPoolExecutor(1, thread_name_prefix="profile-settle")
        self._in_flight: deque[Future[None]] = deque()

    def handle(self, entries: Entries, *, recovered: bool) -> int:
        """Start applying; the next batch is read while this one runs. Recovered entries are
        settled before returning (recovery reads them again until acknowledged)."""
        present = [(text(entry_id), (entry_id, fields)) for entry_id, fields in entries if fields]
        products: list[Product] = []

        def events_of(entry: tuple[Any, dict[bytes, bytes]]) -> list[StoredEvent]:
            events = self._events(entry)
            if self.catalog is not None:
                products.extend(self._products(events))
            return events

        submitted = self.store.submit_entries(present, events_of)
        self._in_flight.append(self._settler.submit(self._settle, submitted, entries, products))
        while self._in_flight and (recovered or len(self._in_flight) > self.IN_FLIGHT):
            self._in_flight.popleft().result()  # raises what settling raised
        return submitted.events

    @staticmethod
    def _events(entry: tuple[Any, dict[bytes, bytes]]) -> list[StoredEvent]:
        return entry_events(entry[1])  # an unreadable entry fails, and is set aside

    def _products(self, events: list[StoredEvent]) -> list[Product]:
        found = []
        for event in events:
            if (
                event.event == PRODUCT_UPDATED
                and event.type == "track"
                and (event.source_id in self.catalog_sources)
            ):
                product = product_of_event(event.properties)
                if product is not None:
                    found.append(product)
        return found

    def reset(self) -> None:
        """Let the batches under way finish or fail; what failed stays pending."""
        while self._in_flight:
            with contextlib.suppress(Exception):
                self._in_flight.popleft().result()

    def drain_once(self, block_ms: int | None = None) -> int:
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft().result()
        handled = super().drain_once(block_ms)
        if not handled:  # idle: finish what is in flight
            self.wait()
        return handled

    def wait(self) -> None:
        while self._in_flight:
            self._in_flight.popleft().result()

    def run(self, stop: threading.Event) -> None:
        try:
            super().run(stop)
        finally:
            with contextlib.suppress(Exception):  # unsettled entries are recovered on start
                self.wait()

    def _settle(self, submitted: Submitted, entries: Entries, products: list[Product]) -> None:
        applied = self.store.settle(submitted)
        if products and self.catalog is not None:  # again after a crash: the same upsert
            self.catalog.upsert(products)
        APPLIED.inc(applied.events)
        SEEN_BEFORE.inc(applied.seen_before)
        MERGES.inc(applied.merges)
        REFUSED.inc(applied.refused_merges)
        self.ack(entries)
