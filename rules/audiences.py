"""The saved audiences: the predefined ones (from code, possibly changed or disabled) and the
shop's own, in one Redis hash. Every change increments a generation number; the audience
worker rebuilds its rules when it sees a new one.

A definition is checked against the others before it is saved: what it references exists
and makes no cycle, its windows reach no further back than the kept history, and the
engine can hold it (its rules expand to at most `MAX_TERMS` conjunctions)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from cdp.errors import Conflict, NotFound, Unprocessable
from cdp.storage import text
from rules.definition import Definition, InvalidDefinition, Node, references, windows
from rules.engine import MAX_TERMS, complexity
from rules.keyspace import AudienceKeys
from rules.predefined import predefined

DAY_MS = 86_400_000
MAX_AUDIENCES = 400


@dataclass(frozen=True)
class Saved:
    definition: Definition
    predefined: bool
    created_at: int | None  # epoch ms; None for a predefined audience never changed
    updated_at: int | None

    @property
    def id(self) -> str:
        return self.definition.id

    def as_dict(self) -> dict[str, Any]:
        return {
            **self.definition.model_dump(mode="json", by_alias=True, exclude_defaults=False),
            "predefined": self.predefined, "created_at": self.created_at,
            "updated_at": self.updated_at,
        }  # fmt: skip


def problems_of(
    root: Node, others: dict[str, Definition], own_id: str, history_days: int
) -> list[str]:
    """What stops a tree from being saved beside the others, each naming its path."""
    problems = []
    limit = history_days * DAY_MS
    for path, _, ms in windows(root):
        if ms > limit:
            problems.append(
                f"{path}: reaches back further than the kept history ({history_days} days, "
                f"CDP_HISTORY_DAYS)"
            )
    for name in sorted(references(root)):
        if name not in others and name != own_id:
            problems.append(f"root: member_of names an unknown audience {name!r}")
    cycle = _cycle(own_id, root, others)
    if cycle:
        problems.append("root: member_of makes a cycle: " + " -> ".join(cycle))
    terms = complexity(root)
    if terms > MAX_TERMS:
        problems.append(
            f"root: expands to {terms} alternatives for the engine (at most {MAX_TERMS}); "
            "fewer `or` under `and`, or split it into audiences joined with member_of"
        )
    return problems


def _cycle(own_id: str, root: Node, others: dict[str, Definition]) -> list[str] | None:
    graph = {name: references(d.root) for name, d in others.items()}
    graph[own_id] = references(root)

    def walk(name: str, trail: list[str]) -> list[str] | None:
        for nxt in sorted(graph.get(name, ())):
            if nxt == own_id:
                return [*trail, nxt]
            if nxt not in trail:
                found = walk(nxt, [*trail, nxt])
                if found:
                    return found
        return None

    return walk(own_id, [own_id])


def layers(definitions: list[Definition]) -> list[list[Definition]]:
    """The definitions in layers: each references only audiences of earlier layers."""
    ids = {d.id for d in definitions}
    remaining = {d.id: d for d in definitions}
    placed: set[str] = set()
    out: list[list[Definition]] = []
    while remaining:
        ready = [d for d in remaining.values() if references(d.root) & ids <= placed]
        if not ready:  # a cycle saved before the check existed: evaluate it as one layer
            ready = list(remaining.values())
        out.append(sorted(ready, key=lambda d: d.id))
        for d in ready:
            placed.add(d.id)
            del remaining[d.id]
    return out


class Audiences:
    """The saved definitions under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str, history_days: int, vip_revenue: float):
        self.client = client
        self.keys = AudienceKeys(prefix)
        self.history_days = history_days
        self.shipped = {d.id: d for d in predefined(vip_revenue)}

    def all(self) -> list[Saved]:
        stored = {
            text(k): orjson.loads(v) for k, v in self.client.hgetall(self.keys.definitions).items()
        }
        found = {}
        for id_, definition in self.shipped.items():
            if id_ in stored:
                found[id_] = self._saved(stored.pop(id_), predefined=True)
            else:
                found[id_] = Saved(definition, True, None, None)
        for id_, document in stored.items():
            found[id_] = self._saved(document, predefined=False)
        return [found[k] for k in sorted(found)]

    def enabled(self) -> list[Definition]:
        return [s.definition for s in self.all() if s.definition.enabled]

    def get(self, audience_id: str) -> Saved:
        """The audience, or NotFound."""
        for saved in self.all():
            if saved.id == audience_id:
                return saved
        raise NotFound(f"no audience {audience_id}")

    @staticmethod
    def _saved(document: dict[str, Any], predefined: bool) -> Saved:
        return Saved(Definition.model_validate(document["definition"]), predefined,
                     document.get("created_at"), document.get("updated_at"))  # fmt: skip

    def check(self, definition: Definition) -> None:
        """InvalidDefinition (a 422) naming each problem, or nothing."""
        others = {s.id: s.definition for s in self.all() if s.id != definition.id}
        problems = problems_of(definition.root, others, definition.id, self.history_days)
        if problems:
            raise InvalidDefinition(problems)

    def save(self, definition: Definition, *, create: bool) -> Saved:
        """Create (Conflict if the id is taken) or replace (NotFound if it is not)."""
        existing = {s.id: s for s in self.all()}
        if create and definition.id in existing:
            raise Conflict(f"an audience {definition.id} exists; PUT changes it")
        if not create and definition.id not in existing:
            raise NotFound(f"no audience {definition.id}")
        if create and len(existing) >= MAX_AUDIENCES:
            raise Unprocessable(f"at most {MAX_AUDIENCES} audiences")
        self.check(definition)
        now = int(time.time() * 1000)
        before = existing.get(definition.id)
        created = before.created_at if before and before.created_at else now
        document = {"definition": definition.model_dump(mode="json", by_alias=True),
                    "created_at": created, "updated_at": now}  # fmt: skip
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(self.keys.definitions, definition.id, orjson.dumps(document))
        pipe.incr(self.keys.generation)
        pipe.execute()
        return Saved(definition, definition.id in self.shipped, created, now)

    def delete(self, audience_id: str) -> None:
        saved = self.get(audience_id)
        if saved.predefined:
            raise Conflict(
                f"{audience_id} is predefined and cannot be deleted; disable it instead "
                '(PUT it with "enabled": false)'
            )
        users = sorted(s.id for s in self.all() if audience_id in references(s.definition.root))
        if users:
            raise Conflict(f"{audience_id} is referenced by {', '.join(users)}")
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(self.keys.definitions, audience_id)
        pipe.incr(self.keys.generation)
        pipe.execute()
