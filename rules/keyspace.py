"""Every Redis key of the audience domain, named in one place.

Under the prefix: `audiences` (a hash: id → saved definition JSON), `audiences:generation`
(incremented by every change of definitions), `audiences:changed` (a hash: id → the
generation of its definition's last change, the predefined ones' included),
`audiences:of:<profile>` (a hash: audience → member since, epoch ms; `~generation`, `~next`,
`~last`, `~v`, `~seen`, `~later`, `~failures`, below), `audience:<id>:members` (a sorted
set: profile → since), `audiences:due` (a sorted set: profile → the next moment its
memberships may change with no event), `audiences:shipped` (a hash: predefined audience →
the tree of its shipped definition last in effect, `Audiences.adopt_shipped`),
`audiences:backfills` (a hash: audience → JSON {at, until, candidates} of its last backfill,
until the profiles due by its end are evaluated), `audiences:watchers:<product>` (a sorted
set: profiles that viewed or wishlisted the product → when), and the stream
`stream:audience_changes` (`rules/changes.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

# In a profile's memberships hash, beside audience → since: the definitions' generation of its
# last evaluation, every audience changed by then matched (a profile evaluated under an older
# one has the audiences changed since matched at its next look; one never evaluated, all),
# `~next`: JSON {audience: the next moment (ms) it may change for the profile with no event}
# (so that when a moment comes, only the audiences due then are matched), `~last`, the moment
# of its latest transition (no later evaluation is made at an earlier moment: two workers'
# clocks and batches interleave), and `~v`, a version every write of the audience worker
# moves on (`rules/worker.py`, COMMIT).
GENERATION = "~generation"
NEXT = "~next"
LAST = "~last"
VERSION = "~v"
# For a profile with a long history (`rules/worker.py`, HOT_EVENTS): `~seen`, the moment of its
# last evaluation, and `~later`, set while events wait for the end of its second.
SEEN = "~seen"
LATER = "~later"
# For a profile that could not be evaluated: how many times in a row (gone at a success).
FAILURES = "~failures"
# The fields as a read of the hash has them (bytes).
GENERATION_FIELD, NEXT_FIELD, LAST_FIELD, VERSION_FIELD, LATER_FIELD, FAILURES_FIELD, SEEN_FIELD = (
    name.encode() for name in (GENERATION, NEXT, LAST, VERSION, LATER, FAILURES, SEEN)
)


def memberships(stored: dict[Any, Any]) -> dict[str, int]:
    """Audience → member since (ms), from the hash as Redis returns it."""
    return {(key.decode() if isinstance(key, bytes) else str(key)): int(value)
            for key, value in stored.items() if key[:1] not in (b"~", "~")}  # fmt: skip


def next_moments(stored: dict[bytes, bytes]) -> dict[str, int]:
    """Audience → its next moment of change with no event (ms), from the hash."""
    raw = stored.get(NEXT_FIELD)
    found = orjson.loads(raw) if raw else {}
    return found if isinstance(found, dict) else {}


@dataclass(frozen=True)
class AudienceKeys:
    prefix: str

    @property
    def definitions(self) -> str:
        return f"{self.prefix}:audiences"

    @property
    def generation(self) -> str:
        return f"{self.prefix}:audiences:generation"

    @property
    def changed(self) -> str:
        return f"{self.prefix}:audiences:changed"

    def of(self, profile_id: str) -> str:
        return f"{self.prefix}:audiences:of:{profile_id}"

    def members(self, audience: str) -> str:
        return f"{self.prefix}:audience:{audience}:members"

    @property
    def due(self) -> str:
        return f"{self.prefix}:audiences:due"

    @property
    def shipped(self) -> str:
        return f"{self.prefix}:audiences:shipped"

    @property
    def backfills(self) -> str:
        return f"{self.prefix}:audiences:backfills"

    def watchers(self, product: str) -> str:
        return f"{self.prefix}:audiences:watchers:{product}"

    @property
    def changes(self) -> str:
        return f"{self.prefix}:stream:audience_changes"

    @property
    def out_of_stock(self) -> str:
        """The catalog's products with no stock (`cdp/catalog.py` keeps it)."""
        return f"{self.prefix}:catalog:out_of_stock"
