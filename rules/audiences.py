"""The saved audiences: the predefined ones (from code, possibly changed or disabled) and the
shop's own, in one Redis hash. Every change increments a generation number, kept beside the
audience it changed; the audience worker rebuilds its rules when it sees a new one, and
matches a profile's audiences changed since its last look at its next.

A definition is checked against the others before it is saved: what it references exists
and makes no cycle, its windows reach no further back than the kept history, and the
engine can hold it (its rules expand to at most `MAX_TERMS` conjunctions and hold at most
`MAX_CONNECTIVES` `and`/`or`). A stored definition is read alone: one that is not valid
any more (saved under looser checks) is set apart, `invalid`, and stops nothing else."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from pydantic import ValidationError

from cdp.errors import Conflict, NotFound, Unprocessable
from cdp.storage import text
from rules.definition import (
    Definition,
    InvalidDefinition,
    Node,
    dump,
    path_of,
    references,
    windows,
)
from rules.engine import MAX_CONNECTIVES, MAX_TERMS, complexity, connectives
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
    root: Node,
    others: dict[str, Definition],
    own_id: str,
    history_days: int,
    unreadable: Iterable[str] = (),
) -> list[str]:
    """What stops a tree from being saved beside the others (and the `unreadable` ones,
    stored but not valid: they exist, their members kept), each naming its path."""
    problems = []
    limit = history_days * DAY_MS
    for path, _, ms in windows(root):
        if ms > limit:
            problems.append(
                f"{path}: reaches back further than the kept history ({history_days} days, "
                f"CDP_HISTORY_DAYS)"
            )
    known = {*others, *unreadable, own_id}
    for name in sorted(references(root)):
        if name not in known:
            problems.append(f"root: member_of names an unknown audience {name!r}")
    cycle = _cycle(own_id, root, others)
    if cycle:
        problems.append("root: member_of makes a cycle: " + " -> ".join(cycle))
    return problems + engine_problems(root)


def engine_problems(root: Node) -> list[str]:
    """What makes a tree too big for the engine's rules."""
    problems = []
    terms = complexity(root)
    if terms > MAX_TERMS:
        problems.append(
            f"root: expands to {terms} alternatives for the engine (at most {MAX_TERMS}); "
            "fewer `or` under `and`, or split it into audiences joined with member_of"
        )
    joined = connectives(root)
    if joined > MAX_CONNECTIVES:
        problems.append(
            f"root: makes a rule of {joined} `and`/`or` for the engine (at most "
            f"{MAX_CONNECTIVES}; a `not` turns each into the other, a `last_performed` with `<` "
            "and an `aggregate` hold one each); split it into audiences joined with member_of"
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


# The shipped definitions in effect (those the shop did not change) against the trees last
# in effect (KEYS[2]): each that differs (a new version's, or `CDP_VIP_REVENUE` changed) is
# recorded and the definitions' generation (KEYS[3]) moves on, as for a PUT, kept as the
# audience's last change (KEYS[4]). An audience with no last change kept (saved by an older
# version) is given the generation of now: a profile evaluated under it had every audience
# matched. KEYS[1]: the stored definitions. ARGV: id, tree JSON, ... Returns the ids that
# changed. One script: of servers starting together, one finds each change.
ADOPT = """
local changed = {}
for i = 1, #ARGV, 2 do
  local id, tree = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', KEYS[1], id) == 0 and redis.call('HGET', KEYS[2], id) ~= tree then
    redis.call('HSET', KEYS[2], id, tree)
    changed[#changed + 1] = id
  end
end
local generation = redis.call('GET', KEYS[3]) or '0'
if #changed > 0 then
  generation = redis.call('INCR', KEYS[3])
end
for _, id in ipairs(changed) do
  redis.call('HSET', KEYS[4], id, generation)
end
for i = 1, #ARGV, 2 do
  redis.call('HSETNX', KEYS[4], ARGV[i], generation)
end
for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  redis.call('HSETNX', KEYS[4], id, generation)
end
return changed
"""
# A definition saved (KEYS[1] field ARGV[1], the document ARGV[2]) or, with no document,
# deleted: the generation (KEYS[2]) moves on and is kept as the audience's last change
# (KEYS[3]; forgotten with it).
SAVE = """
local generation = redis.call('INCR', KEYS[2])
if ARGV[2] then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('HSET', KEYS[3], ARGV[1], generation)
else
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return generation
"""


class Audiences:
    """The saved definitions under one key prefix."""

    def __init__(self, client: redis.Redis, prefix: str, history_days: int, vip_revenue: float):
        self.client = client
        self.keys = AudienceKeys(prefix)
        self.history_days = history_days
        self.shipped = {d.id: d for d in predefined(vip_revenue)}

    def adopt_shipped(self) -> list[Definition]:
        """The predefined audiences whose shipped definition changed since it was last in
        effect (a shop's own version of one is not shipped's), now in effect: the worker
        decides every profile anew at its next look, and the caller backfills them (or their
        members would stay as the definition before had them)."""
        args: list[str | bytes] = []
        for id_, definition in sorted(self.shipped.items()):
            args += [id_, orjson.dumps(dump(definition.root), option=orjson.OPT_SORT_KEYS)]
        keys = [self.keys.definitions, self.keys.shipped, self.keys.generation, self.keys.changed]
        changed = self.client.eval(ADOPT, len(keys), *keys, *args)
        return [self.shipped[text(id_)] for id_ in changed]

    def all(self) -> list[Saved]:
        """Every audience whose definition is valid (see `invalid` for the others)."""
        found, _ = self.read()
        return [found[k] for k in sorted(found)]

    def invalid(self) -> dict[str, str]:
        """Stored definitions that are not valid (id -> why): saved by an older version whose
        checks were looser. Each is left out of the rules (its members kept as they are)
        until it is saved anew or deleted; the others go on."""
        return self.read()[1]

    def ids(self) -> list[str]:
        """Every audience id, its definition valid or not."""
        found, invalid = self.read()
        return sorted({*found, *invalid})

    def require(self, audience_id: str) -> None:
        """NotFound unless the audience exists (its definition valid or not)."""
        if audience_id not in self.ids():
            raise NotFound(f"no audience {audience_id}")

    def read(self) -> tuple[dict[str, Saved], dict[str, str]]:
        """The audiences whose definitions are valid, by id, and those that are not (id ->
        why)."""
        found: dict[str, Saved] = {}
        invalid: dict[str, str] = {}
        for key, raw in self.client.hgetall(self.keys.definitions).items():
            id_ = text(key)
            saved = _stored(raw, id_ in self.shipped)
            if isinstance(saved, Saved):
                found[id_] = saved
            else:
                invalid[id_] = saved
        for id_, definition in self.shipped.items():
            if id_ not in found and id_ not in invalid:
                found[id_] = Saved(definition, True, None, None)
        return found, invalid

    def get(self, audience_id: str) -> Saved:
        """The audience, or NotFound (Conflict if its stored definition is not valid)."""
        found, invalid = self.read()
        if audience_id in invalid:
            raise Conflict(
                f"the stored definition of {audience_id} is not valid "
                f"({invalid[audience_id]}); PUT it anew or DELETE it"
            )
        if audience_id not in found:
            raise NotFound(f"no audience {audience_id}")
        return found[audience_id]

    def check(
        self, definition: Definition, found: dict[str, Saved], invalid: dict[str, str]
    ) -> None:
        """InvalidDefinition (a 422) naming each problem, or nothing (beside the stored
        audiences, as `read` gives them)."""
        others = {i: s.definition for i, s in found.items() if i != definition.id}
        problems = problems_of(definition.root, others, definition.id, self.history_days,
                               invalid)  # fmt: skip
        if problems:
            raise InvalidDefinition(problems)

    def save(self, definition: Definition, *, create: bool) -> Saved:
        """Create (Conflict if the id is taken) or replace (NotFound if it is not)."""
        found, invalid = self.read()
        existing: dict[str, Saved | None] = {**found, **dict.fromkeys(invalid)}
        if create and definition.id in existing:
            raise Conflict(f"an audience {definition.id} exists; PUT changes it")
        if not create and definition.id not in existing:
            raise NotFound(f"no audience {definition.id}")
        if create and len(existing) >= MAX_AUDIENCES:
            raise Unprocessable(f"at most {MAX_AUDIENCES} audiences")
        self.check(definition, found, invalid)
        now = int(time.time() * 1000)
        before = existing.get(definition.id)
        created = before.created_at if before and before.created_at else now
        document = {"definition": definition.model_dump(mode="json", by_alias=True),
                    "created_at": created, "updated_at": now}  # fmt: skip
        self._save(definition.id, orjson.dumps(document))
        return Saved(definition, definition.id in self.shipped, created, now)

    def delete(self, audience_id: str) -> None:
        """Delete a shop's audience (one whose stored definition is not valid, too)."""
        if audience_id in self.shipped:
            raise Conflict(
                f"{audience_id} is predefined and cannot be deleted; disable it instead "
                '(PUT it with "enabled": false)'
            )
        found, invalid = self.read()
        if audience_id not in found and audience_id not in invalid:
            raise NotFound(f"no audience {audience_id}")
        users = sorted(k for k, s in found.items()
                       if audience_id in references(s.definition.root))  # fmt: skip
        if users:
            raise Conflict(f"{audience_id} is referenced by {', '.join(users)}")
        self._save(audience_id, None)

    def _save(self, audience_id: str, document: bytes | None) -> None:
        """`SAVE`: the document stored (None: deleted), the generation moved on."""
        keys = [self.keys.definitions, self.keys.generation, self.keys.changed]
        self.client.eval(SAVE, len(keys), *keys, audience_id, *([document] if document else []))

    def changed(self) -> dict[str, int]:
        """Each audience's generation of its last change (none kept: saved by an older
        version, and the server not started since)."""
        return {text(k): int(v) for k, v in self.client.hgetall(self.keys.changed).items()}


@functools.lru_cache(maxsize=2 * MAX_AUDIENCES)
def _stored(raw: bytes, predefined: bool) -> Saved | str:
    """A stored audience, or why its definition is not valid (any more: saved by an older
    version whose checks were looser). Made once per stored text."""
    try:
        document = orjson.loads(raw)
        definition = Definition.model_validate(document["definition"])
    except (ValueError, KeyError, TypeError) as error:  # JSON, shape, validation
        return why_invalid(error)
    problems = engine_problems(definition.root)
    if problems:
        return "; ".join(problems)
    return Saved(definition, predefined, document.get("created_at"), document.get("updated_at"))


def why_invalid(error: Exception) -> str:
    """The first problem of a stored definition that does not validate, with its path."""
    if isinstance(error, ValidationError):
        first = error.errors(include_url=False)[0]
        more = error.error_count() - 1
        where = path_of(tuple(first["loc"])) or "definition"
        return f"{where}: {first['msg']}" + (f" (and {more} more)" if more else "")
    return f"{type(error).__name__}: {error}"[:300]
