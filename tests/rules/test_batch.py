"""The conditions read for a batch at once (`rules/batch.py`) are what `rules/conditions.py`
reads of each profile alone: the same value, presence, answer and next moment, for generated
histories (ties, events dated ahead, none at all), moments, memberships and stock; and a
batch evaluated together decides what each profile evaluated alone does."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.batch import NONE, Batch, column_decider
from rules.conditions import Happened, Subject, decider, prepare
from rules.definition import Definition, leaves, parse_node
from rules.evaluation import Look, Plan, evaluate, evaluate_all
from tests.rules.test_agreement import EVENTS, tree_of

NOW = 1_790_000_000_000
HOUR = 3_600_000

tree = tree_of(["PT1H", "PT6H", "P1D", "P3D", "P7D"])
happened = st.builds(
    lambda event, before, props: (event, NOW - before * 60_000, props),
    st.sampled_from([*EVENTS, "Product Added to Wishlist"]),
    st.integers(-2 * 24 * 60, 9 * 24 * 60),
    st.fixed_dictionaries({
        "category": st.sampled_from(["Shoes", "Hats", None, 5]),
        "product_id": st.sampled_from(["p1", "p2", "p3", None]),
        "price": st.sampled_from([5, 10, 20.5, 10.0, "10", True, None]),
        "flag": st.sampled_from([True, False, "true", 1, None]),
        "quantity": st.sampled_from([1, 2, None]),
        "revenue": st.sampled_from([10, 25.5, 1e308, None]),
    }).map(lambda props: {k: v for k, v in props.items() if v is not None}),
)  # fmt: skip


@st.composite
def subject(draw: st.DrawFn, n: int) -> tuple[Subject, int]:
    events = sorted(draw(st.lists(happened, max_size=12)), key=lambda e: e[1])
    history = [Happened(at, f"m{n}-{i}", event, props)
               for i, (event, at, props) in enumerate(events)]  # fmt: skip
    if draw(st.booleans()) and history:  # two events at one moment
        history.insert(0, Happened(history[0].at, f"m{n}-t", history[0].event, {}))
    s = Subject(
        f"profile-{n}", history,
        traits=draw(st.fixed_dictionaries({"plan": st.sampled_from(["pro", "free"]),
                                           "age": st.sampled_from([25, 40, "forty"])})),
        consent=draw(st.sets(st.sampled_from([("email", "marketing")]))),
        memberships=draw(st.sets(st.sampled_from(["base", "t"]))),
        out_of_stock=draw(st.sampled_from([frozenset(), frozenset({"p1"})])),
        kept_ms=draw(st.sampled_from([None, 8 * 24 * HOUR])),
        time_zone=draw(st.sampled_from([None, "Europe/Berlin", "Asia/Tokyo"])),
        orders=draw(st.integers(0, 3)),
    )  # fmt: skip
    return s, NOW + draw(st.sampled_from([0, 1, HOUR, -HOUR, 3 * 24 * HOUR]))


batches = st.integers(1, 6).flatmap(lambda size: st.tuples(*[subject(n) for n in range(size)]))


def same_stock(drawn: tuple[tuple[Subject, int], ...]) -> list[tuple[Subject, int]]:
    """As the worker has it: one catalog's stock for the whole batch."""
    stock = drawn[0][0].out_of_stock
    for s, _ in drawn:
        s.out_of_stock = stock
    return list(drawn)


# Conditions of one selection and window that differ only in what they compare (the batch
# shares what they read: `Batch._shared`).
SIBLINGS = {"and": [
    *({"performed": {"event": "Product Viewed", "within": "P1D", "op": op, "times": times}}
      for op, times in ((">=", 2), ("<", 1), ("==", 3))),
    *({"performed": {"event": "Product Viewed", "within": "P3D", "times": times,
                     "same": "category"}} for times in (1, 2)),
    *({"aggregate": {"event": "Order Completed", "property": "revenue", "within": "P7D",
                     "fn": fn, "op": op, "value": value}}
      for fn, op, value in (("sum", ">=", 30), ("sum", "<", 20.5), ("max", ">=", 20.5),
                            ("count", "==", 2), ("avg", "<", 20))),
    *({"not_followed_by": {"event": "Product Added", "then": {"event": "Order Completed"},
                           "wait": wait, "within": "P3D"}} for wait in ("PT30M", "P1D")),
]}  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(document=tree | st.just(SIBLINGS), drawn=batches)
def test_each_condition_read_for_a_batch_is_what_each_profile_alone_reads(
    document: dict[str, Any], drawn: tuple[tuple[Subject, int], ...]
) -> None:
    rows = same_stock(drawn)
    root = parse_node(document)
    batch = Batch([s for s, _ in rows], [now for _, now in rows], {})
    prepared = prepare(leaves(root))
    every = list(range(len(rows)))
    for leaf in prepared:
        column = batch.column(leaf, every)
        _, _, spec, measure = leaf
        for row, (s, now) in enumerate(rows):
            value, present, holds, _, next_at = measure(spec, copy.copy(s), now)
            assert column.values[row] == value  # (the engine is shown numbers: float64)
            assert column.present[row] == present
            assert bool(column.holds[row]) == holds
            assert int(column.next_at[row]) == (NONE if next_at is None else next_at)
    decide, decide_columns = decider(root), column_decider(root)
    columns = [batch.column(leaf, every) for leaf in prepared]
    answers = decide_columns([c.holds for c in columns])
    for row, (s, now) in enumerate(rows):
        readings = [leaf[3](leaf[2], s, now) for leaf in prepared]
        assert bool(answers[row]) == decide([_Held(r[2]) for r in readings])


class _Held:
    def __init__(self, holds: bool) -> None:
        self.holds = holds


@settings(max_examples=150, deadline=None)
@given(documents=st.lists(tree, min_size=1, max_size=4), drawn=batches, only=st.booleans())
def test_a_batch_evaluated_together_decides_what_each_alone_does(
    documents: list[dict[str, Any]], drawn: tuple[tuple[Subject, int], ...], only: bool
) -> None:
    """Several audiences (those naming `base` matched after it), some profiles asked for
    everything and some only for what one event changed; alone, each profile's conditions
    are read one by one (`rules/conditions.py`), together by arrays."""
    definitions = [Definition.model_validate({"id": "base" if i == 0 else f"t{i}",
                                              "name": "x", "root": d})
                   for i, d in enumerate(documents)]  # fmt: skip
    plan = Plan.of(1, definitions)
    try:
        rows = same_stock(drawn)
        changed = [None if not only or n % 2 else frozenset({"Product Viewed"})
                   for n in range(len(rows))]  # fmt: skip
        alone = [evaluate(plan, copy.deepcopy(s), now, "event", c)
                 for (s, now), c in zip(rows, changed, strict=True)]  # fmt: skip
        looks = [Look(copy.deepcopy(s), now, "event", c)
                 for (s, now), c in zip(rows, changed, strict=True)]  # fmt: skip
        together = evaluate_all(plan, looks)
        for one, many in zip(alone, together, strict=True):
            assert [c.fields() for c in one.changes] == [c.fields() for c in many.changes]
            assert one.next_of == many.next_of and one.matched == many.matched
    finally:
        plan.matcher.close()
