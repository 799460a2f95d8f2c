"""One profile's audiences at one moment: read its conditions, let the engine match the
snapshots, and say which memberships change, why, and when to look again.

A plan is one generation of definitions compiled for the engine, in layers (an audience
that references another is matched after it, in the same pass, so a change ripples
through at once)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import cached_property

from prometheus_client import Counter

from cdp.profiles.change import TIME_ZONE
from cdp.profiles.reader import AudienceInputs, ProfileReader
from rules.audiences import DAY_MS, layers
from rules.changes import AudienceChange, Cause
from rules.conditions import (
    ORDER_COMPLETED,
    Happened,
    Reading,
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
    TimeZoneNode,
    TraitNode,
    leaves,
    references,
    spec_of,
)
from rules.engine import Compiled, Matcher

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

    _reading: dict[tuple[int, frozenset[str] | None], list[Compiled]] = field(
        default_factory=dict, repr=False
    )

    @cached_property
    def kept(self) -> frozenset[str]:
        """The audiences whose memberships a profile keeps: those matched and those frozen."""
        return frozenset(self.definitions) | frozenset(self.frozen)

    @property
    def reads_stock(self) -> bool:
        return bool(self.watch_events)

    def reading(self, layer: int, changed: frozenset[str] | None) -> list[Compiled]:
        """The layer's audiences that read what changed (all of them for None)."""
        key = (layer, changed)
        found = self._reading.get(key)
        if found is None:
            if len(self._reading) > 10_000:  # combinations of names seen: a bounded memo
                self._reading.clear()
            found = self._reading[key] = [
                c for c in self.layers[layer]
                if changed is None or self.inputs[c.audience] & changed
            ]  # fmt: skip
        return found

    @classmethod
    def of(
        cls, generation: int, definitions: list[Definition], frozen: dict[str, str] | None = None
    ) -> Plan:
        """The definitions' plan; an audience whose rules the engine refuses is left out of
        it (frozen), the others kept."""
        frozen = dict(frozen or {})
        plan = cls._of(generation, definitions, frozen)
        while plan.matcher.refused:  # each round leaves out at least one
            plan.matcher.close()
            frozen.update((a, f"the engine refused its rules: {why}")
                          for a, why in plan.matcher.refused.items())  # fmt: skip
            definitions = [d for d in definitions if d.id not in frozen]
            plan = cls._of(generation, definitions, frozen)
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
    next_of: dict[str, int | None] = field(default_factory=dict)  # each matched audience's
    # next moment of change with no event
    readings: dict[str, list[Reading]] = field(default_factory=dict)


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


def evaluate(
    plan: Plan,
    subject: Subject,
    now: int,
    cause: Cause,
    changed: frozenset[str] | None = None,
    due: frozenset[str] = frozenset(),
) -> Outcome:
    """Match the audiences of the plan on the subject at `now` (epoch ms): all of them, or
    with `changed` (what changed since the last evaluation; empty when only time passed)
    only those that read it, those `due` (their moment has come), and those that reference
    an audience the profile entered or left. Memberships of audiences the plan does not
    hold (deleted, disabled) are left as exits; those it holds frozen are kept."""
    outcome = Outcome()
    moved: set[str] = set()
    members = set(subject.memberships) & plan.kept
    for gone in sorted(set(subject.memberships) - members):
        outcome.changes.append(AudienceChange(gone, subject.profile_id, "exit", now, "definition",
                                              plan.generation, []))  # fmt: skip
    subject.memberships = members
    for n, whole_layer in enumerate(plan.layers):
        layer = plan.reading(n, changed)
        if moved or due:  # and those due, or referencing an audience entered or left
            chosen = {c.audience for c in layer}
            layer = [c for c in whole_layer if c.audience in chosen or c.audience in due
                     or plan.refers[c.audience] & moved]  # fmt: skip
        if layer:
            moved |= _match(plan, layer, subject, now, cause, outcome)
    outcome.next_of = {a: next_change(r, now) for a, r in outcome.readings.items()}
    return outcome


def _match(
    plan: Plan, layer: list[Compiled], subject: Subject, now: int, cause: Cause, outcome: Outcome
) -> set[str]:
    """One layer's audiences matched by the engine: their readings and transitions added to
    the outcome, the subject's memberships changed; the audiences entered or left."""
    members = subject.memberships
    facts: dict[int, dict[str, float]] = {}  # shard -> its audiences' snapshots
    shard_of = plan.matcher.shard_of
    for compiled in layer:
        audience = compiled.audience
        readings = outcome.readings[audience] = read(compiled.root, subject, now, compiled.prepared)
        fact = facts.get(shard_of[audience])
        if fact is None:
            fact = facts[shard_of[audience]] = {}
        compiled.fill(fact, readings, audience in members)
    fired = plan.matcher.match_facts(facts)
    moved = set()
    for compiled in layer:
        audience = compiled.audience
        readings = outcome.readings[audience]
        expected = compiled.decide(readings)
        was = audience in members
        change = fired.get(audience)
        if change != (
            "enter" if expected and not was else "exit" if was and not expected else None
        ):
            DISAGREEMENTS.inc()
            log.error("engine and tree disagree on %s for %s", audience, subject.profile_id)
        if change == "enter":
            members.add(audience)
        elif change == "exit":
            members.discard(audience)
        if change:
            moved.add(audience)
            reason = [r.as_dict() for r in readings]
            outcome.changes.append(AudienceChange(audience, subject.profile_id, change, now,
                                                  cause, plan.generation, reason))  # fmt: skip
    return moved


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


def subject_from(
    profile_id: str,
    inputs: AudienceInputs,
    memberships: set[str],
    out_of_stock: frozenset[str],
    history_days: int | None = None,
) -> Subject:
    """The subject of the inputs read of a profile (its history after `now` less the kept
    `history_days`, by which its events are forgotten)."""
    history = [
        Happened(mid, event, at, properties) for at, mid, event, properties in inputs.history
    ]
    return Subject(profile_id, history, inputs.traits, inputs.granted, memberships, out_of_stock,
                   None if history_days is None else history_days * DAY_MS,
                   time_zone=inputs.time_zone, orders=inputs.orders)  # fmt: skip
