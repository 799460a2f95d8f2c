"""The durable_rules printer and matcher. Each audience becomes two rules over a flat
numeric snapshot of its conditions' readings (`rules/conditions.py`): *enter* (not a member,
the tree holds) and *exit* (a member, the tree does not hold, printed with the negation
pushed down to the comparisons). Only transitions fire an action.

What durable-rules 2.0.28 allows, and how this stays inside it (measured here): a fact
carries at most 252 properties (error 302 past that) and a ruleset's cost grows with its
rules, so audiences are put in shards of at most `SHARD_SIZE` whose snapshots fit in one
fact, a ruleset each, and a profile's snapshot is asserted and retracted once per shard
(each audience's alone when many alternatives holding at once overflow the engine's matching
stack, error 303); a ruleset cannot be redefined, so each generation of definitions gets new
names (the one before is deleted: `Matcher.close`; the engine keeps a ruleset until then);
an OR fires once per satisfied branch (the transitions are kept by audience, once each); a
fact that matches no rule means "no transition"; a number written `1e+16` (exponent, no
fraction) is refused, in a rule and in a fact (`engine_json` writes `1.0e+16`); a rule holds
at most `MAX_CONNECTIVES` `and`/`or` (error 113; the rules are written as the ruleset's JSON
with nested ones merged, which the library's DSL does not do). A shard the engine refuses
is made again audience by audience; an audience refused alone is left out (`refused`).
The rulesets are made and matched through the native module alone: the library's Host runs
background threads that would dispatch our actions from another thread (the engine loses or
misplaces actions when threads share it), and its Python layer encodes every fact with the
json module twice, which costs more than the matching.
A fact's answer depends on the fact alone (asserted, then retracted: nothing stays), so the
matcher keeps its answers by the fact's values (`match_values`) and asks the engine only for
facts it has not seen. A fact carries, for each reading, a value standing for the range of
readings the rules tell apart (`Ranges`): a count of 3 or of 7 past a threshold of 2, an age
of 61 or of 75 minutes past an hour are one value, so profiles show few distinct facts."""

from __future__ import annotations

import itertools
import math
import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson

from rules.batch import Flags, column_decider
from rules.changes import Change
from rules.conditions import Prepared, Reading, decider, prepare
from rules.definition import (
    AggregateNode,
    And,
    BucketNode,
    CartNode,
    LastPerformedNode,
    Leaf,
    Node,
    Not,
    NotFollowedByNode,
    Or,
    OrdersNode,
    PerformedNode,
    leaves,
    spec_of,
)

SHARD_SIZE = 8
# The properties of one fact: error 302 past that (measured). An audience within MAX_TERMS
# has at most 128 fields (each `and` or `or` multiplies the alternatives of the tree or of
# its negation), so one always fits alone.
FACT_FIELDS = 252
# The engine's matching stack overflows when many alternatives hold at once (two audiences
# of 64 alternatives, all holding, in one fact: measured); one audience alone fits.
STACK_OVERFLOW = "error code: 303"
_SLOT = re.compile(r"a[0-9]+")
# The native engine's answers to an assert or retract (durable/engine.py's _handle_result).
NOT_HANDLED, OBSERVED = 1, 2
RULESETS = itertools.count()  # names are for the process's life: a ruleset cannot be redefined
MAX_TERMS = 64  # the engine expands each rule to its disjunctive form
# A rule's `and`s and `or`s: the engine keeps two entries for each in a sequence of 31 (error
# 113 past that: rete.h's MAX_SEQUENCE_EXPRESSIONS, measured).
MAX_CONNECTIVES = 15
# The engine's answers a matcher keeps (~0.3 KiB each, measured): 12 MiB at most.
ANSWERS_KEPT = 40_000
# A shard's transitions by its fact (fields in one order): the bytes of its values, each a
# float64 (`_Group.keys` in `rules/evaluation.py`).
Answers = dict[bytes, dict[str, Change]]
INVERSE = {">=": "<", ">": "<=", "<=": ">", "<": ">=", "==": "!=", "!=": "=="}


# A printed expression: ("cmp", field, op, value) | ("and", [...]) | ("or", [...]).
Expr = tuple[Any, ...]


def _cmp(name: str, op: str, value: float) -> Expr:
    return ("cmp", name, op, value)


# Leaves compared as one number with a threshold: (operator, threshold) of each.
COMPARISONS: dict[type, Any] = {
    PerformedNode: lambda spec: (spec.op, spec.times),
    NotFollowedByNode: lambda spec: (">=", spec.wait),
    LastPerformedNode: lambda spec: (">=", spec.ago),  # `<` is a range: below
    CartNode: lambda spec: (spec.op, spec.threshold),
    BucketNode: lambda spec: ("<", spec.below),
    OrdersNode: lambda spec: (spec.op, spec.count),
}


def leaf_expr(leaf: Leaf, value: str, present: str, negated: bool) -> Expr:
    """The leaf's comparison over its snapshot fields, or its negation."""
    spec = spec_of(leaf)
    if isinstance(leaf, LastPerformedNode) and spec.op == "<":  # done, and recently
        if negated:
            return ("or", [_cmp(value, "<", 0), _cmp(value, ">=", spec.ago)])
        return ("and", [_cmp(value, ">=", 0), _cmp(value, "<", spec.ago)])
    if isinstance(leaf, AggregateNode):  # an average of nothing is not compared
        if negated:
            return ("or", [_cmp(present, "==", 0), _cmp(value, INVERSE[spec.op], spec.value)])
        return ("and", [_cmp(present, "==", 1), _cmp(value, spec.op, spec.value)])
    comparison = COMPARISONS.get(type(leaf))
    # Traits (typed comparisons, made in Python), consent, stock and membership: flags.
    op, threshold = comparison(spec) if comparison else ("==", 1)
    return _cmp(value, INVERSE[op] if negated else op, threshold)


def print_tree(node: Node, prefix: str, negated: bool = False, path: str = "root") -> Expr:
    """The tree as one expression over fields `<prefix>v<i>` / `<prefix>p<i>` (leaf i in
    left-to-right order), its negation pushed down to the leaves."""
    counter = itertools.count()

    def visit(n: Node, neg: bool) -> Expr:
        if isinstance(n, And | Or):
            parts = [visit(c, neg) for c in (n.and_ if isinstance(n, And) else n.or_)]
            is_and = isinstance(n, And) != neg
            return ("and" if is_and else "or", parts)
        if isinstance(n, Not):
            return visit(n.not_, not neg)
        i = next(counter)
        return leaf_expr(n, f"{prefix}v{i}", f"{prefix}p{i}", neg)

    return visit(node, negated)


def terms(expr: Expr) -> int:
    """How many conjunctions the engine expands the expression to."""
    if expr[0] == "cmp":
        return 1
    counts = [terms(e) for e in expr[1]]
    if expr[0] == "or":
        return sum(counts)
    product = 1
    for count in counts:
        product *= count
    return product


def width(node: Node) -> int:
    """The fields of the tree's snapshot: its member flag, each leaf's value, and presence
    for the leaves that may have none (aggregates)."""
    return 1 + sum(1 + isinstance(leaf, AggregateNode) for _, leaf in leaves(node))


def complexity(node: Node) -> int:
    return max(terms(print_tree(node, "x")), terms(print_tree(node, "x", negated=True)))


def connectives(node: Node) -> int:
    """The most `and`/`or` one of the audience's two rules holds, as the engine gets them."""
    return max(_connectives(expr) for expr, _ in transitions(node, "x"))


def _connectives(expr: Expr) -> int:
    return 0 if expr[0] == "cmp" else 1 + sum(_connectives(e) for e in expr[1])


def transitions(node: Node, prefix: str) -> tuple[tuple[Expr, Change], ...]:
    """The audience's two rules: enter (not a member, the tree holds) and exit (a member,
    the tree does not hold), each an expression with nested `and`s and `or`s merged."""
    member = f"{prefix}m"
    tree, negation = print_tree(node, prefix), print_tree(node, prefix, negated=True)
    return (
        (merged(("and", [_cmp(member, "==", 0), tree])), "enter"),
        (merged(("and", [_cmp(member, "==", 1), negation])), "exit"),
    )


def merged(expr: Expr) -> Expr:
    """The expression with an `and` inside an `and` (an `or` inside an `or`) made one, and
    a lone part taken for itself: the engine keeps at most `MAX_CONNECTIVES` per rule."""
    if expr[0] == "cmp":
        return expr
    parts: list[Expr] = []
    for part in map(merged, expr[1]):
        parts.extend(part[1] if part[0] == expr[0] else [part])
    return parts[0] if len(parts) == 1 else (expr[0], parts)


OPERATORS = {">=": "$gte", ">": "$gt", "<=": "$lte", "<": "$lt", "!=": "$neq"}


def compared(expr: Expr) -> Iterable[tuple[str, str, float]]:
    """Each comparison of the expression: its field, operator and value."""
    if expr[0] == "cmp":
        yield expr[1], expr[2], expr[3]
    else:
        for part in expr[1]:
            yield from compared(part)


# Where a comparison cuts the numbers: before its value (`>=`, `<`: the value goes with those
# above it), after it (`>`, `<=`: with those below), or both (`==`, `!=`: alone).
CUTS = {">=": (0,), "<": (0,), ">": (1,), "<=": (1,), "==": (0, 1), "!=": (0, 1)}


@dataclass(frozen=True)
class Ranges:
    """The ranges of a fact's field that its audience's rules tell apart: its comparisons cut
    the numbers into ranges, and every value of a range compares alike with each of them. So
    a fact carries one value standing for its range, and the rules fire as they would on the
    reading itself; profiles whose readings differ only within ranges (counts past a
    threshold, ages in ms) show the engine one fact, whose answer is kept
    (`Matcher.match_values`). The engine compares doubles: so do the ranges."""

    starts: tuple[float, ...]  # ascending: a range starts at each (cut before)
    after: tuple[float, ...]  # ascending: a range starts just after each (cut after)
    standing: tuple[float, ...]  # a value of each range, in order (empty ones: any)

    @classmethod
    def of(cls, comparisons: Iterable[tuple[str, float]]) -> Ranges:
        """The ranges cut by these comparisons (operator, value)."""
        cuts = sorted({(float(value), side) for op, value in comparisons for side in CUTS[op]})
        standing = [cuts[0][0] if cuts[0][1] else _below(cuts[0][0])]
        for (low, low_side), (high, high_side) in itertools.pairwise(cuts):
            # from `low` (or just after it) to `high` (or up to it, itself included)
            if not low_side:
                standing.append(low)
            elif high_side:
                standing.append(high)
            else:
                standing.append(_between(low, high))
        last, last_side = cuts[-1]
        standing.append(-_below(-last) if last_side else last)
        return cls(tuple(v for v, side in cuts if not side), tuple(v for v, side in cuts if side),
                   tuple(standing))  # fmt: skip

    def one(self, value: float) -> float:
        """The value standing for this one's range."""
        value = float(value)
        return self.standing[bisect_right(self.starts, value) + bisect_left(self.after, value)]

    def column(self, values: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
        """`one` of each value, at once."""
        arrays = self._arrays
        index = np.searchsorted(arrays[0], values, side="right")
        index += np.searchsorted(arrays[1], values, side="left")
        return arrays[2][index]

    @cached_property
    def _arrays(self) -> tuple[npt.NDArray[np.float64], ...]:
        return tuple(np.array(part, dtype=np.float64)
                     for part in (self.starts, self.after, self.standing))  # fmt: skip


def _below(bound: float) -> float:
    """A value below the bound (1 below, where floats still tell the difference); the bound
    itself when no float is (that range holds no reading: they are finite)."""
    below = bound - 1
    below = below if below < bound else math.nextafter(bound, -math.inf)
    return below if math.isfinite(below) else bound


def _between(low: float, high: float) -> float:
    """A value between the two (`low` when no float is: that range holds no value)."""
    for value in (low + 1, low / 2 + high / 2, math.nextafter(low, math.inf)):
        if low < value < high:
            return value
    return low


def rule_json(expr: Expr) -> Any:
    """The expression as durable_rules' ruleset JSON has it (what its DSL writes)."""
    if expr[0] == "cmp":
        _, name, op, value = expr
        return {name: value} if op == "==" else {OPERATORS[op]: {name: value}}
    return {f"${expr[0]}": [rule_json(e) for e in expr[1]]}


@dataclass(frozen=True)
class Compiled:
    """One audience as the engine sees it."""

    audience: str
    slot: int  # its index: fields are `a<slot>v<i>`, its member flag `a<slot>m`
    root: Node
    found: list[tuple[str, Leaf]] = field(default_factory=list)  # its leaves, with paths

    def __post_init__(self) -> None:
        if not self.found:
            self.found.extend(leaves(self.root))

    @property
    def prefix(self) -> str:
        return f"a{self.slot}"

    def snapshot(self, readings: list[Reading], member: bool) -> dict[str, float]:
        """The fact the rules match: the member flag, each leaf's value, and whether there
        is a value at all for the leaves that may have none (aggregates): every property
        costs the engine, so there are no others."""
        return dict(zip(self.names, self.values(readings, member), strict=True))

    def values(self, readings: Sequence[Reading], member: bool) -> list[float]:
        """The snapshot's values in the order of its `names`."""
        return [int(member), *(r.value for r in readings),
                *(int(r.present) for r, (_, present) in zip(readings, self.fields, strict=True)
                  if present)]  # fmt: skip

    def fact(self, readings: Sequence[Reading], member: bool) -> list[float]:
        """`values`, each leaf's standing for its range (`Ranges`): what the engine is shown
        (the flags, member and presence, are their own ranges)."""
        values = self.values(readings, member)
        values[1 : 1 + len(readings)] = [
            ranges.one(r.value) for r, ranges in zip(readings, self.ranges, strict=True)
        ]
        return values

    @cached_property
    def ranges(self) -> list[Ranges]:
        """The ranges of each leaf's value field (in leaf order) that the rules tell apart."""
        found: dict[str, list[tuple[str, float]]] = {}
        for expr, _ in transitions(self.root, self.prefix):
            for name, op, value in compared(expr):
                found.setdefault(name, []).append((op, value))
        return [Ranges.of(found[value]) for value, _ in self.fields]

    @cached_property
    def width(self) -> int:
        return width(self.root)

    @cached_property
    def member_field(self) -> str:
        return f"{self.prefix}m"

    @cached_property
    def fields(self) -> list[tuple[str, str | None]]:
        """Each leaf's value field, and its presence field if it may have no value."""
        p = self.prefix
        return [(f"{p}v{i}", f"{p}p{i}" if isinstance(leaf, AggregateNode) else None)
                for i, (_, leaf) in enumerate(self.found)]  # fmt: skip

    @cached_property
    def names(self) -> list[str]:
        """The snapshot's field names in the order `rules/evaluation.py` puts its columns:
        the member flag, each leaf's value, the presence fields."""
        return [self.member_field, *(value for value, _ in self.fields),
                *(present for _, present in self.fields if present)]  # fmt: skip

    @cached_property
    def prepared(self) -> list[Prepared]:
        return prepare(self.found)

    @cached_property
    def decide(self) -> Callable[[Sequence[Reading]], bool]:
        return decider(self.root)

    @cached_property
    def decide_columns(self) -> Callable[[Sequence[Flags]], Flags]:
        return column_decider(self.root)


def by_audience(fact: dict[str, float]) -> list[dict[str, float]]:
    """A shard's fact split into its audiences' snapshots (fields `a<slot>...`)."""
    parts: dict[str, dict[str, float]] = {}
    for name, value in fact.items():
        slot = _SLOT.match(name)
        assert slot, name
        parts.setdefault(slot.group(), {})[name] = value
    return list(parts.values())


def shards(audiences: list[Compiled]) -> list[list[Compiled]]:
    """The audiences in order, a shard at most `SHARD_SIZE` of them whose snapshots fit in one
    fact (`FACT_FIELDS`)."""
    found: list[list[Compiled]] = []
    used = 0  # fields of the last shard
    for compiled in audiences:
        if not found or len(found[-1]) == SHARD_SIZE or used + compiled.width > FACT_FIELDS:
            found.append([])
            used = 0
        found[-1].append(compiled)
        used += compiled.width
    return found


@dataclass
class Matcher:
    """The audiences of one generation, matched by durable_rules, in shards. Used by one
    thread (the engine loses actions when threads share a session)."""

    generation: int
    audiences: list[Compiled]
    _fired: dict[str, Change] = field(default_factory=dict)
    shard_of: dict[str, int] = field(default_factory=dict)  # audience -> its shard
    _handles: list[Any] = field(default_factory=list)  # each shard's native ruleset
    _rules: list[dict[str, tuple[str, Change]]] = field(default_factory=list)  # name -> transition
    _answers: dict[tuple[int, tuple[str, ...]], Answers] = field(default_factory=dict)
    _kept: int = 0  # answers kept, in all
    refused: dict[str, str] = field(default_factory=dict)  # audience -> why the engine would
    # not take its rules (even alone): it is not matched

    def __post_init__(self) -> None:
        for s, audiences in enumerate(shards(self.audiences)):
            name = f"audiences_{next(RULESETS)}_g{self.generation}_s{s}"
            try:
                self._create(name, audiences)
            except RulesRefused:
                for compiled in audiences:  # which one: each alone, the others kept
                    try:
                        self._create(f"{name}_{compiled.slot}", [compiled])
                    except RulesRefused as error:
                        self.refused[compiled.audience] = str(error)

    def _create(self, name: str, audiences: list[Compiled]) -> None:
        """One ruleset for these audiences, two rules each (its transitions)."""
        import durable_rules_engine as native

        rules: dict[str, tuple[str, Change]] = {}
        definition: dict[str, Any] = {}
        for compiled in audiences:
            for expr, change in transitions(compiled.root, compiled.prefix):
                rule = f"r_{len(rules)}"
                rules[rule] = (compiled.audience, change)
                definition[rule] = {"all": [{"m": rule_json(expr)}]}
        try:
            handle = native.create_ruleset(name, engine_json(definition))
        except native.error as error:
            raise RulesRefused(f"{', '.join(c.audience for c in audiences)}: {error}") from error
        for compiled in audiences:
            self.shard_of[compiled.audience] = len(self._handles)
        self._handles.append(handle)
        self._rules.append(rules)

    def match(self, snapshots: dict[str, dict[str, float]]) -> set[tuple[str, str]]:
        """(audience, "enter" | "exit") for each audience whose snapshot shows a transition."""
        by_shard: dict[int, dict[str, float]] = {}
        for audience, fact in snapshots.items():
            by_shard.setdefault(self.shard_of[audience], {}).update(fact)
        return set(self.match_facts(by_shard).items())

    def match_facts(self, by_shard: dict[int, dict[str, float]]) -> dict[str, Change]:
        """Audience -> "enter" | "exit" for each transition the shards' facts (the snapshots
        of a shard's audiences, `Compiled.snapshot`) show. Each is asserted, then retracted."""
        fired: dict[str, Change] = {}
        for shard, fact in by_shard.items():
            fired.update(self.match_shard(shard, fact))
        return fired

    def match_shard(self, shard: int, fact: dict[str, float]) -> dict[str, Change]:
        """The transitions one shard's fact shows."""
        import durable_rules_engine as native

        self._fired.clear()
        try:
            self._match_fact(shard, fact)
        except native.error as error:
            if STACK_OVERFLOW not in str(error):
                raise
            # Many alternatives holding at once overflowed the engine's matching stack
            # (nothing was kept): the shard's audiences each alone.
            for part in by_audience(fact):
                self._match_fact(shard, part)
        return dict(self._fired)

    def answers(self, shard: int, fields: list[str]) -> Answers:
        """The engine's answers kept for the shard's facts of these fields (in this order),
        by their values: `match_values` fills it."""
        key = (shard, tuple(fields))
        found = self._answers.get(key)
        if found is None:
            found = self._answers[key] = {}
        return found

    def match_values(
        self, shard: int, fields: list[str], values: list[float], key: bytes, answers: Answers
    ) -> dict[str, Change]:
        """`match_shard` of the fact of these fields and values, its answer kept in
        `answers` (of `answers(shard, fields)`): the engine's answer to a fact depends on the
        fact alone (it is asserted and retracted, nothing stays), and many profiles show the
        same one (their counts, flags and carts alike). At most `ANSWERS_KEPT` are kept (then
        they are forgotten and kept anew)."""
        if self._kept >= ANSWERS_KEPT:
            self.forget()
        answer = self.match_shard(shard, dict(zip(fields, values, strict=True)))
        answers[key] = answer
        self._kept += 1
        return answer

    @property
    def answers_kept(self) -> int:
        """The engine's answers kept since they were last forgotten: the facts it was asked."""
        return self._kept

    def forget(self) -> None:
        """The answers kept forgotten (those a match under way holds go with it)."""
        self._answers.clear()
        self._kept = 0

    def _match_fact(self, shard: int, fact: dict[str, float]) -> None:
        self.match_text(shard, engine_json(fact))

    def match_text(self, shard: int, text: str) -> None:
        """Assert the shard's fact (as `engine_json` writes it), take the transitions it
        fires, retract it."""
        import durable_rules_engine as native

        handle = self._handles[shard]
        asserted = native.assert_fact(handle, text)
        if asserted[0] == NOT_HANDLED:
            return  # no rule matched (the steady state): the engine kept nothing
        try:
            self._run(shard, handle, asserted)
        finally:  # even after a failure: a fact left asserted would fail every profile whose
            # snapshot is the same text
            self._run(shard, handle, native.retract_fact(handle, text))

    def _run(self, shard: int, handle: Any, result: tuple[int, int]) -> None:
        """Take the actions an assert or retract started off the engine's queue, each the
        transition its rule names (none when no rule matched). The library's own dispatch
        would call an action per rule through its JSON round trips of the session state,
        which costs more than the matching."""
        import durable_rules_engine as native

        code, state = result
        if code == NOT_HANDLED:
            return
        if code == OBSERVED:  # an identical fact was still asserted: `match_facts` takes it back
            raise RuntimeError("the engine held this snapshot already")
        started = native.start_action_for_state(handle, state)
        message = started[1] if started else None
        while message:
            for rule in orjson.loads(message):
                audience, change = self._rules[shard][rule]
                self._fired[audience] = change
            message = native.complete_and_start_action(handle, state)

    def shard_count(self) -> int:
        return len(self._handles)

    def close(self) -> None:
        """Free the shards' rulesets: the engine keeps each until told (about 1 MiB for 40
        audiences), and a worker builds new ones for each generation of definitions."""
        import durable_rules_engine as native

        for handle in self._handles:
            native.delete_ruleset(handle)
        self._handles.clear()


class RulesRefused(Exception):
    """durable_rules would not create a ruleset."""


# A number in exponent form with no fraction (`1e+16`, `1e-05`): durable_rules' parser
# refuses it (error 204) in a ruleset and in a fact alike, and takes `1.0e+16`.
_BARE_EXPONENT = re.compile(rb"(?<=[:,\[])(-?[0-9]+)(?=[eE])")


def engine_json(value: Any) -> str:
    """JSON text durable_rules parses: orjson's, each number in exponent form given a
    fraction (our field and rule names hold no `e`, so most texts are taken as they are)."""
    text = orjson.dumps(value)
    if b"e" in text or b"E" in text:
        text = _BARE_EXPONENT.sub(rb"\1.0", text)
    return text.decode()


def compile_all(definitions: Iterable[tuple[str, Node]], start_slot: int = 0) -> list[Compiled]:
    return [
        Compiled(audience, start_slot + i, root) for i, (audience, root) in enumerate(definitions)
    ]
