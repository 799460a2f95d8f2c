"""Every Redis key of the profile domain, named in one place. The script
(`cdp/lua/profiles.lua`) builds the same names; a test checks its list of profile parts
against `PARTS`.

Under the prefix: `profile:<id>` (a hash: the profile's fields) and `profile:<id>:<part>`
for each part, `profile:<id>:day:<day>` (counts of one UTC day), `identity:<tag>:<value>`
(the live profile an identifier belongs to), `merged:<id>` (the profile an id was merged
into), `profiles` and `profiles:known` (sets of live ids), `applied:<entry id>` (a stream
entry applied already). `profile:<id>:history` holds the track events audiences read: members
`[message id, event, properties]` as JSON, scored by time."""

from __future__ import annotations

from dataclasses import dataclass

PARTS = ("ids", "traits", "traits_at", "days", "cart", "cart_items", "viewed", "viewed_items",
         "consent", "consent_at", "consent_src", "suppression", "log", "absorbed",
         "history")  # fmt: skip
NOT_HASHES = {"days": "zset", "viewed": "zset", "log": "list", "absorbed": "set",
              "history": "zset"}  # fmt: skip


@dataclass(frozen=True)
class Keyspace:
    prefix: str

    def profile(self, profile_id: str, part: str | None = None) -> str:
        base = f"{self.prefix}:profile:{profile_id}"
        return f"{base}:{part}" if part else base

    def day(self, profile_id: str, day: int | str) -> str:
        return f"{self.prefix}:profile:{profile_id}:day:{day}"

    def identity(self, tagged: str) -> str:
        """`tagged`: an identifier with its kind's tag, `e:sam@example.com`."""
        return f"{self.prefix}:identity:{tagged}"

    def merged(self, profile_id: str) -> str:
        return f"{self.prefix}:merged:{profile_id}"

    def applied(self, entry_id: str) -> str:
        return f"{self.prefix}:applied:{entry_id}"

    @property
    def profiles(self) -> str:
        return f"{self.prefix}:profiles"

    @property
    def known(self) -> str:
        return f"{self.prefix}:profiles:known"

    def rebuilt(self) -> list[str]:
        """Patterns of what replay rebuilds (the salt stays, so profiles keep their ids)."""
        return [
            f"{self.prefix}:{pattern}"
            for pattern in (
                "profile:*",
                "identity:*",
                "merged:*",
                "applied:*",
                "profiles",
                "profiles:known",
            )
        ]
