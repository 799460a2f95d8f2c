"""Writing live profiles: the script (`cdp/lua/profiles.lua`) applies changes atomically
(identity graph, features, consent), each stream entry once, in calls of a bounded size."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
import redis

from cdp.events import StoredEvent
from cdp.profiles.change import change_of, grouped
from cdp.profiles.reader import Profile, ProfileReader
from cdp.script_pipe import ScriptPipe
from cdp.settings import Settings

CHANGES_PER_CALL = 500  # one script call blocks Redis; keep each short


@dataclass
class Applied:
    events: int = 0
    seen_before: int = 0
    merges: int = 0
    refused_merges: int = 0

    def add(self, other: Applied) -> None:
        self.events += other.events
        self.seen_before += other.seen_before
        self.merges += other.merges
        self.refused_merges += other.refused_merges


def _applied(reply: Any) -> Applied:
    events, merges, refused = reply
    return Applied(events=int(events), merges=int(merges), refused_merges=int(refused))


Entry = tuple[str, list[StoredEvent]]  # a stream entry's id and events


def _as_is(events: list[StoredEvent]) -> list[StoredEvent]:
    return events


@dataclass
class Submitted:
    seen_before: int = 0
    calls: list[tuple[list[Entry], Future[Any]]] = field(default_factory=list)  # script replies

    @property
    def events(self) -> int:
        """Events of the entries submitted, applied before or not."""
        return self.seen_before + sum(len(e) for call, _ in self.calls for _, e in call)


class ProfileStore(ProfileReader):
    """The live profiles under one key prefix, written (and read: it is a reader too)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        records_stream: str,
        *,
        marker_seconds: int = 7 * 86400,
        identity_cap: int = 50,
        days: int = 90,
        history_days: int = 400,
        history_events: int = 10_000,
        changes_stream: str = "",
    ) -> None:
        super().__init__(client, prefix)
        self.records_stream = records_stream
        self.marker_seconds = marker_seconds
        self.identity_cap = identity_cap
        self.days = days
        self.history_days = history_days
        self.history_events = history_events
        self.changes_stream = changes_stream
        source = resources.files("cdp").joinpath("lua/profiles.lua").read_text()
        self._script = client.register_script(source)
        self._source = source
        self._pipe: ScriptPipe | None = None  # made by the first submit: only workers submit

    @classmethod
    def from_settings(cls, client: redis.Redis, settings: Settings) -> ProfileStore:
        return cls(
            client,
            settings.redis_prefix,
            settings.records_stream,
            marker_seconds=settings.dedup_window_hours * 3600,
            identity_cap=settings.identity_cap,
            days=settings.profile_days,
            history_days=settings.history_days,
            history_events=settings.history_events,
            changes_stream=settings.profile_changes_stream,
        )

    def apply(self, changes: Iterable[Mapping[str, object]], *, replaying: bool = False) -> Applied:
        """Apply changes in order, in calls of a bounded size; `replaying` records no audit
        rows (they exist already)."""
        applied = Applied()
        batch: list[Mapping[str, object]] = []
        for change in changes:
            batch.append(change)
            if len(batch) == CHANGES_PER_CALL:
                applied.add(self._run(batch, replaying, []))
                batch = []
        if batch:
            applied.add(self._run(batch, replaying, []))
        return applied

    def state(self, profile_id: str, statement: dict[str, Any]) -> Profile | None:
        """Apply a statement made outside events (consent, suppression: `profiles.consent`)
        to a profile now; the profile after it, None when there is none (or it was erased
        or merged away meanwhile)."""
        profile = self.read(profile_id)
        if profile is None:
            return None
        change = {**statement, "profile": profile.id, "t": int(time.time() * 1000)}
        if self.apply([change]).events == 0:
            return None
        return self.read(profile.id)

    def apply_events(self, events: Iterable[StoredEvent], *, replaying: bool = False) -> Applied:
        return self.apply(grouped(change_of(e) for e in events), replaying=replaying)

    def marker(self, entry_id: str) -> str:
        return self.keys.applied(entry_id)

    def apply_entries(self, entries: Sequence[Entry]) -> Applied:
        """Apply the events of stream entries, each entry once: an entry applied before (its
        marker is set in the same call as its effects) is skipped. A call holds whole
        entries, so a crash leaves each applied entirely or not at all."""
        return self.settle(self.submit_entries(entries))

    def submit_entries(
        self,
        entries: Sequence[tuple[str, Any]],
        decode: Callable[[Any], list[StoredEvent]] = _as_is,
    ) -> Submitted:
        """Start applying entries; `settle` waits for the outcome. `decode` turns an entry's
        payload into its events as its call is prepared, so Redis applies one call while the
        next entries are decoded, and no call waits for the whole batch."""
        submitted = Submitted()
        if not entries:
            return submitted
        done = self.client.mget([self.marker(entry_id) for entry_id, _ in entries])
        call: list[Entry] = []
        size = 0
        for (entry_id, payload), marker in zip(entries, done, strict=True):
            events = decode(payload)
            if marker:
                submitted.seen_before += len(events)
                continue
            call.append((entry_id, events))
            size += len(events)
            if size >= CHANGES_PER_CALL:
                submitted.calls.append((call, self._submit(call)))
                call, size = [], 0
        if call:
            submitted.calls.append((call, self._submit(call)))
        return submitted

    def _submit(self, call: list[Entry]) -> Future[Any]:
        changes = grouped(change_of(e) for _, events in call for e in events)
        markers = [self.marker(entry_id) for entry_id, _ in call]
        if self._pipe is None:
            self._pipe = ScriptPipe(self.client, self._source, "cdp-profiles")
        return self._pipe.submit(*self._arguments(changes, False, markers))

    def close(self) -> None:
        """Let go of the submitting connection (a worker's, made by its first submit)."""
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None

    def settle(self, submitted: Submitted) -> Applied:
        applied = Applied(seen_before=submitted.seen_before)
        for call, future in submitted.calls:
            try:
                result = _applied(future.result())
            except redis.ResponseError:
                if len(call) == 1:  # this entry cannot be applied: the worker sets it aside
                    raise
                result = Applied(events=-1)
            if result.events >= 0:
                applied.add(result)
            else:  # applied meanwhile by another worker, or refused: again, one by one
                for entry in call:
                    applied.add(self.apply_entries([entry]))
        return applied

    def _arguments(
        self, batch: Sequence[Mapping[str, object]], replaying: bool, markers: list[str]
    ) -> list[Any]:
        return [self.prefix, orjson.dumps(batch), self.marker_seconds, self.identity_cap,
                self.days, int(time.time() * 1000), self.records_stream,
                "1" if replaying else "0", orjson.dumps(markers), self.history_days,
                self.changes_stream, self.history_events]  # fmt: skip

    def _run(
        self, batch: Sequence[Mapping[str, object]], replaying: bool, markers: list[str]
    ) -> Applied:
        return _applied(self._script(args=self._arguments(batch, replaying, markers)))
