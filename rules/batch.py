"""The conditions of a batch of profiles read at once, a column a condition: what
`rules/conditions.py` reads of one profile (its value, whether it holds, its next moment),
for every profile of the batch in a few array operations instead of a Python call each.

The windowed conditions (an event performed N times, of one value N times, the time since
the last one, an event not followed by another, an aggregate) are counts, values and bounds
of time ranges, so each is a handful of binary searches over the batch's events of one
selection, stacked profile after profile. The cart of a profile with cart events and the
small kinds (traits, consent, buckets, memberships, orders, time zones) are read profile by
profile by `rules/conditions.py` itself (the reference: it also reads a profile evaluated
alone, writes the reasons and answers "why"), only for the profiles that ask for them; a
test holds both to the same readings."""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from rules.conditions import (
    COMPARE,
    NEVER,
    ORDER_COMPLETED,
    PRODUCT_ADDED,
    PRODUCT_REMOVED,
    Happened,
    Prepared,
    Subject,
    aggregate,
    group_value,
    last_performed,
    matches,
    not_followed_by,
    number,
    performed,
    summary,
)
from rules.definition import (
    Aggregate,
    And,
    Cart,
    EventRef,
    LastPerformed,
    Node,
    Not,
    NotFollowedBy,
    Or,
    OutOfStock,
    Performed,
)

Ints = npt.NDArray[np.int64]
Flags = npt.NDArray[np.bool_]
NONE = np.iinfo(np.int64).max  # no next moment
# Events of the batch: each one's row (its profile), time, and the event, in row order.
Selection = tuple[list[int], list[int], list[Happened]]
ARRAY_COMPARE: dict[str, Callable[[Any, Any], Any]] = {
    ">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt,
    "==": operator.eq, "!=": operator.ne,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Column:
    """One condition over the batch, a row a profile (rows not asked for are not read)."""

    values: npt.NDArray[Any]  # what the engine compares (the reference's numbers)
    present: Flags
    holds: Flags
    next_at: Ints  # NONE: no next moment


class Stacked:
    """The events one selection picks of each profile of the batch, in one sorted array:
    profile after profile, each in time order, so that one search finds each profile's
    bound in its own part."""

    def __init__(self, rows: list[int], ats: list[int], size: int) -> None:
        """`rows`, `ats`: each event's profile (its row in the batch) and time, in that
        order; `size`: the profiles of the batch."""
        self.rows = row = np.array(rows, dtype=np.int64)  # each event's profile
        flat = np.array(ats, dtype=np.int64)
        self.ends = (
            np.cumsum(np.bincount(row, minlength=size)) if rows else np.zeros(size, np.int64)
        )
        self.starts = np.concatenate(([0], self.ends[:-1])) if size else self.ends
        self.low = int(flat.min()) if rows else 0
        high = int(flat.max()) if rows else 0
        self.span = high - self.low + 2  # a profile's keys: its times less `low`, in a span
        self.bases = np.arange(size, dtype=np.int64) * self.span
        self.keys = row * self.span + (flat - self.low)
        self.ats = np.append(flat, 0)  # one past the end: read where masked

    def upto(self, moments: Ints) -> Ints:
        """Each profile's index (in the stacked array) of its first event after its moment:
        its start plus how many it has at or before it. `moments`: one a profile, or rows of
        one a profile (several windows at once)."""
        local = np.maximum(np.minimum(moments - self.low, self.span - 2), -1)
        return np.searchsorted(self.keys, self.bases + local, side="right")

    def first_after(self, index: Ints) -> Ints:
        """The time of the event at each index, where it is the profile's (else NONE)."""
        return np.where(index < self.ends, self.ats[index], NONE)


class Batch:
    """The subjects of a batch, each at its own moment, and their columns (made once)."""

    def __init__(
        self,
        subjects: Sequence[Subject],
        nows: Sequence[int],
        windows: dict[Any, list[int]] | None = None,
    ) -> None:
        """`windows`: the windows of the counts of each selection (`EventRef.selector`) that
        the batch will be asked for, counted at once (others are counted when asked)."""
        self.subjects = subjects
        self.now_list = list(nows)
        self.nows = np.array(self.now_list, dtype=np.int64)
        kept = [s.kept_ms for s in subjects]
        self.kept = np.array([NONE if k is None else k for k in kept], dtype=np.int64)
        self.windows = windows or {}
        self._stacked: dict[Any, Stacked] = {}
        self._now: dict[Any, tuple[Ints, Ints]] = {}  # selector -> (upto now, first after)
        self._counts: dict[Any, dict[int, tuple[Ints, Ints]]] = {}  # selector -> window ->
        # (count, when its first leaves the window)
        self._read: dict[int, dict[int, tuple[Any, ...]]] = {}  # leaf -> row -> measure
        self._values: dict[Any, tuple[Stacked, list[Any], Ints, Ints]] = {}
        self._events: dict[str, Selection] | None = None
        self._texts: dict[tuple[str, str], dict[str, Selection]] = {}
        self._measures: dict[tuple[Any, ...], Any] = {}  # (`_shared`)
        self.everyone = np.ones(len(subjects), dtype=np.bool_)  # (read only)
        self.everyone.flags.writeable = False

    def selection(self, ref: EventRef) -> Selection:
        """The events of the batch the reference picks: their rows, times and events, in
        the order of the rows, each profile's in time order."""
        if self._events is None:
            self._events = {}
            for row, subject in enumerate(self.subjects):
                for h in subject.history:
                    found = self._events.get(h.event)
                    if found is None:
                        found = self._events[h.event] = ([], [], [])
                    found[0].append(row)
                    found[1].append(h.at)
                    found[2].append(h)
        named = self._events.get(ref.event, ([], [], []))
        if not ref.where:
            return named
        first = ref.where[0] if len(ref.where) == 1 else None
        if first is not None and first.op == "==" and isinstance(first.value, str):
            return self._by_text(ref.event, first.property, named).get(first.value, ([], [], []))
        picked: Selection = ([], [], [])
        for row, at, h in zip(*named, strict=True):
            if all(matches(w, h.properties) for w in ref.where):
                picked[0].append(row)
                picked[1].append(at)
                picked[2].append(h)
        return picked

    def _by_text(self, event: str, prop: str, named: Selection) -> dict[str, Selection]:
        """The events of that name by their text value of the property (what `==` a text
        matches), made once per batch and property."""
        index = self._texts.get((event, prop))
        if index is None:
            index = self._texts[event, prop] = {}
            for row, at, h in zip(*named, strict=True):
                value = h.properties.get(prop)
                if isinstance(value, str):
                    found = index.get(value)
                    if found is None:
                        found = index[value] = ([], [], [])
                    found[0].append(row)
                    found[1].append(at)
                    found[2].append(h)
        return index

    def stacked(self, ref: EventRef) -> Stacked:
        found = self._stacked.get(ref.selector)
        if found is None:
            rows, ats, _ = self.selection(ref)
            found = self._stacked[ref.selector] = Stacked(rows, ats, len(self.subjects))
        return found

    def at_now(self, ref: EventRef) -> tuple[Stacked, Ints, Ints]:
        """The selection, the index of each profile's first event after its now, and that
        event's time (NONE: none)."""
        s = self.stacked(ref)
        found = self._now.get(ref.selector)
        if found is None:
            end = s.upto(self.nows)
            found = self._now[ref.selector] = (end, s.first_after(end))
        return s, *found

    def counted(self, ref: EventRef, within: int) -> tuple[Ints, Ints, Ints]:
        """How many of the selection each profile has in (now - within, now], when the
        first of them leaves the window (NONE: none inside), when the next comes (NONE)."""
        s, end, arrival = self.at_now(ref)
        by_window = self._counts.setdefault(ref.selector, {})
        if within not in by_window:
            windows = sorted({within, *self.windows.get(ref.selector, ())} - set(by_window))
            spans = np.array(windows, dtype=np.int64)[:, None]
            start = s.upto(self.nows - spans)
            counts = end - start
            leaves = np.where(counts > 0, s.ats[start] + spans, NONE)
            for i, window in enumerate(windows):
                by_window[window] = (counts[i], leaves[i])
        count, leaves = by_window[within]
        return count, leaves, arrival

    def forgotten(self, at: Ints) -> Ints:
        """When events of these times leave the kept history (NONE: kept for ever)."""
        return np.where(self.kept == NONE, NONE, at + np.where(self.kept == NONE, 0, self.kept))

    def column(self, leaf: Prepared, rows: Sequence[int]) -> Column:
        """The condition over the batch; `rows`: the profiles that ask for it (the kinds
        read profile by profile are read for those only)."""
        _, _, spec, measure = leaf
        if measure is performed:
            return self._grouped(spec) if spec.same else self._performed(spec)
        if measure is last_performed:
            return self._last_performed(spec)
        if measure is not_followed_by:
            return self._not_followed_by(spec)
        if measure is aggregate:
            return self._aggregate(spec)
        if isinstance(spec, OutOfStock) and not any(s.out_of_stock for s in self.subjects):
            return self._nothing_out_of_stock(spec)
        if isinstance(spec, Cart):
            return self._cart(spec, measure, rows)
        return self._each(spec, measure, rows)

    def _each(self, spec: Any, measure: Callable[..., Any], rows: Sequence[int]) -> Column:
        read = self._read.setdefault(id(spec), {})
        for row in rows:
            if row not in read:
                read[row] = measure(spec, self.subjects[row], self.now_list[row])
        unread = (0, False, False, None, None)  # a row that did not ask: never looked at
        measures = [read.get(row, unread) for row in range(len(self.subjects))]
        return Column(
            np.array([m[0] for m in measures], dtype=np.float64),
            np.array([m[1] for m in measures], dtype=np.bool_),
            np.array([m[2] for m in measures], dtype=np.bool_),
            np.array([NONE if m[4] is None else m[4] for m in measures], dtype=np.int64),
        )

    def _performed(self, spec: Performed) -> Column:
        count, next_at = self._shared(("performed", spec.selector, spec.within),
                                      lambda: self._counts_of(spec))  # fmt: skip
        return Column(count, self.everyone, ARRAY_COMPARE[spec.op](count, spec.times), next_at)

    def _counts_of(self, spec: Performed) -> tuple[Ints, Ints]:
        count, leaves, arrival = self.counted(spec, spec.within)
        return count, np.minimum(leaves, arrival)

    def _last_performed(self, spec: LastPerformed) -> Column:
        s, end, arrival = self.at_now(spec)
        has = end > s.starts
        last = s.ats[end - 1]
        age = self.nows - last
        holds = has & (age >= spec.ago if spec.op == ">=" else age < spec.ago)
        ends = np.where(has & (last + spec.ago > self.nows), last + spec.ago, NONE)
        kept = np.where(has, self.forgotten(last), NONE)
        next_at = np.minimum(np.minimum(ends, kept), arrival)
        values = np.where(has, age, NEVER)
        return Column(values, self.everyone, holds, next_at)

    def _aggregate(self, spec: Aggregate) -> Column:
        values, present, next_at = self._shared(
            ("aggregate", spec.selector, spec.property, spec.within, spec.fn),
            lambda: self._aggregates(spec),
        )
        holds = present & ARRAY_COMPARE[spec.op](values, spec.value)
        return Column(values, present, holds, next_at)

    def _aggregates(self, spec: Aggregate) -> tuple[npt.NDArray[np.float64], Flags, Ints]:
        _, numbers, start, end, next_at = self._valued(spec, spec.property, number, spec.within)
        none = summary(spec.fn, [])
        found = [summary(spec.fn, numbers[first:last]) if last > first else none
                 for first, last in zip(start.tolist(), end.tolist(), strict=True)]  # fmt: skip
        values = np.array([value for value, _ in found], dtype=np.float64)
        return values, np.array([present for _, present in found], dtype=np.bool_), next_at

    def _grouped(self, spec: Performed) -> Column:
        """The largest count of one value of the `same` property within the window."""
        assert spec.same
        found, next_at = self._shared(("grouped", spec.selector, spec.same, spec.within),
                                      lambda: self._largest_groups(spec))  # fmt: skip
        return Column(found, self.everyone, ARRAY_COMPARE[spec.op](found, spec.times), next_at)

    def _largest_groups(self, spec: Performed) -> tuple[Ints, Ints]:
        """Each profile's count of its most frequent value within the window: its events'
        (profile, value) pairs counted at once."""
        assert spec.same
        stacked, groups, start, end, next_at = self._valued(spec, spec.same, group_value,
                                                            spec.within)  # fmt: skip
        largest = np.zeros(len(self.subjects), dtype=np.int64)
        if groups:
            codes: dict[str, int] = {}
            code = np.array([codes.setdefault(g, len(codes)) for g in groups], dtype=np.int64)
            row, index = stacked.rows, np.arange(len(groups))
            inside = (index >= start[row]) & (index < end[row])
            pairs, counts = np.unique(row[inside] * len(codes) + code[inside], return_counts=True)
            np.maximum.at(largest, pairs // len(codes), counts)
        return largest, next_at

    def _shared(self, key: tuple[Any, ...], make: Callable[[], tuple[Any, ...]]) -> Any:
        """What conditions of one selection and window share (their thresholds differ),
        made once per batch; its arrays are read only (columns share them)."""
        found = self._measures.get(key)
        if found is None:
            found = self._measures[key] = make()
            for array in found:
                array.flags.writeable = False
        return found

    def _valued(
        self, ref: EventRef, prop: str, value_of: Callable[[Any], Any], within: int
    ) -> tuple[Stacked, list[Any], Ints, Ints, Ints]:
        """The selection's events that have a value of the property (`value_of` it; None:
        the event is left out), stacked, and their values; each profile's span of them
        within (now - within, now] (start, end: indexes of the stack), and when the first
        inside leaves the window or the next comes (NONE: neither)."""
        key = (ref.selector, prop, value_of)
        found = self._values.get(key)
        if found is None:
            rows: list[int] = []
            ats: list[int] = []
            values: list[Any] = []
            for row, at, h in zip(*self.selection(ref), strict=True):
                value = value_of(h.properties.get(prop))
                if value is not None:
                    rows.append(row)
                    ats.append(at)
                    values.append(value)
            stacked = Stacked(rows, ats, len(self.subjects))
            end = stacked.upto(self.nows)
            found = self._values[key] = (stacked, values, end, stacked.first_after(end))
        stacked, values, end, arrival = found
        start = stacked.upto(self.nows - within)
        next_at = np.minimum(np.where(end > start, stacked.ats[start] + within, NONE), arrival)
        return stacked, values, start, end, next_at

    def _cart(self, spec: Cart, measure: Callable[..., Any], rows: Sequence[int]) -> Column:
        """The cart of those who added or removed a product is read profile by profile;
        the others' is empty (until an order dated ahead comes, as the reference has it: the
        cart's next moment is its first event after `now`)."""
        carted = {*self.selection(named(PRODUCT_ADDED))[0],
                  *self.selection(named(PRODUCT_REMOVED))[0]}  # fmt: skip
        column = self._each(spec, measure, [row for row in rows if row in carted])
        empty = 0.0 if spec.by_value else 0
        holds = COMPARE[spec.op](empty, spec.threshold)
        arrival = self.at_now(named(ORDER_COMPLETED))[2]
        for row in rows:
            if row not in carted:
                column.values[row] = empty
                column.present[row] = True
                column.holds[row] = holds
                column.next_at[row] = arrival[row]
        return column

    def _nothing_out_of_stock(self, spec: OutOfStock) -> Column:
        """No product is out of stock: the condition holds for nobody until one of these
        events comes (or the stock changes, which is an event of its own)."""
        next_at = np.full(len(self.subjects), NONE, dtype=np.int64)
        for event in spec.events:
            next_at = np.minimum(next_at, self.at_now(named(event))[2])
        size = len(self.subjects)
        return Column(np.zeros(size), self.everyone, np.zeros(size, dtype=np.bool_), next_at)

    def _not_followed_by(self, spec: NotFollowedBy) -> Column:
        waiting, waited, last, moved = self._shared(
            ("not followed by", spec.selector, spec.then.selector, spec.within),
            lambda: self._waits(spec),
        )
        holds = waiting & (waited >= spec.wait)
        due = np.where(holds, NONE, last + spec.wait)
        next_at = np.where(waiting, np.minimum(due, moved), moved)
        return Column(np.where(waiting, waited, NEVER), self.everyone, holds, next_at)

    def _waits(self, spec: NotFollowedBy) -> tuple[Flags, Ints, Ints, Ints]:
        """Whether each profile waits (its last event not followed), for how long, since
        when, and its next moment but for the wait ending."""
        firsts, end, first_arrival = self.at_now(spec)
        thens, then_now, then_arrival = self.at_now(spec.then)
        within = spec.within
        start = firsts.upto(self.nows - within) if within is not None else firsts.starts
        has = end > start
        last = firsts.ats[end - 1]
        arrivals = np.minimum(first_arrival, then_arrival)
        followed = has & (then_now > thens.upto(np.where(has, last, self.nows)))
        waiting = has & ~followed
        if within:
            slides = last + within
            after_then = np.minimum(arrivals, slides)
        else:
            slides, after_then = self.forgotten(last), arrivals
        moved = np.where(
            waiting, np.minimum(slides, arrivals), np.where(followed, after_then, arrivals)
        )
        return waiting, self.nows - last, last, moved


@cache
def named(event: str) -> EventRef:
    """The reference to every event of a name (made once: a model is validated when made)."""
    return EventRef(event=event)


def column_decider(node: Node) -> Callable[[Sequence[Flags]], Flags]:
    """The tree's answer for every profile from its leaves' columns (in leaf order): what
    `rules/conditions.py` `decider` answers for one."""
    index = iter(range(1 << 30))

    def build(n: Node) -> Callable[[Sequence[Flags]], Flags]:
        if isinstance(n, And | Or):
            parts = [build(c) for c in (n.and_ if isinstance(n, And) else n.or_)]
            combine = np.logical_and if isinstance(n, And) else np.logical_or
            return lambda cols: combine.reduce([part(cols) for part in parts])
        if isinstance(n, Not):
            inner = build(n.not_)
            return lambda cols: ~inner(cols)
        i = next(index)
        return lambda cols: cols[i]

    return build(node)
