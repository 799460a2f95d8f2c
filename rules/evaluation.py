"""One profile's audiences at one moment: read its conditions, let the engine match the
snapshots, and say which memberships change, why, and when to look again.

A plan is one generation of definitions compiled for the engine, in layers (an audience
that references another is matched after it, in the same pass, so a change ripples
through at once)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import cached_property, partial
from itertools import islice
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter

from cdp.profiles.change import TIME_ZONE
from cdp.profiles.reader import AudienceInputs, ProfileReader
from rules.audiences import DAY_MS, layers
from rules.batch import NONE, Batch
from rules.changes import AudienceChange, Cause, Change
from rules.conditions import (
    ORDER_COMPLETED,
    Happened,
    Subject,
    events_read,
    next_change,
    read,
)
from rules.definition import (
    ConsentNode,
    Definition,
    OrdersNode,
    OutOfStockNode,
    Performed,
    TimeZoneNode,
    TraitNode,
    leaves,
    references,
    spec_of,
)
from rules.engine import Answers, Compiled, Matcher

log = logging.getLogger(__name__)

DISAGREEMENTS = Counter(
    "cdp_audience_engine_disagreements",
    "Transitions where durable_rules and the tree's own reading disagreed (should stay 0)",
)


@dataclass
class Plan:
    generation: int
    layers: list[list[Compiled]]
    definitions: dict[str, Definition]
    matcher: Matcher
    watch_events: frozenset[str]  # events that watch a product (for stock conditions)
    watch_ms: int  # how far back they count
    inputs: dict[str, frozenset[str]] = field(default_factory=dict)  # what each audience reads
    refers: dict[str, frozenset[str]] = field(default_factory=dict)  # audiences each references
    frozen: dict[str, str] = field(default_factory=dict)  # audience -> why it is not matched
    # (its stored definition is not valid; the engine refused its rules): its memberships
    # are kept as they are (not left as exits)
    changed_at: dict[str, int] = field(default_factory=dict)  # audience -> the generation
    # of its definition's last change (none: not known, taken as changed since any)

    _reading: dict[tuple[int, frozenset[str] | None, frozenset[str]], list[Compiled]] = field(
        default_factory=dict, repr=False
    )
    _changed_since: dict[int, frozenset[str]] = field(default_factory=dict, repr=False)

    def changed_since(self, generation: int) -> frozenset[str]:
        """The audiences whose definitions changed after that generation (those whose last
        change is not known included): a profile last evaluated under it has them matched."""
        found = self._changed_since.get(generation)
        if found is None:
            found = self._changed_since[generation] = frozenset(
                a for a in self.definitions if self.changed_at.get(a, generation + 1) > generation
            )
        return found

    @cached_property
    def generation_text(self) -> bytes:
        """The generation as a read of a memberships hash has it."""
        return str(self.generation).encode()

    @cached_property
    def kept(self) -> frozenset[str]:
        """The audiences whose memberships a profile keeps: those matched and those frozen."""
        return frozenset(self.definitions) | frozenset(self.frozen)

    @cached_property
    def windows(self) -> dict[Any, list[int]]:
        """The windows of the counts of each selection (`rules/batch.py` counts them at
        once)."""
        found: dict[Any, set[int]] = {}
        for layer in self.layers:
            for c in layer:
                for _, leaf in c.found:
                    spec = spec_of(leaf)
                    if isinstance(spec, Performed) and not spec.same:
                        found.setdefault(spec.selector, set()).add(spec.within)
        return {selector: sorted(windows) for selector, windows in found.items()}

    @property
    def reads_stock(self) -> bool:
        return bool(self.watch_events)

    def reading(
        self, layer: int, changed: frozenset[str] | None, forced: frozenset[str] = frozenset()
    ) -> list[Compiled]:
        """The layer's audiences that read what changed (all of them for None), and those
        `forced`."""
        key = (layer, changed, forced)
        found = self._reading.get(key)
        if found is None:
            if len(self._reading) > 10_000:  # combinations of names seen: a bounded memo
                self._reading.clear()
            found = self._reading[key] = [
                c for c in self.layers[layer]
                if changed is None or self.inputs[c.audience] & changed or c.audience in forced
            ]  # fmt: skip
        return found

    @classmethod
    def of(
        cls,
        generation: int,
        definitions: list[Definition],
        frozen: dict[str, str] | None = None,
        changed_at: dict[str, int] | None = None,
    ) -> Plan:
        """The definitions' plan; an audience whose rules the engine refuses is left out of
        it (frozen), the others kept. `changed_at`: each audience's generation of its last
        change (`Audiences.changed`)."""
        frozen = dict(frozen or {})
        plan = cls._of(generation, definitions, frozen)
        while plan.matcher.refused:  # each round leaves out at least one
            plan.matcher.close()
            frozen.update((a, f"the engine refused its rules: {why}")
                          for a, why in plan.matcher.refused.items())  # fmt: skip
            definitions = [d for d in definitions if d.id not in frozen]
            plan = cls._of(generation, definitions, frozen)
        plan.changed_at = dict(changed_at or {})
        return plan

    @classmethod
    def _of(cls, generation: int, definitions: list[Definition], frozen: dict[str, str]) -> Plan:
        compiled_layers: list[list[Compiled]] = []
        slot = 0
        for layer in layers(definitions):
            compiled_layers.append([Compiled(d.id, slot + i, d.root) for i, d in enumerate(layer)])
            slot += len(layer)
        flat = [c for layer in compiled_layers for c in layer]
        stock = [spec_of(leaf) for d in definitions for _, leaf in leaves(d.root)
                 if isinstance(leaf, OutOfStockNode)]  # fmt: skip
        return cls(generation, compiled_layers, {d.id: d for d in definitions},
                   Matcher(generation, flat),
                   frozenset(e for spec in stock for e in spec.events),
                   max((spec.within for spec in stock), default=0),
                   {d.id: inputs_of(d) for d in definitions},
                   {d.id: frozenset(references(d.root)) for d in definitions}, frozen)  # fmt: skip


@dataclass
class Outcome:
    changes: list[AudienceChange] = field(default_factory=list)
    next_of: dict[str, int] = field(default_factory=dict)  # each matched audience's next
    # moment of change with no event (those with none left out)
    matched: AbstractSet[str] = frozenset()  # (never changed in place: shared by many)


def inputs_of(definition: Definition) -> frozenset[str]:
    """What changes can change the audience with no time passing: the events it names,
    `identify` for traits, `consent`, `stock` for the catalog, `time_zone` for the profile's,
    `Order Completed` for its orders.
    Membership of another audience is followed through the layers; a bucket never changes."""
    found: set[str] = set()
    for _, leaf in leaves(definition.root):
        found |= events_read(leaf)
        if isinstance(leaf, TraitNode):
            found.add("identify")
        elif isinstance(leaf, ConsentNode):
            found.add("consent")
        elif isinstance(leaf, OutOfStockNode):
            found.add("stock")
        elif isinstance(leaf, TimeZoneNode):
            found.add(TIME_ZONE)
        elif isinstance(leaf, OrdersNode):
            found.add(ORDER_COMPLETED)
    return frozenset(found)


class Look(NamedTuple):
    """One profile's evaluation: its subject at `now`, why, what changed since the last one
    (None: anything may have; empty: only time passed), the audiences due (their moment has
    come) and those whose definitions changed since its last (`fresh`), matched too."""

    subject: Subject
    now: int
    cause: Cause
    changed: frozenset[str] | None = None
    due: frozenset[str] = frozenset()
    fresh: frozenset[str] = frozenset()


def evaluate(
    plan: Plan,
    subject: Subject,
    now: int,
    cause: Cause,
    changed: frozenset[str] | None = None,
    due: frozenset[str] = frozenset(),
) -> Outcome:
    """`evaluate_all` of one profile."""
    return evaluate_all(plan, [Look(subject, now, cause, changed, due)])[0]


def evaluate_all(plan: Plan, looks: Sequence[Look]) -> list[Outcome]:
    """Match the audiences of the plan on each subject at its `now` (epoch ms): all of them,
    or with `changed` only those that read it, those `due`, and those that reference an
    audience the profile entered or left. Memberships of audiences the plan does not hold
    (deleted, disabled) are left as exits; those it holds frozen are kept (each subject's
    memberships, changed in place, are those it ends with). The conditions are
    read for the batch at once (`rules/batch.py`), the engine matches each profile's facts."""
    outcomes = [Outcome() for _ in looks]
    for look, outcome in zip(looks, outcomes, strict=True):
        s = look.subject
        if s.memberships <= plan.kept:
            continue
        for gone in sorted(s.memberships - plan.kept):
            outcome.changes.append(AudienceChange(gone, s.profile_id, "exit", look.now,
                                                  "definition", plan.generation, []))  # fmt: skip
        s.memberships = s.memberships & plan.kept
    batch = Batch([look.subject for look in looks], [look.now for look in looks], plan.windows)
    moved: list[set[str]] = [set() for _ in looks]
    for n, whole_layer in enumerate(plan.layers):
        chosen = [
            _chosen(plan, n, whole_layer, look, m) for look, m in zip(looks, moved, strict=True)
        ]
        _match(plan, whole_layer, chosen, looks, batch, outcomes, moved)
    return outcomes


def _chosen(
    plan: Plan, n: int, whole_layer: list[Compiled], look: Look, moved: set[str]
) -> list[Compiled]:
    """The layer's audiences matched for one profile: those reading what changed, those due
    or changed since its last look, and those referencing an audience it entered or left."""
    layer = plan.reading(n, look.changed, look.due | look.fresh if look.fresh else look.due)
    if moved:
        names = {c.audience for c in layer}
        layer = [c for c in whole_layer
                 if c.audience in names or plan.refers[c.audience] & moved]  # fmt: skip
    return layer


class _Facts(NamedTuple):
    """The facts of one shard's audiences matched for the profiles of a layer chosen: their
    fields, their places in the shard's group (None: all), the engine's answers kept for
    them, and each profile's fact's key."""

    shard: int
    fields: list[str]
    places: tuple[int, ...] | None
    answers: Answers
    group: _Group
    keys: list[bytes]


# The audiences of a layer matched for a profile (None: every one), and their facts.
Pickers = tuple[set[str] | None, list[_Facts]]


@dataclass
class _Group:
    """The audiences of one shard matched in a layer: their facts' field names, each
    profile's values in that order (a row of `facts`), where each audience's fields are."""

    names: list[str] = field(default_factory=list)
    columns: list[Any] = field(default_factory=list)  # each field's values, a profile each
    spans: list[tuple[str, int, int]] = field(default_factory=list)
    facts: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 0)))
    _keys: dict[tuple[int, ...] | None, list[bytes]] = field(default_factory=dict)

    def add(self, c: Compiled, columns: list[Any]) -> None:
        """An audience's fields, each a column of the batch (in the order of `c.names`)."""
        start = len(self.names)
        self.names += c.names
        self.columns += columns
        self.spans.append((c.audience, start, len(self.names)))

    def close(self) -> None:
        """The columns made the facts: a row a profile, a float64 a field."""
        self.facts = np.ascontiguousarray(np.array(self.columns, dtype=np.float64).T)

    def picker(self, names: set[str] | None) -> tuple[list[str], tuple[int, ...] | None] | None:
        """The fields of the audiences named (None: of every one) and their places; None
        if the shard holds none of them."""
        if names is None:
            return self.names, None
        places = tuple(i for audience, start, end in self.spans if audience in names
                       for i in range(start, end))  # fmt: skip
        if not places:
            return None
        return [self.names[i] for i in places], places

    def keys(self, places: tuple[int, ...] | None) -> list[bytes]:
        """Each profile's fact (its fields at these places; None: all) as the bytes of its
        values: the key of the engine's answers kept. Made once per batch and places."""
        found = self._keys.get(places)
        if found is None:
            facts = self.facts if places is None else np.ascontiguousarray(self.facts[:, places])
            rows = facts.view(np.dtype((np.void, facts.shape[1] * facts.itemsize)))
            found = self._keys[places] = cast(list[bytes], rows.ravel().tolist())
        return found

    def values(self, row: int, places: tuple[int, ...] | None) -> list[float]:
        facts = self.facts[row]
        return (facts if places is None else facts[list(places)]).tolist()  # type: ignore[no-any-return]


@dataclass
class _Layer:
    """A layer's audiences read for the batch: each profile's facts by shard, the tree's
    transitions, and the next moments (a row a profile, an entry an audience)."""

    audiences: list[str]
    groups: dict[int, _Group]
    expected: list[dict[str, Change]]
    nexts: list[dict[str, int]]  # each profile's audiences with a next moment: that moment

    @cached_property
    def whole(self) -> frozenset[str]:
        """The layer's audiences (what a profile matched on every one has matched)."""
        return frozenset(self.audiences)

    @classmethod
    def alone(cls, plan: Plan, asked: list[Compiled], look: Look) -> _Layer:
        """The layer read of one profile alone, condition by condition by
        `rules/conditions.py`: arrays cost more than they save for one."""
        s, now = look.subject, look.now
        expected: dict[str, Change] = {}
        nexts: dict[str, int] = {}
        groups: dict[int, _Group] = {}
        for c in asked:
            readings = read(c.root, s, now, c.prepared)
            member = c.audience in s.memberships
            if c.decide(readings) != member:
                expected[c.audience] = "exit" if member else "enter"
            at = next_change(readings, now)
            if at is not None:
                nexts[c.audience] = at
            group = groups.setdefault(plan.matcher.shard_of[c.audience], _Group())
            group.add(c, [[value] for value in c.fact(readings, member)])
        for group in groups.values():
            group.close()
        return cls([c.audience for c in asked], groups, [expected], [nexts])

    @classmethod
    def of(cls, plan: Plan, asked: list[Compiled], rows_of: dict[str, list[int]],
           batch: Batch) -> _Layer:  # fmt: skip
        size = len(batch.subjects)
        place = {c.audience: j for j, c in enumerate(asked)}
        member = np.zeros((len(asked), size), dtype=np.bool_)
        at_audience, at_row = [], []  # each membership of an audience asked: where it goes
        for row, subject in enumerate(batch.subjects):
            for audience in subject.memberships:
                j = place.get(audience)
                if j is not None:
                    at_audience.append(j)
                    at_row.append(row)
        member[at_audience, at_row] = True
        columns = [[batch.column(leaf, rows_of[c.audience]) for leaf in c.prepared] for c in asked]
        decision = np.vstack([c.decide_columns([column.holds for column in cs])
                              for c, cs in zip(asked, columns, strict=True)])  # fmt: skip
        expected: list[dict[str, Change]] = [{} for _ in range(size)]
        for j, row in zip(*np.nonzero(decision != member), strict=True):
            expected[row][asked[j].audience] = "enter" if decision[j, row] else "exit"
        leaves = np.vstack([column.next_at for cs in columns for column in cs])
        leaves = np.where(leaves > batch.nows, leaves, NONE)
        starts = np.cumsum([0] + [len(cs) for cs in columns[:-1]])
        soonest = np.minimum.reduceat(leaves, starts, axis=0).T
        names = [c.audience for c in asked]
        has = soonest != NONE  # each profile's audiences with a next moment, in order:
        of_each = iter(np.array(names, dtype=object)[np.nonzero(has)[1]].tolist())
        moments = iter(soonest[has].tolist())  # (only those made Python objects)
        nexts = [dict(zip(islice(of_each, k), islice(moments, k), strict=True))
                 for k in has.sum(axis=1).tolist()]  # fmt: skip
        groups: dict[int, _Group] = {}
        for c, cs, flag in zip(asked, columns, member, strict=True):
            group = groups.setdefault(plan.matcher.shard_of[c.audience], _Group())
            group.add(c, [flag, *(ranges.column(column.values)
                                  for column, ranges in zip(cs, c.ranges, strict=True)),
                          *(column.present
                            for column, (_, present) in zip(cs, c.fields, strict=True)
                            if present)])  # fmt: skip
        for group in groups.values():
            group.close()
        return cls(names, groups, expected, nexts)


def _match(
    plan: Plan,
    whole_layer: list[Compiled],
    chosen: list[list[Compiled]],
    looks: Sequence[Look],
    batch: Batch,
    outcomes: list[Outcome],
    moved: list[set[str]],
) -> None:
    """One layer matched by the engine for each profile, on the audiences chosen for it:
    their next moments and transitions added to its outcome, its memberships changed, the
    audiences it entered or left added to its `moved`."""
    rows_of = _rows_of(whole_layer, chosen)
    if not rows_of:
        return
    asked = [c for c in whole_layer if c.audience in rows_of]
    if len(looks) > 1:
        layer_read = _Layer.of(plan, asked, rows_of, batch)
    else:
        layer_read = _Layer.alone(plan, asked, looks[0])
    pickers: dict[int, Pickers] = {}  # a layer chosen (most profiles share one) -> its fields
    for row, layer in enumerate(chosen):
        if layer:
            picked = pickers.get(id(layer))
            if picked is None:
                names = None if len(layer) == len(whole_layer) else {c.audience for c in layer}
                picked = pickers[id(layer)] = (names, [
                    _Facts(shard, fields, places, plan.matcher.answers(shard, fields), group,
                           group.keys(places))
                    for shard, group in layer_read.groups.items()
                    if (picker := group.picker(names)) is not None
                    for fields, places in [picker]
                ])  # fmt: skip
            _match_one(plan, layer, picked, layer_read, looks[row], row, outcomes[row], moved[row])


def _rows_of(whole_layer: list[Compiled], chosen: list[list[Compiled]]) -> dict[str, list[int]]:
    """Each audience of the layer chosen for some profile: the rows of those profiles."""
    whole = [row for row, layer in enumerate(chosen) if len(layer) == len(whole_layer)]
    rows_of = {c.audience: list(whole) for c in whole_layer} if whole else {}
    parts: dict[int, tuple[list[Compiled], list[int]]] = {}  # a layer chosen, its profiles
    for row, layer in enumerate(chosen):
        if 0 < len(layer) < len(whole_layer):
            part = parts.get(id(layer))  # (most profiles share one)
            if part is None:
                part = parts[id(layer)] = (layer, [])
            part[1].append(row)
    for layer, rows in parts.values():
        for c in layer:
            rows_of.setdefault(c.audience, []).extend(rows)
    return rows_of


def _match_one(
    plan: Plan,
    layer: list[Compiled],
    picked: Pickers,
    layer_read: _Layer,
    look: Look,
    row: int,
    outcome: Outcome,
    moved: set[str],
) -> None:
    """One profile's facts matched (of every audience of the layer, or of those named),
    its transitions checked against the tree's answer and recorded."""
    names, pickers = picked
    fired = _fired(plan.matcher, pickers, row)
    s = look.subject
    expected, nexts = layer_read.expected[row], layer_read.nexts[row]
    matched: AbstractSet[str] = layer_read.whole if names is None else names
    if len(matched) < len(layer_read.audiences):  # some of the audiences read for the batch
        expected = {a: change for a, change in expected.items() if a in matched}
        nexts = {a: at for a, at in nexts.items() if a in matched}
    if fired != expected:
        for audience in sorted(set(fired) | set(expected)):
            if fired.get(audience) != expected.get(audience):
                DISAGREEMENTS.inc()
                log.error("engine and tree disagree on %s for %s", audience, s.profile_id)
    outcome.matched = outcome.matched | matched if outcome.matched else matched
    if outcome.next_of:
        outcome.next_of.update(nexts)
    else:
        outcome.next_of = nexts  # (the profile's own: made for it by the layer)
    for c in layer if fired else ():
        change = fired.get(c.audience)
        if change is not None:
            _record(plan, c, change, look, outcome, moved)


def _fired(matcher: Matcher, shards: list[_Facts], row: int) -> dict[str, Change]:
    """The transitions the engine finds in the profile's facts (an answer it gave to the same
    fact already taken again)."""
    fired: dict[str, Change] = {}
    for facts in shards:
        key = facts.keys[row]
        answer = facts.answers.get(key)
        if answer is None:
            values = facts.group.values(row, facts.places)
            answer = matcher.match_values(facts.shard, facts.fields, values, key, facts.answers)
        if answer:
            fired.update(answer)
    return fired


def _record(
    plan: Plan, c: Compiled, change: Change, look: Look, outcome: Outcome, moved: set[str]
) -> None:
    """A transition: the profile's memberships changed, the change with its reason (each
    condition as `rules/conditions.py` reads it) added to the outcome."""
    s = look.subject
    if change == "enter":
        s.memberships.add(c.audience)
    else:
        s.memberships.discard(c.audience)
    moved.add(c.audience)
    reason = [r.as_dict() for r in read(c.root, s, look.now, c.prepared)]
    # A look the definitions' change asked for: an audience whose moment came with it
    # changed as time passed.
    cause: Cause = "time" if look.cause == "definition" and c.audience in look.due else look.cause
    outcome.changes.append(AudienceChange(c.audience, s.profile_id, change, look.now, cause,
                                          plan.generation, reason))  # fmt: skip


def subject_of(
    reader: ProfileReader,
    profile_id: str,
    memberships: set[str],
    now: int,
    history_days: int,
    out_of_stock: set[str] | None = None,
) -> Subject | None:
    """The subject of a live profile at `now`, its history limited to the kept days."""
    inputs = reader.audience_inputs(profile_id, now - history_days * DAY_MS)
    if inputs is None:
        return None
    return subject_from(profile_id, inputs, memberships, frozenset(out_of_stock or ()),
                        history_days)  # fmt: skip


# Each event of a history as read: `Happened._make` less its check of the row's length (the
# read script makes each row of four: time, id, name, properties).
_happened = partial(tuple.__new__, Happened)


def subject_from(
    profile_id: str,
    inputs: AudienceInputs,
    memberships: set[str],
    out_of_stock: frozenset[str],
    history_days: int | None = None,
) -> Subject:
    """The subject of the inputs read of a profile (its history after `now` less the kept
    `history_days`, by which its events are forgotten)."""
    history = list(map(_happened, inputs.history))
    return Subject(profile_id, history, inputs.traits, inputs.granted, memberships, out_of_stock,
                   None if history_days is None else history_days * DAY_MS,
                   time_zone=inputs.time_zone, orders=inputs.orders,
                   bot_only=inputs.bot_only)  # fmt: skip
