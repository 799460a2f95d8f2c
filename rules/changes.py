"""The audience-change record: the contract between the rules engine and what acts on
audiences (`activation/` consumes it; nothing else of `rules` is theirs to import).

Every enter and exit is one entry in the Redis stream `<prefix>:stream:audience_changes`,
written in the same transaction that changes the membership, so a transition is recorded
exactly once, and one row in ClickHouse `audience_log` (keyed by the entry id). Fields,
all text:

- `audience`: the audience id;
- `profile`: the profile id (live when recorded; a later merge moves memberships to the
  survivor, with an exit here and an enter there);
- `change`: `enter` or `exit`;
- `at`: the moment of the transition, epoch milliseconds UTC (for a time-based one, the
  moment it was due, not when it was noticed);
- `cause`: `event` (a change to the profile; also a profile's first evaluation), `time`
  (a window slid, a wait passed), `definition` (the audience was created or changed: the
  look its backfill asked for, at which the audiences whose moment came say `time`; or it
  was deleted or disabled), `merge` (the profile was merged into another);
- `generation`: the definitions' generation that decided it;
- `reason`: JSON, each condition with its value and threshold at that moment:
  `[{"path": "root.and[0]", "condition": "performed", "value": 3, "threshold": ">= 3",
  "holds": true}, ...]`.

The stream hands transitions over; it is no store: it keeps about the newest
`CDP_AUDIENCE_CHANGES_KEPT` entries (trimmed at each write), so a consumer away longer than
that many transitions takes the rest from `audience_log`, which keeps every one."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import orjson

Change = Literal["enter", "exit"]
Cause = Literal["event", "time", "definition", "merge"]


@dataclass(frozen=True)
class AudienceChange:
    audience: str
    profile: str
    change: Change
    at: int
    cause: Cause
    generation: int
    reason: list[dict[str, Any]]

    def fields(self) -> dict[str, str]:
        return {
            "audience": self.audience, "profile": self.profile, "change": self.change,
            "at": str(self.at), "cause": self.cause, "generation": str(self.generation),
            "reason": orjson.dumps(self.reason).decode(),
        }  # fmt: skip

    def row(self) -> dict[str, Any]:
        """As `audience_log` stores it (the records writer adds the entry id)."""
        return {
            "audience_id": self.audience, "profile_id": self.profile, "change": self.change,
            "at": self.at, "cause": self.cause, "generation": self.generation,
            "reason": orjson.dumps(self.reason).decode(),
        }  # fmt: skip

    @classmethod
    def of(cls, fields: dict[bytes, bytes]) -> AudienceChange:
        """The record of a stream entry's fields."""
        get = {k.decode(): v.decode() for k, v in fields.items()}
        return cls(
            audience=get["audience"], profile=get["profile"],
            change="enter" if get["change"] == "enter" else "exit", at=int(get["at"]),
            cause=get["cause"],  # type: ignore[arg-type]
            generation=int(get["generation"]), reason=orjson.loads(get["reason"]),
        )  # fmt: skip
