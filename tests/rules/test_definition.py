"""The definition language: durations, the errors' paths, the shape limits."""

from __future__ import annotations

import pytest

from rules.audiences import problems_of
from rules.definition import (
    Definition,
    InvalidDefinition,
    format_duration,
    parse_duration,
    parse_node,
)


@pytest.mark.parametrize(("text", "ms"), [
    ("PT1H", 3_600_000), ("P7D", 604_800_000), ("P1W", 604_800_000), ("PT30M", 1_800_000),
    ("P1DT12H", 129_600_000), ("PT1S", 1000),
])  # fmt: skip
def test_durations_are_iso_8601(text: str, ms: int) -> None:
    assert parse_duration(text) == ms
    assert parse_duration(format_duration(ms)) == ms


@pytest.mark.parametrize("text", ["P1M", "P1Y", "7d", "P", "PT", "P1DT", "", "1 hour"])
def test_durations_of_varying_or_no_length_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_duration(text)


def test_each_problem_names_its_node() -> None:
    with pytest.raises(InvalidDefinition) as raised:
        parse_node({"or": [
            {"performed": {"event": "A", "within": "P1D", "times": -1}},
            {"not": {"trait": {"name": "age", "op": ">", "value": "x"}}},
            {"aggregate": {"event": "O", "property": "revenue", "within": "P1D", "value": 1,
                           "fn": "median"}},
        ]})  # fmt: skip
    problems = raised.value.problems
    assert problems[0].startswith("root.or[0].performed.times: ")
    assert problems[1] == "root.or[1].not.trait: `>` compares numbers: give a number"
    assert problems[2].startswith("root.or[2].aggregate.fn: ")


def test_a_tree_too_deep_is_refused() -> None:
    node: dict = {"performed": {"event": "A", "within": "P1D", "times": 1}}
    for _ in range(13):
        node = {"not": node}
    with pytest.raises(InvalidDefinition, match="deeper than 12"):
        parse_node(node)


def test_windows_longer_than_the_history_and_cycles_are_problems() -> None:
    a = Definition.model_validate(
        {"id": "a", "name": "A", "root": {"member_of": {"audience": "b"}}}
    )
    root = parse_node({"and": [
        {"member_of": {"audience": "a"}},
        {"last_performed": {"event": "O", "ago": "P400D"}},
    ]})  # fmt: skip
    problems = problems_of(root, {"a": a}, "b", history_days=365)
    assert problems == [
        "root.and[1].last_performed.ago: reaches back further than the kept history "
        "(365 days, CDP_HISTORY_DAYS)",
        "root: member_of makes a cycle: b -> a -> b",
    ]


def test_a_cart_shows_and_stores_only_the_measure_given() -> None:
    root = {"and": [{"cart": {"op": ">=", "value": 100.0}}, {"cart": {"op": ">", "units": 2}}]}
    definition = Definition.model_validate({"id": "x", "name": "x", "root": root})
    shown = definition.model_dump(mode="json", by_alias=True, exclude_defaults=False)
    assert shown["root"] == root
    assert Definition.model_validate(shown) == definition


def test_orders_count_from_at_least_and_refuse_a_count_below_zero() -> None:
    assert parse_node({"orders": {"count": 2}}).orders.op == ">="  # type: ignore[union-attr]
    with pytest.raises(InvalidDefinition) as raised:
        parse_node({"and": [{"orders": {"op": "<", "count": -1}}]})
    assert [p.split(":")[0] for p in raised.value.problems] == ["root.and[0].orders.count"]
