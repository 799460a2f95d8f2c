"""Every Redis key of the audience domain, named in one place.

Under the prefix: `audiences` (a hash: id → saved definition JSON), `audiences:generation`
(incremented by every change of definitions), `audiences:of:<profile>` (a hash: audience →
member since, epoch ms), `audience:<id>:members` (a sorted set: profile → since),
`audiences:due` (a sorted set: profile → the next moment its memberships may change with
no event), `audiences:watchers:<product>` (a sorted set: profiles that viewed or wishlisted
the product → when), and the stream `stream:audience_changes` (`rules/changes.py`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AudienceKeys:
    prefix: str

    @property
    def definitions(self) -> str:
        return f"{self.prefix}:audiences"

    @property
    def generation(self) -> str:
        return f"{self.prefix}:audiences:generation"

    def of(self, profile_id: str) -> str:
        return f"{self.prefix}:audiences:of:{profile_id}"

    def members(self, audience: str) -> str:
        return f"{self.prefix}:audience:{audience}:members"

    @property
    def due(self) -> str:
        return f"{self.prefix}:audiences:due"

    def watchers(self, product: str) -> str:
        return f"{self.prefix}:audiences:watchers:{product}"

    @property
    def changes(self) -> str:
        return f"{self.prefix}:stream:audience_changes"

    @property
    def out_of_stock(self) -> str:
        """The catalog's products with no stock (`cdp/catalog.py` keeps it)."""
        return f"{self.prefix}:catalog:out_of_stock"
