"""The durable_rules matcher against the tree's own answer: for generated trees and
snapshots, the engine fires exactly the transitions the tree implies, and nothing else."""

from __future__ import annotations

import math
from typing import Any

import durable_rules_engine as native
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import engine
from rules.audiences import engine_problems
from rules.conditions import COMPARE, Happened, Reading, Subject, holds
from rules.definition import Definition, Node, kind_of, leaves, parse_node, spec_of
from rules.engine import (
    MAX_CONNECTIVES,
    MAX_TERMS,
    Compiled,
    Matcher,
    Ranges,
    complexity,
    connectives,
    engine_json,
)
from rules.evaluation import Look, Plan, evaluate, evaluate_all

LEAVES = [
    {"performed": {"event": "V", "within": "P1D", "op": ">=", "times": 2}},
    {"performed": {"event": "A", "within": "P1D", "op": "==", "times": 0}},
    {"not_followed_by": {"event": "A", "then": {"event": "O"}, "wait": "PT1H"}},
    {"last_performed": {"event": "O", "op": "<", "ago": "P1D"}},
    {"last_performed": {"event": "O", "op": ">=", "ago": "PT1H"}},
    {"aggregate": {"event": "O", "property": "revenue", "fn": "avg", "within": "P1D",
                   "op": "<", "value": 50}},
    {"cart": {"op": ">", "units": 0}},
    {"bucket": {"salt": "s", "below": 30}},
    {"trait": {"name": "plan", "value": "pro"}},
]  # fmt: skip
tree = st.recursive(
    st.sampled_from(LEAVES),
    lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"and": c}),
        st.lists(children, min_size=1, max_size=3).map(lambda c: {"or": c}),
        children.map(lambda c: {"not": c}),
    ),
    max_leaves=5,
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([1e16, -1e-05, 1e300])
VALUES = {  # values around each leaf's threshold, and "never" (-1)
    "performed": [0, 1, 2, 3], "not_followed_by": [-1, 0, 3_599_999, 3_600_000],
    "last_performed": [-1, 0, 3_599_999, 3_600_000, 86_400_000],
    "aggregate": [0, 49.5, 50, 120], "cart": [0, 1, 2], "bucket": [0, 29, 30, 99],
    "trait": [0, 1],
}  # fmt: skip


def reading(path: str, kind: str, value: float, present: bool, spec: Any) -> Reading:
    """What the conditions module would read, with its own verdict for the value."""
    if kind == "performed":
        ok = {">=": value >= spec.times, "==": value == spec.times}[spec.op]
    elif kind == "not_followed_by":
        ok = value >= spec.wait
    elif kind == "last_performed":
        ok = value >= 0 and (value >= spec.ago if spec.op == ">=" else value < spec.ago)
    elif kind == "aggregate":
        ok = present and value < spec.value
    elif kind == "cart":
        ok = value > spec.threshold
    elif kind == "bucket":
        ok = value < spec.below
    else:
        ok = value == 1
    return Reading(path, kind, value, present, ok, spec, value, None)


def drawn_readings(root: Node, data: st.DataObject) -> list[Reading]:
    """A reading for each leaf, its value drawn around the leaf's threshold."""
    readings = []
    for path, leaf in leaves(root):
        kind = next(iter(type(leaf).model_fields))
        value = data.draw(st.sampled_from(VALUES[kind]))
        present = kind != "aggregate" or data.draw(st.booleans())
        readings.append(reading(path, kind, value, present, getattr(leaf, kind)))
    return readings


@settings(max_examples=300, deadline=None)
@given(document=tree, data=st.data(), member=st.booleans())
def test_the_engine_fires_what_the_tree_implies(document: dict[str, Any], data: st.DataObject,
                                                member: bool) -> None:  # fmt: skip
    root = parse_node(document)
    matcher = Matcher(0, [Compiled("x", 0, root)])
    readings = drawn_readings(root, data)
    expected = holds(root, {r.path: r for r in readings})
    fired = matcher.match({"x": Compiled("x", 0, root).snapshot(readings, member)})
    if expected and not member:
        assert fired == {("x", "enter")}
    elif member and not expected:
        assert fired == {("x", "exit")}
    else:
        assert fired == set()


@settings(max_examples=300, deadline=None)
@given(threshold=FLOATS, value=FLOATS, op=st.sampled_from(sorted(COMPARE)))
def test_any_float_threshold_and_value_are_compared_exactly(
    threshold: float, value: float, op: str
) -> None:
    """The engine's parser refuses numbers written `1e+16` (an exponent, no fraction): in a
    rule, every evaluation would fail; in a fact, that profile's."""
    root = parse_node({"aggregate": {"event": "O", "property": "revenue", "within": "P1D",
                                     "op": op, "value": threshold}})  # fmt: skip
    compiled = Compiled("x", 0, root)
    ok = COMPARE[op](value, threshold)
    read = Reading("root", "aggregate", value, True, ok, root.aggregate, value, None)
    fired = Matcher(0, [compiled]).match({"x": compiled.snapshot([read], member=False)})
    assert fired == ({("x", "enter")} if ok else set())


NUMBERS = FLOATS | st.integers(-(2**53), 2**53) | st.sampled_from([0, 1, 2, -1, 0.5, 1e308])


@settings(max_examples=500, deadline=None)
@given(comparisons=st.lists(st.tuples(st.sampled_from(sorted(COMPARE)), NUMBERS), min_size=1,
                            max_size=4), data=st.data())  # fmt: skip
def test_a_value_standing_for_its_range_compares_as_the_value_does(
    comparisons: list[tuple[str, float]], data: st.DataObject
) -> None:
    """What the engine is shown of a reading (`Ranges`): one at a time (a profile alone)
    and a column at once (the batch's) alike. The engine compares doubles."""
    bounds = [float(b) for _, b in comparisons]
    near = [math.nextafter(b, side) for b in bounds for side in (-math.inf, math.inf)]
    near = [value for value in near if math.isfinite(value)]  # (readings are finite)
    values = data.draw(st.lists(NUMBERS | st.sampled_from([*bounds, *near]), min_size=1))
    ranges = Ranges.of(comparisons)
    column = ranges.column(np.array(values, dtype=np.float64)).tolist()
    for value, in_column in zip(values, column, strict=True):
        shown = ranges.one(value)
        assert shown == in_column and math.isfinite(shown)
        for op, bound in comparisons:
            compare = COMPARE[op]
            assert compare(shown, float(bound)) == compare(float(value), float(bound))


def test_the_ranges_are_those_the_comparisons_tell_apart() -> None:
    at_least_two = Ranges.of([(">=", 2), ("<", 2)])
    assert [at_least_two.one(v) for v in (0, 1.5, 2, 3, 1e9)] == [1, 1, 2, 2, 2]
    exactly_two = Ranges.of([("==", 2)])
    assert [exactly_two.one(v) for v in (0, 2, 2.5, 7)] == [1, 2, 3, 3]
    within = Ranges.of([(">=", 0), ("<", 3_600_000)])  # an age: done, and within the hour
    assert [within.one(v) for v in (-1, 0, 59_000, 3_600_000, 9e9)] == [-1, 0, 0, 3_600_000,
                                                                         3_600_000]  # fmt: skip


forests = st.lists(
    st.recursive(tree, lambda children: st.one_of(
        st.lists(children, min_size=1, max_size=6).map(lambda c: {"and": c}),
        st.lists(children, min_size=1, max_size=6).map(lambda c: {"or": c}),
    ), max_leaves=8),
    min_size=1, max_size=14,
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(documents=forests, data=st.data())
def test_audiences_sharing_shards_each_fire_what_their_tree_implies(
    documents: list[dict[str, Any]], data: st.DataObject
) -> None:
    roots = [root for root in map(parse_node, documents) if not engine_problems(root)]
    compiled = [Compiled(f"x{i}", i, root) for i, root in enumerate(roots)]
    snapshots, expected = {}, set()
    for c in compiled:
        readings = drawn_readings(c.root, data)
        member = data.draw(st.booleans())
        tree_holds = holds(c.root, {r.path: r for r in readings})
        if tree_holds != member:
            expected.add((c.audience, "enter" if tree_holds else "exit"))
        snapshots[c.audience] = c.snapshot(readings, member)
    assert Matcher(0, compiled).match(snapshots) == expected


def test_many_audiences_are_sharded_and_each_answers_alone() -> None:
    roots = [parse_node({"performed": {"event": "V", "within": "P1D", "times": i}})
             for i in range(20)]  # fmt: skip
    compiled = [Compiled(f"a{i}", i, root) for i, root in enumerate(roots)]
    matcher = Matcher(0, compiled)
    assert matcher.shard_count() == 3
    seen = Reading("root", "performed", 5, True, True, None, 5, None)  # 5 views
    snapshots = {c.audience: c.snapshot([seen], member=c.slot % 2 == 0) for c in compiled}
    fired = matcher.match(snapshots)
    # Audience i asks for i views: odd ones (not members) up to 5 enter, even ones past 5 exit.
    assert fired == {(f"a{i}", "enter") for i in (1, 3, 5)} | {
        (f"a{i}", "exit") for i in range(6, 20, 2)
    }


def test_a_snapshot_a_failure_left_in_the_engine_is_taken_back() -> None:
    """A fact left asserted (its actions failed before the retract) would make every later
    identical snapshot fail: the all-zero one is most profiles'."""
    compiled = Compiled("x", 0, parse_node({"performed": {"event": "V", "within": "P1D",
                                                          "times": 1}}))  # fmt: skip
    matcher = Matcher(0, [compiled])
    snapshot = compiled.snapshot([Reading("root", "performed", 1, True, True, None, 1, None)],
                                 member=False)  # fmt: skip
    native.assert_fact(matcher._handles[0], engine_json(snapshot))  # and never retracted
    with pytest.raises(RuntimeError, match="held this snapshot already"):
        matcher.match({"x": snapshot})
    assert matcher.match({"x": snapshot}) == {("x", "enter")}
    assert matcher.match({"x": snapshot}) == {("x", "enter")}


def test_a_closed_matcher_frees_its_rulesets() -> None:
    """Each generation of definitions gets rulesets of its own; the engine keeps every one
    until deleted (about 1 MiB for 40 audiences)."""
    compiled = Compiled("x", 0, parse_node({"performed": {"event": "V", "within": "P1D",
                                                          "times": 1}}))  # fmt: skip
    matcher = Matcher(0, [compiled])
    [handle] = matcher._handles
    matcher.close()
    assert matcher.shard_count() == 0
    with pytest.raises(native.error, match="error code: 111"):  # an invalid handle: gone
        native.assert_fact(handle, engine_json({"a0m": 0, "a0v0": 1}))


def wide(n: int, event: str) -> Node:
    """n alternatives (two `or`s of n/2: a definition takes at most 50 items a list)."""
    half = [[{"performed": {"event": f"{event}{i}", "within": "P1D", "times": 1}}
             for i in range(start, start + n // 2)] for start in (0, n // 2)]  # fmt: skip
    return parse_node({"or": [{"or": half[0]}, {"or": half[1]}]})


def test_wide_audiences_get_shards_their_snapshots_fit_in_and_all_holding_still_match() -> None:
    """The engine refuses a fact of more than 252 properties (error 302), and overflows its
    matching stack when two audiences of 64 alternatives all hold in one fact (error 303)."""
    compiled = [Compiled(f"w{k}", k, wide(64 if k < 2 else 50, f"E{k}-")) for k in range(8)]
    assert all(complexity(c.root) <= MAX_TERMS for c in compiled)
    matcher = Matcher(0, compiled)
    assert matcher.shard_count() == 2  # 65 + 65 + 51 + 51 fields, then 4 x 51
    seen = Reading("x", "performed", 1, True, True, None, 1, None)
    snapshots = {c.audience: c.snapshot([seen] * len(c.found), member=False) for c in compiled}
    assert matcher.match(snapshots) == {(c.audience, "enter") for c in compiled}


def test_complexity_counts_the_alternatives_the_engine_expands() -> None:
    a, b = LEAVES[0], LEAVES[1]
    assert complexity(parse_node({"and": [{"or": [a, b]}, {"or": [a, b]}]})) == 4
    assert complexity(parse_node({"not": {"and": [a, b]}})) == 2


def test_connectives_count_each_rule_s_and_or_merged_as_the_engine_gets_them() -> None:
    a, b = LEAVES[0], LEAVES[1]
    assert connectives(parse_node(a)) == 1  # the member flag's `and`
    nested = parse_node({"and": [a, {"and": [b, {"and": [a]}]}]})
    assert connectives(nested) == 2  # enter: and(member, a, b, a); exit: and(member, or(...))
    assert connectives(parse_node({"not": {"or": [a, {"or": [b]}]}})) == 2


def chain(ranges: int, levels: int = 11) -> dict[str, Any]:
    """`or` and `and` in turn, `levels` deep, a leaf beside each: `and`s and `or`s that expand
    to few alternatives. The first `ranges` `or`s hold a condition the engine reads as a
    range (an `and` of two comparisons), one more `and`/`or` each."""
    node: dict[str, Any] = {"performed": {"event": "V", "within": "P1D", "times": 1}}
    ops = ["or" if level % 2 == 0 else "and" for level in range(levels)]
    ranged = [level for level, op in enumerate(ops) if op == "or"][:ranges]
    for level in reversed(range(levels)):
        leaf = ({"last_performed": {"event": f"E{level}", "op": "<", "ago": "P1D"}}
                if level in ranged else
                {"performed": {"event": f"V{level}", "within": "P1D", "times": 1}})  # fmt: skip
        node = {ops[level]: [leaf, node]}
    return node


AT_LIMIT, PAST_LIMIT = chain(ranges=3), chain(ranges=4)


def test_a_rule_of_more_and_or_than_the_engine_keeps_is_refused_and_hurts_no_other() -> None:
    """durable_rules keeps 15 `and`/`or` in a rule (error 113 past that): such an audience
    alone is left out; those sharing its shard are matched."""
    fits, past = parse_node(AT_LIMIT), parse_node(PAST_LIMIT)
    assert (connectives(fits), connectives(past)) == (MAX_CONNECTIVES, MAX_CONNECTIVES + 1)
    assert engine_problems(fits) == []
    assert engine_problems(past)[0].startswith("root: makes a rule of 16 `and`/`or`")
    compiled = [Compiled("fits", 0, fits), Compiled("past", 1, past),
                Compiled("small", 2, parse_node(LEAVES[0]))]  # fmt: skip
    matcher = Matcher(0, compiled)
    assert list(matcher.refused) == ["past"] and "error code: 113" in matcher.refused["past"]
    assert complexity(past) <= MAX_TERMS
    snapshots = {c.audience: c.snapshot(drawn, member=False) for c in (compiled[0], compiled[2])
                 for drawn in [[reading(path, kind_of(leaf), 2, True, spec_of(leaf))
                                for path, leaf in c.found]]}  # fmt: skip
    assert matcher.match(snapshots) == {("fits", "enter"), ("small", "enter")}


def test_an_audience_the_engine_refuses_keeps_its_members_and_the_others_are_matched() -> None:
    definitions = [Definition.model_validate({"id": i, "name": i, "root": root})
                   for i, root in (("past", PAST_LIMIT), ("twice", LEAVES[0]))]  # fmt: skip
    plan = Plan.of(0, definitions)
    assert list(plan.frozen) == ["past"] and list(plan.definitions) == ["twice"]
    subject = Subject("p1", memberships={"past", "twice"})  # no views: leaves `twice`
    changes = evaluate(plan, subject, 1_000, "event").changes
    assert [(c.audience, c.change) for c in changes] == [("twice", "exit")]
    assert subject.memberships == {"past"}
    plan.matcher.close()


def shoppers(now: int) -> list[Subject]:
    """Four who viewed twice (at the same moments), one three times (another count, the same
    range: at least 2), two members who did not, one non-member who did not: three facts for
    `twice`."""
    viewed = [Happened(now - i * 60_000, f"m{i}", "V", {}) for i in (2, 1)]
    return [*(Subject(f"viewer{n}", list(viewed)) for n in range(4)),
            Subject("keen", [Happened(now - 180_000, "m3", "V", {}), *viewed]),
            *(Subject(f"member{n}", memberships={"twice"}) for n in range(2)),
            Subject("idle")]  # fmt: skip


def transitions_of(plan: Plan, now: int) -> list[tuple[str, str]]:
    outcomes = evaluate_all(plan, [Look(s, now, "event") for s in shoppers(now)])
    return [(c.profile, c.change) for outcome in outcomes for c in outcome.changes]


EXPECTED = [*((f"viewer{n}", "enter") for n in range(4)), ("keen", "enter"),
            ("member0", "exit"), ("member1", "exit")]  # fmt: skip


def test_profiles_showing_one_fact_ask_the_engine_once_and_each_gets_its_transitions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The engine's answer to a fact is kept (it depends on the fact alone): profiles whose
    readings fall in the same ranges and whose memberships are the same are matched by one
    call, a member and a non-member with the same readings are two facts, and a later batch
    asks again only for facts not seen."""
    plan = Plan.of(0, [Definition.model_validate({"id": "twice", "name": "x", "root": LEAVES[0]})])
    asked: list[dict[str, float]] = []
    match_shard = Matcher.match_shard

    def counted(self: Matcher, shard: int, fact: dict[str, float]) -> dict[str, Any]:
        asked.append(fact)
        return match_shard(self, shard, fact)

    monkeypatch.setattr(Matcher, "match_shard", counted)
    try:
        now = 1_790_000_000_000
        assert transitions_of(plan, now) == EXPECTED
        assert len(asked) == 3
        assert transitions_of(plan, now + 1_000) == EXPECTED  # (counts only: the same facts)
        assert len(asked) == 3
        plan.matcher.forget()
        assert transitions_of(plan, now) == EXPECTED and len(asked) == 6
        plan.matcher.forget()
        alone = [evaluate(plan, s, now, "event").changes for s in shoppers(now)]  # each alone
        assert [(c.profile, c.change) for changes in alone for c in changes] == EXPECTED
        assert len(asked) == 9
    finally:
        plan.matcher.close()


def test_the_answers_kept_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engine, "ANSWERS_KEPT", 2)
    plan = Plan.of(0, [Definition.model_validate({"id": "twice", "name": "x", "root": LEAVES[0]})])
    try:
        for _ in range(2):
            assert transitions_of(plan, 1_790_000_000_000) == EXPECTED
            assert sum(len(answers) for answers in plan.matcher._answers.values()) <= 2
    finally:
        plan.matcher.close()
