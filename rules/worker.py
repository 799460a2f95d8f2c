"""The audience worker: keeps every profile's memberships true, in real time.

It consumes the profile-changes stream (the profile script says which profiles each call
changed and what changed in them, which merged, and the catalog which products crossed in
or out of stock) and evaluates each profile named at the moment it reads it, a batch of
profiles at a time (one script call reads them, one writes). It also runs the schedule:
each audience's next moment of change for a profile with no event (a window sliding, an
hour passing) is kept with its memberships, the profile's soonest in a sorted set, and the
profile is evaluated then, with `now` set to that moment, for the audiences due. No profile
is polled.

A batch's transitions, new memberships, next moments and audit rows are written by one
script call, atomically, before the stream entry is acknowledged; a profile whose
memberships another worker wrote since they were read (its version moved on) is not
written but decided again alone. After a crash the entry is handled again and finds
nothing left to change, so a transition is recorded once. A profile that cannot be evaluated
(in its batch, then alone) is set aside as a dead letter and looked at again an hour later;
the others of its entry or its schedule go on. One thread per process owns the engine
(durable_rules loses actions when threads share it); more processes share the consumer
group."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import redis
from prometheus_client import Counter, Histogram

from cdp.catalog import Catalog
from cdp.consumer import Entries, Entry, StreamConsumer
from cdp.deadletters import SET_ASIDE, add_letter
from cdp.profiles.reader import INPUTS_LUA, AudienceInputs, ProfileReader, audience_inputs_of
from cdp.settings import Settings
from cdp.storage import text
from cdp.streams import AUDIENCES_GROUP
from rules.audiences import DAY_MS, Audiences
from rules.changes import AudienceChange, Cause
from rules.conditions import Happened, product_of
from rules.evaluation import Look, Outcome, Plan, evaluate_all, subject_from
from rules.keyspace import (
    FAILURES,
    FAILURES_FIELD,
    GENERATION,
    GENERATION_FIELD,
    LAST,
    LAST_FIELD,
    LATER,
    LATER_FIELD,
    NEXT,
    NEXT_FIELD,
    SEEN,
    SEEN_FIELD,
    VERSION,
    VERSION_FIELD,
    AudienceKeys,
    memberships,
    next_moments,
)

log = logging.getLogger(__name__)

TRANSITIONS = Counter("cdp_audience_transitions", "Audience enters and exits", ["change", "cause"])
EVALUATIONS = Counter("cdp_audience_evaluations", "Profiles evaluated", ["cause"])
DUE_LAG = Histogram(
    "cdp_audience_due_lag_seconds", "How late time-based evaluations ran behind their moment",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 30),
)  # fmt: skip
# Profiles read and written together: a batch's array calls cost about the same for 50
# profiles as for 400 (a batch costs ~10 M instructions besides its profiles': 400 take 5%
# fewer a profile than 200, 200 10% fewer than 100). The first batch of a call is smaller:
# its read is waited for, while the reads of the next are made as the one before is
# evaluated; each next batch is twice the one before (`batches_of`). Between two batches,
# due profiles are taken (`DUE_BATCH`).
FIRST_BATCH = 100
EVALUATION_BATCH = 400
# Due profiles claimed at a time, so that between two claims the new stream entries are taken
# (a burst of time-based transitions, thousands whose hour ends together, holds the events
# arriving meanwhile back by one small batch, not by ten).
DUE_BATCH = 50
# A due profile taken by a worker is leased to it: its moment moves this far ahead, so no
# other worker takes it meanwhile; the evaluation sets its true next moment. A worker that
# dies holding it leaves it due again when the lease ends.
LEASE_MS = 10_000  # a batch of due profiles takes well under a second
# A profile whose history holds more than this many events (a bot's, or a rare shopper's
# of years: 3.5 µs an event to read and evaluate, 35 ms at the cap) is evaluated for events at
# most once in `HOT_PAUSE_MS`: those coming within it are decided together at its end. One
# visitor sending without end (up to the rate limit, ~170 events/s) took an audience worker
# for itself; now 35 ms a second at most. A shop's shopper holds tens of events.
HOT_EVENTS = 1_000
HOT_PAUSE_MS = 1_000
# The cyclic collector's thresholds in an audience worker process (`tune_collector`). A batch
# makes hundreds of thousands of objects (histories, facts, outcomes) that live until its
# end, so with the defaults (700, 10, 10) the older generations are collected over and over,
# each time going through the process's ~200,000 objects: few instructions (callgrind counts
# the same), many cache misses. Measured here, every audience matched: 7,000-7,400
# evaluations/s with the defaults, 10,200 with these (alternating rounds, one process).
GC_THRESHOLDS = (50_000, 20, 100)
PUT_OFF_EVALUATIONS = Counter(
    "cdp_audience_put_off",
    "Evaluations of a profile with a long history put off to the end of its second",
)
# A profile that could not be evaluated is looked at again this much later, twice as late
# after each failure in a row, at most a day later: a lasting failure writes a few letters a
# day, not one an hour (the count is `FAILURES` in its memberships hash, gone at a success).
RETRY_MS = 3_600_000
MAX_RETRY_MS = 86_400_000


# A batch's writes in one call, instead of a transaction WATCHing the memberships: each
# profile's writes are made only if its memberships hash still has the version read (every
# write to it moves the version on); the others are returned, to be decided again. Then its
# next moment: to the new one if nobody moved it since it was read; else (a backfill asked
# for an earlier look meanwhile) to the earlier. Last, who watches which product.
# KEYS[1]: the schedule. ARGV[1]: JSON [[memberships key, version read, [command...],
# profile, moment read, new moment, set it (0/1)], ...]; ARGV[2]: JSON [[product, profile,
# when], ...], each product's watcher set the key ARGV[4] and its id; ARGV[3]: the version's
# field. With KEYS[2] (the stream the batch came from), ARGV[5] its group and ARGV[6..] the
# entries: they are acknowledged with the writes, if every profile was written. Returns the
# (1-based) places of the profiles not written.
COMMIT = """
local conflicts, version = {}, ARGV[3]
for i, p in ipairs(cjson.decode(ARGV[1])) do
  local key, ops = p[1], p[3]
  if (redis.call('HGET', key, version) or '') ~= p[2] then
    conflicts[#conflicts + 1] = i
  else
    for _, op in ipairs(ops) do
      redis.call(unpack(op))
    end
    if #ops > 0 and redis.call('EXISTS', key) == 1 then
      redis.call('HINCRBY', key, version, 1)
    end
    if p[7] == 1 then
      local profile, seen, new = p[4], tonumber(p[5]), tonumber(p[6])
      local current = tonumber(redis.call('ZSCORE', KEYS[1], profile))
      if current == seen then
        if new then
          redis.call('ZADD', KEYS[1], new, profile)
        else
          redis.call('ZREM', KEYS[1], profile)
        end
      elseif new then
        redis.call('ZADD', KEYS[1], 'LT', new, profile)
      end
    end
  end
end
for _, w in ipairs(cjson.decode(ARGV[2])) do
  redis.call('ZADD', ARGV[4] .. w[1], 'GT', w[3], w[2])
end
if KEYS[2] and #conflicts == 0 then
  redis.call('XACK', KEYS[2], unpack(ARGV, 5))
end
return conflicts
"""


class Writes:
    """One profile's writes, as commands for the commit script (all arguments text)."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.moment: tuple[int | None, int | None] | None = None  # (read, new), if it moved

    def hset(self, key: str, field: str, value: Any) -> None:
        self.commands.append(["HSET", key, field, str(value)])

    def hdel(self, key: str, field: str) -> None:
        self.commands.append(["HDEL", key, field])

    def zadd(self, key: str, member: str, score: int) -> None:
        self.commands.append(["ZADD", key, str(score), member])

    def zrem(self, key: str, member: str) -> None:
        self.commands.append(["ZREM", key, member])

    def xadd(self, key: str, fields: dict[str, str], kept: int | None = None) -> None:
        """An entry on the stream; with `kept`, the stream trimmed to about that many."""
        bound = ["MAXLEN", "~", str(kept)] if kept else []
        self.commands.append(["XADD", key, *bound, "*", *(v for kv in fields.items() for v in kv)])

    def delete(self, key: str) -> None:
        self.commands.append(["DEL", key])


# The profiles due (score <= ARGV[1]), at most ARGV[2] of them, each leased until ARGV[3].
CLAIM = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, ARGV[2],
                       'WITHSCORES')
for i = 1, #due, 2 do
  redis.call('ZADD', KEYS[1], ARGV[3], due[i])
end
return due
"""


# A batch's reads in one call: the definitions' generation and the catalog's stock version
# (what the batch's decisions share), then per profile its memberships hash's own fields
# (`~...`, flat), the audiences it belongs to (the hash's other fields), its next moment and
# its inputs (`cdp/profiles/reader.py`). KEYS: the schedule, the generation, the stock
# version. ARGV[1]: how many events make a history long (`HOT_EVENTS`), ARGV[2] the
# memberships' field of its last evaluation (`SEEN`), ARGV[3] and ARGV[4] the keys of a
# profile's memberships and of its inputs less its id, ARGV[5..7] the input keys' parts
# after the profile's key (`ProfileReader.input_keys`); then per profile its id, the moment
# after which its history counts, and the moment after which an evaluation of it puts a
# long history off (-1: never; its inputs are then {2}, not read). A profile's keys are made
# of its id here, as the commit script's are given in its arguments (one Valkey, not a
# cluster: a batch's keys are not declared), so that a read sends 3 values a profile, not 8.
READ_BATCH = (
    INPUTS_LUA
    + """
local hot, seen_field = tonumber(ARGV[1]), ARGV[2]
local of, profile = ARGV[3], ARGV[4]
local history_part, traits_part, consent_part = ARGV[5], ARGV[6], ARGV[7]
local out = {redis.call('GET', KEYS[2]), redis.call('GET', KEYS[3])}
for i = 8, #ARGV, 3 do
  local memberships, base = of .. ARGV[i], profile .. ARGV[i]
  local history = base .. history_part
  local inputs
  local after = tonumber(ARGV[i + 2])
  if after >= 0 then
    local seen = tonumber(redis.call('HGET', memberships, seen_field) or '-1')
    if seen > after and redis.call('ZCARD', history) > hot then
      inputs = {2}
    end
  end
  local fields, own, audiences = redis.call('HGETALL', memberships), {}, {}
  for j = 1, #fields, 2 do  -- its own fields (`~...`) apart from its audiences
    if string.byte(fields[j], 1) == 126 then
      own[#own + 1] = fields[j]
      own[#own + 1] = fields[j + 1]
    else
      audiences[#audiences + 1] = fields[j]
    end
  end
  out[#out + 1] = {own, audiences, redis.call('ZSCORE', KEYS[1], ARGV[i]),
                   inputs or audience_inputs(base, history, base .. traits_part,
                                             base .. consent_part, ARGV[i + 1])}
end
return out
"""
)


class Asked(NamedTuple):
    """One evaluation asked for: the profile, its `now` (for time, the moment that came),
    why, what changed (None: anything may have)."""

    profile_id: str
    now: int
    cause: Cause
    changed: frozenset[str] | None


class Sent:
    """A script call sent on a connection of its own, its reply read when it is wanted:
    Valkey runs the script while the worker goes on."""

    def __init__(self, client: redis.Redis, sha: str, keys: list[str], args: list[Any]) -> None:
        self.pool = client.connection_pool
        self.connection = self.pool.get_connection()
        try:
            self.connection.send_command("EVALSHA", sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        except BaseException:
            self.pool.release(self.connection)
            raise

    def reply(self) -> Any | None:
        """The script's reply (None if Valkey did not hold the script: nothing ran, the
        caller calls it as usual, which loads it)."""
        try:
            return self.connection.read_response()
        except redis.exceptions.NoScriptError:
            return None
        except BaseException:  # a reply half read must not reach another command
            self.connection.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            self.pool.release(self.connection)

    def drop(self) -> None:
        """Let go of the call with its reply unread (its connection closed)."""
        self.connection.disconnect()  # type: ignore[no-untyped-call]
        self.pool.release(self.connection)


class Ahead:
    """The read of a worker's next batch, sent before the batch in hand is evaluated: its
    reply waits in its connection until the next batch's turn. A batch read it was not
    sent for (another batch came between) is read as usual; what it sent is still taken at
    its turn. What it read is as current as a read at the time it was sent: a profile
    written since is caught by the commit's version check, as another worker's write would
    be."""

    def __init__(self, client: redis.Redis, sha: str) -> None:
        self.client = client
        self.sha = sha
        self.next: list[Asked] | None = None  # the batch after the one in hand
        self._sent: tuple[list[Asked], Sent] | None = None  # the batch sent for, its call

    def send(self, asked: list[Asked], keys: list[str], args: list[str | int]) -> None:
        self.drop()
        self._sent = (asked, Sent(self.client, self.sha, keys, args))

    def reply(self, asked: list[Asked]) -> Any | None:
        """The reply of the read sent for these profiles, if it was (None otherwise, or if
        the script was not loaded: the caller reads as usual, which loads it)."""
        if self._sent is None or self._sent[0] is not asked:
            return None
        sent = self._sent[1]
        self._sent = None
        return sent.reply()

    def drop(self) -> None:
        """Let go of a read sent and not taken."""
        if self._sent is not None:
            sent = self._sent[1]
            self._sent = None
            sent.drop()


@dataclass
class Committing:
    """A batch's commit sent, its reply not read yet: its outcomes, the places in them of
    the profiles it writes, and the call (to make again if Valkey did not hold the
    script)."""

    asked: list[Asked]
    outcomes: list[Outcome | None]
    placed: list[int]
    keys: list[str]
    args: list[Any]
    sent: Sent


MISSING = Outcome()  # the profile is not live: merged away or erased
PUT_OFF = AudienceInputs([], {}, set())  # not read: a long history evaluated within the second
PUT_OFF_OUTCOME = Outcome()  # its evaluation put off (nothing decided, its look scheduled)


class BatchRead(NamedTuple):
    generation: bytes | None
    stock_version: bytes | None
    profiles: list[Read]


class Read(NamedTuple):
    """One profile as a batch read it: its memberships hash's own fields (`~...`), the
    audiences it belongs to, its next moment, its inputs (None: not live; or PUT_OFF)."""

    stored: dict[bytes, bytes]
    members: set[str]
    due: int | None
    inputs: AudienceInputs | None


def now_ms() -> int:
    return int(time.time() * 1000)


class RulesUnavailable(Exception):
    """The definitions cannot be made into rules: no profile can be evaluated until they
    change (nothing is set aside; the entries wait, and health shows them waiting)."""


class AudienceWorker(StreamConsumer):
    group = AUDIENCES_GROUP
    # Valkey away or slow, or no rules to evaluate with: wait (nothing set aside). Any other
    # failure is a profile's.
    storage_errors = (redis.ConnectionError, redis.TimeoutError, RulesUnavailable)

    def __init__(
        self,
        client: redis.Redis,
        stream: str,
        reader: ProfileReader,
        audiences: Audiences,
        catalog: Catalog,
        records_stream: str,
        history_days: int,
        clock: Any = now_ms,
        changes_kept: int = Settings.model_fields["audience_changes_kept"].default,
        hot_events: int = HOT_EVENTS,
        **options: Any,
    ) -> None:
        """`changes_kept`: the newest entries `audience_changes` keeps (`Settings`);
        `hot_events`: a history longer is evaluated at most once a second (`HOT_EVENTS`)."""
        super().__init__(client, stream, **options)
        self.changes_kept = changes_kept
        self.hot_events = hot_events
        self.reader = reader
        self.audiences = audiences
        self.catalog = catalog
        self.records_stream = records_stream
        self.history_days = history_days
        self.keys = AudienceKeys(audiences.keys.prefix)
        self.clock = clock
        self._plan: Plan | None = None
        self._stock_version: bytes | None = None
        self._commit = client.register_script(COMMIT)
        self._claim = client.register_script(CLAIM)
        self._read_batch = client.register_script(READ_BATCH)
        profile, *parts = self.reader.input_keys("")
        self._key_parts = [self.keys.of(""), profile,  # what `READ_BATCH` makes keys of
                           *(part.removeprefix(profile) for part in parts)]  # fmt: skip
        self._out_of_stock: frozenset[str] = frozenset()

    # What the evaluations of a batch share, read once a batch.

    def refresh(self) -> Plan:
        """The definitions and the catalog's stock as they are now (a batch's read brings
        what this needs along: `plan_of`)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.keys.generation)
        pipe.get(self.catalog.keys.stock_version)
        return self.plan_of(*pipe.execute())

    def plan_of(self, generation_raw: bytes | None, stock_version: bytes | None) -> Plan:
        """The definitions, rebuilt when their generation moved on (the engine's rules of the
        one before freed), and the catalog's products out of stock, read again when its stock
        version moved on."""
        generation = int(generation_raw or 0)
        if self._plan is None or self._plan.generation != generation:
            try:
                found, invalid = self.audiences.read()
                enabled = [s.definition for _, s in sorted(found.items()) if s.definition.enabled]
                built = Plan.of(generation, enabled, invalid, self.audiences.changed())
            except Exception as error:
                raise RulesUnavailable(f"generation {generation}: {error}") from error
            before, self._plan = self._plan, built
            if before is not None:
                before.matcher.close()
            log.info("audiences: generation %s, %s audiences, %s engine shards", generation,
                     len(self._plan.definitions), self._plan.matcher.shard_count())  # fmt: skip
            for audience, problem in sorted(self._plan.frozen.items()):
                log.error("audience %s is not evaluated (members kept as they are): %s",
                          audience, problem)  # fmt: skip
        if self._plan.reads_stock and stock_version != self._stock_version:
            self._out_of_stock = frozenset(self.catalog.all_out_of_stock())
            self._stock_version = stock_version
        return self._plan

    # The stream.

    def handle(self, entries: Entries, *, recovered: bool) -> int:
        now = self.clock()
        profiles, merges = self._named(entries)
        if merges:
            self.retire_merged(list(merges.items()), now)
        asked = [Asked(pid, now, "event", None if names is None else frozenset(names))
                 for pid, names in profiles.items()]  # fmt: skip
        if not self.evaluate_batches(asked, entries, due_by=now):
            self.ack(entries)
        return len(profiles)

    def _named(self, entries: Entries) -> tuple[dict[str, set[str] | None], dict[str, str]]:
        """The profiles the entries name, each with what changed in it (None: anything may
        have, evaluate it in full), and the profiles merged away, each with its survivor."""
        profiles: dict[str, set[str] | None] = {}
        merges: dict[str, str] = {}

        def changed(pid: str, names: Iterable[str] | None) -> None:
            if names is None or pid in profiles and profiles[pid] is None:
                profiles[pid] = None
            else:
                profiles.setdefault(pid, set()).update(names)  # type: ignore[union-attr]

        for _, fields in entries:
            if not fields:
                continue
            for merged, survivor in _list(fields.get(b"m")):
                merges[merged] = survivor
                changed(survivor, None)
            for product in _list(fields.get(b"products")):  # in or out of stock now
                for pid in self.watchers(product):
                    changed(pid, ["stock"])
            named = _dict(fields.get(b"e"))
            for pid in _list(fields.get(b"p")):
                changed(pid, named.get(pid))
        return profiles, merges

    def drain_once(self, block_ms: int | None = None) -> int:
        """The schedule's soonest moment and what is new on the stream, in one round trip;
        the profiles due, then the new entries; with neither, wait for an entry until the
        next moment."""
        pipe = self.client.pipeline(transaction=False)
        pipe.zrange(self.keys.due, 0, 0, withscores=True)
        pipe.xreadgroup(self.group, self.consumer, {self.stream: ">"}, count=self.batch_size)
        first, response = pipe.execute()
        next_due = int(first[0][1]) if first else None
        entries = list(response[0][1]) if response else []
        handled = 0
        if next_due is not None and next_due <= self.clock():
            handled = self.run_due()
        if entries:
            return handled + self.handle(entries, recovered=False)
        if handled:
            return handled  # more may be due: look again before waiting
        wait = self.block_ms if block_ms is None else block_ms
        if next_due is not None:
            wait = max(1, min(wait, next_due - self.clock()))
        return super().drain_once(wait)

    # The schedule.

    def claim_due(self, now: int) -> list[tuple[str, int]]:
        """The profiles whose moment has come (up to a batch), each with its moment, leased
        to this worker."""
        flat = self._claim(keys=[self.keys.due], args=[now, DUE_BATCH, now + LEASE_MS])
        return [(text(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]

    def run_due(self, by: int | None = None) -> int:
        """Evaluate the profiles whose moment has come (by `by`, if earlier than now), up to
        a batch, each at its moment."""
        now = self.clock()
        due = self.claim_due(now if by is None else min(now, by))
        for _, at in due:
            DUE_LAG.observe(max(0.0, (now - at) / 1000))
        self.evaluate_batches([Asked(pid, at, "time", None) for pid, at in due])
        return len(due)

    def watchers(self, product: str) -> list[str]:
        """Who viewed, wishlisted or carted the product within the kept history."""
        key = self.keys.watchers(product)
        self.client.zremrangebyscore(key, "-inf", self.clock() - self.history_days * DAY_MS)
        return [text(m) for m in self.client.zrange(key, 0, -1)]

    # Profiles.

    def evaluate_batches(
        self, asked: list[Asked], entries: Sequence[Entry] = (), due_by: int | None = None
    ) -> bool:
        """`evaluate_all`, a batch of profiles at a time; the stream `entries` that asked for
        them acknowledged by the last batch's write if it wrote all its profiles (True).
        `due_by`: between two batches, a batch of the profiles due by that moment (the
        `now` of those asked, so that no profile is evaluated at a moment before one it was
        evaluated at): a stream entry may name thousands of profiles, and a backlog taken in
        one read holds no time-based transition back for longer than a batch."""
        acked = False
        batches = batches_of(asked)
        ahead = Ahead(self.client, self._read_batch.sha)
        later: list[Committing] = []  # a batch's commit, its reply read before the next's
        try:
            for n, batch in enumerate(batches):
                last = n == len(batches) - 1
                ahead.next = None if last else batches[n + 1]
                _, acked = self.evaluate_all(batch, entries if last else (), ahead, later)
                if due_by is not None and not last:
                    self.run_due(due_by)  # (a profile also in `later`: the versions decide)
            self.finish_writes(later)
        finally:
            ahead.drop()
            for committing in later:
                committing.sent.drop()
        return acked

    def evaluate_all(
        self,
        asked: list[Asked],
        entries: Sequence[Entry] = (),
        ahead: Ahead | None = None,
        later: list[Committing] | None = None,
    ) -> tuple[list[Outcome | None], bool]:
        """`evaluate` for many profiles in two round trips (read, write), and whether the
        write acknowledged the `entries` (only when it wrote every profile: those another
        worker changed meanwhile, or not live, are decided again each alone). With `later`,
        a write that acknowledges nothing is sent and left there, its reply read (and its
        profiles not written decided again) by `finish_writes` before the next write: Valkey
        runs it while the worker evaluates the next batch."""
        if len(asked) > 1:
            try:
                outcomes, acked = self._evaluate_once(asked, entries, ahead, later)
            except self.storage_errors:
                raise
            except Exception as error:  # one profile's failure holds back nobody: each alone
                log.warning("audiences: a batch of %d profiles failed (%s); deciding each alone",
                            len(asked), error)  # fmt: skip
                outcomes, acked = [None] * len(asked), False
            if later and later[-1].asked is asked:
                return outcomes, False  # written later (`finish_writes`)
            return self._again(asked, outcomes), acked  # (False if any was decided again)
        if later:
            self.finish_writes(later)  # (as before a batch's write)
        try:
            return self._evaluate_alone(asked, entries, ahead)
        except self.storage_errors:
            raise
        except Exception as error:
            self.set_aside_profile(asked[0], error)
            return [None], False

    def _again(self, asked: list[Asked], outcomes: list[Outcome | None]) -> list[Outcome | None]:
        """The outcomes of a batch, those not written (None) or not live decided again, each
        alone."""
        again = {a.profile_id: self.evaluate_all([a])[0][0]
                 for a, o in zip(asked, outcomes, strict=True)
                 if o is None or o is MISSING}  # fmt: skip
        if not again:
            return outcomes
        return [again[a.profile_id] if o is None or o is MISSING else o
                for a, o in zip(asked, outcomes, strict=True)]  # fmt: skip

    def finish_writes(self, later: list[Committing]) -> None:
        """The writes sent and not read yet: their replies read, their profiles not written
        decided again, each alone."""
        while later:
            committing = later.pop(0)
            conflicts = committing.sent.reply()
            if conflicts is None:  # Valkey did not hold the script: nothing ran
                conflicts = self._commit(keys=committing.keys, args=committing.args)
            self._committed(committing.asked, committing.outcomes, committing.placed, conflicts)
            self._again(committing.asked, committing.outcomes)

    def _evaluate_alone(
        self, asked: list[Asked], entries: Sequence[Entry], ahead: Ahead | None = None
    ) -> tuple[list[Outcome | None], bool]:
        [one] = asked
        for attempt in range(10):
            first = attempt == 0  # the batch as asked: a read sent ahead for it is its own
            [outcome], acked = self._evaluate_once(asked if first else [one], entries,
                                                   ahead if first else None)  # fmt: skip
            if outcome is None:
                continue  # another worker changed its memberships: read again
            if outcome is not MISSING:
                return [outcome], acked
            live = self.reader.live_id(one.profile_id)
            self.retire([(one.profile_id, live)], one.now)
            if live is None or live == one.profile_id:
                return [None], False
            one = Asked(live, one.now, one.cause, None)
        raise RuntimeError(f"memberships of {one.profile_id} kept changing under us")

    def _evaluate_once(
        self,
        asked: list[Asked],
        entries: Sequence[Entry],
        ahead: Ahead | None = None,
        later: list[Committing] | None = None,
    ) -> tuple[list[Outcome | None], bool]:
        """Read the profiles, evaluate, write what changed (one script call each way), with
        the acknowledgement of the `entries` if every profile is live and written (then True).
        MISSING for a profile that is not live (merged away or erased); None for one whose
        memberships another worker changed meanwhile (nothing of it written). With `later`,
        the writes sent before are finished first, and a write that acknowledges nothing is
        left there unread (its outcomes' None set by `finish_writes`)."""
        generation, stock_version, profiles = self.read(asked, ahead)
        plan = self.plan_of(generation, stock_version)
        watching: list[tuple[str, str, int]] = []  # product, profile, when
        outcomes, writes_of = self._decide(plan, asked, profiles, watching)
        batch: list[list[Any]] = []  # the commit script's profiles
        placed: list[int] = []  # their places in `asked`
        for n, (a, outcome) in enumerate(zip(asked, outcomes, strict=True)):
            writes, stored = writes_of[n], profiles[n][0]
            if outcome is not MISSING and (writes.commands or writes.moment):
                seen, new = writes.moment or (None, None)
                moved = int(bool(writes.moment))
                batch.append([self.keys.of(a.profile_id), _version(stored), writes.commands,
                              a.profile_id, _text(seen), _text(new), moved])  # fmt: skip
                placed.append(n)
        live = all(o is not MISSING for o in outcomes)
        ack = [entry_id for entry_id, _ in entries] if live else []
        conflicts: list[Any] = []
        if batch or watching or ack:
            keys = [self.keys.due]
            watchers = self.keys.watchers("")
            args: list[Any] = [orjson.dumps(batch), orjson.dumps(watching), VERSION, watchers]
            if ack:
                keys, args = [*keys, self.stream], [*args, self.group, *ack]
            if later is not None:
                self.finish_writes(later)  # (an acknowledgement comes after every write before it)
                if not ack:
                    sent = Sent(self.client, self._commit.sha, keys, args)
                    later.append(Committing(asked, outcomes, placed, keys, args, sent))
                    return outcomes, False
            conflicts = self._commit(keys=keys, args=args)
        self._committed(asked, outcomes, placed, conflicts)
        return outcomes, bool(ack) and not conflicts

    def _committed(
        self, asked: list[Asked], outcomes: list[Outcome | None], placed: list[int],
        conflicts: list[Any],
    ) -> None:  # fmt: skip
        """The write's profiles not written (the places it answered) set to None; the
        others' evaluations and transitions counted."""
        for place in conflicts:
            outcomes[placed[int(place) - 1]] = None
        evaluated: dict[Cause, int] = {}
        for a, outcome in zip(asked, outcomes, strict=True):
            if outcome is not MISSING and outcome is not None and outcome is not PUT_OFF_OUTCOME:
                evaluated[a.cause] = evaluated.get(a.cause, 0) + 1
                _count(outcome)
        for cause, count in evaluated.items():
            EVALUATIONS.labels(cause).inc(count)

    def set_aside_profile(self, a: Asked, error: Exception) -> None:
        """A profile that failed in its batch and alone: a dead letter with the reason, and
        its next look `retry_after` on (a passing cause heals; a lasting one writes a letter
        at each look), in one transaction. Its memberships stay as they were."""
        failures = int(self.client.hincrby(self.keys.of(a.profile_id), FAILURES, 1))
        retry_at = self.clock() + retry_after(failures)
        log.error("audiences: profile %s set aside (failure %d in a row; looked at again at "
                  "%s): %s", a.profile_id, failures, retry_at, error)  # fmt: skip
        payload = {"profile": a.profile_id, "cause": a.cause, "now": str(a.now),
                   "changed": "*" if a.changed is None else ",".join(sorted(a.changed)),
                   "failures": str(failures), "retry_at": str(retry_at)}  # fmt: skip
        pipe = self.client.pipeline(transaction=True)
        add_letter(pipe, self.stream, self.group, "", error, 2, payload)
        pipe.zadd(self.keys.due, {a.profile_id: retry_at})
        pipe.execute()
        SET_ASIDE.labels(self.group).inc()
        self.set_aside += 1

    def read(self, asked: list[Asked], ahead: Ahead | None = None) -> BatchRead:
        """The definitions' generation, the stock version, and each profile as `Read` (its
        memberships hash's own fields, its audiences, next moment and inputs), in one call:
        the one `ahead` sent for these profiles if it did; then the read of its next batch
        is sent, for Valkey to run while this batch is evaluated."""
        reply = ahead.reply(asked) if ahead is not None else None
        if reply is None:
            keys, args = self._reading(asked)
            reply = self._read_batch(keys=keys, args=args)
        if ahead is not None and ahead.next:
            ahead.send(ahead.next, *self._reading(ahead.next))
        generation, stock_version, *profiles = reply
        return BatchRead(generation, stock_version, [
            Read(_pairs(own), set(map(bytes.decode, audiences)), None if due is None else int(due),
                 PUT_OFF if inputs[0] == 2 else audience_inputs_of(inputs))
            for own, audiences, due, inputs in profiles
        ])  # fmt: skip

    def _reading(self, asked: list[Asked]) -> tuple[list[str], list[str | int]]:
        """`READ_BATCH`'s keys and arguments for these profiles."""
        keys = [self.keys.due, self.keys.generation, self.catalog.keys.stock_version]
        args: list[str | int] = [self.hot_events, SEEN, *self._key_parts]
        kept = self.history_days * DAY_MS
        for a in asked:
            args += [a.profile_id, a.now - kept,
                     a.now - HOT_PAUSE_MS if a.cause == "event" else -1]  # fmt: skip
        return keys, args

    def _decide(
        self,
        plan: Plan,
        asked: list[Asked],
        profiles: list[Read],
        watching: list[tuple[str, str, int]],
    ) -> tuple[list[Outcome | None], list[Writes]]:
        """The profiles read evaluated together: each one's outcome and writes (those that
        change something), the products they watch added to `watching`."""
        outcomes: list[Outcome | None] = []
        writes_of = [Writes() for _ in asked]
        looks: list[tuple[int, Look]] = []  # place, look
        for n, (a, read) in enumerate(zip(asked, profiles, strict=True)):
            decided = self._look(writes_of[n], plan, a, *read)
            outcomes.append(decided if isinstance(decided, Outcome) else None)
            if not isinstance(decided, Outcome):
                looks.append((n, decided))
        decisions = evaluate_all(plan, [look for _, look in looks])
        for (n, look), outcome in zip(looks, decisions, strict=True):
            stored, _, due, _ = profiles[n]
            self._settle(writes_of[n], plan, look, outcome, stored, due, watching)
            outcomes[n] = outcome
        return outcomes, writes_of

    def _look(
        self,
        writes: Writes,
        plan: Plan,
        a: Asked,
        stored: dict[bytes, bytes],
        members: set[str],
        due: int | None,
        inputs: AudienceInputs | None,
    ) -> Outcome | Look:
        """What to evaluate of one profile, or its outcome
        when there is nothing to evaluate: MISSING (not live) or put off; the marks it
        leaves noted on `writes`."""
        if inputs is None:
            return MISSING
        key = self.keys.of(a.profile_id)
        if inputs is PUT_OFF:
            return _put_off(writes, key, stored, due)
        if inputs.bot_only:  # (never matched, nor marked as seen: a person's first event
            return Outcome()  # has every audience matched)
        a = self._mark(writes, key, a, stored, len(inputs.history))
        changed, cause = a.changed, a.cause
        # (With everything matched, for events, no audience is matched for being due.)
        due_now = frozenset() if changed is None and cause != "time" else frozenset(
            audience for audience, at in next_moments(stored).items() if at <= a.now
        )  # fmt: skip
        fresh: frozenset[str] = frozenset()
        seen_under = stored.get(GENERATION_FIELD)
        if seen_under is None:
            changed = None  # never evaluated: everything is decided, for its events
            cause = "event"
            writes.hset(key, GENERATION, plan.generation)
        elif seen_under != plan.generation_text:
            # First seen under these definitions: those changed since its last look are
            # matched too; a look for time is then the one a definitions' change (a
            # backfill) asked for, or one due then (the audiences due are matched).
            fresh = plan.changed_since(int(seen_under))
            if cause == "time":
                changed, cause = frozenset(), "definition"
            writes.hset(key, GENERATION, plan.generation)
        elif cause == "time" and due_now:
            changed = frozenset()  # only time passed: the audiences due now are matched
        # (A moment no audience was due at is a look asked for: everything is decided.)
        subject = subject_from(a.profile_id, inputs, members, self._out_of_stock,
                               self.history_days)  # fmt: skip
        return Look(subject, a.now, cause, changed, due_now, fresh)

    def _settle(
        self,
        writes: Writes,
        plan: Plan,
        look: Look,
        outcome: Outcome,
        stored: dict[bytes, bytes],
        due: int | None,
        watching: list[tuple[str, str, int]],
    ) -> None:
        """One profile's evaluation written (what changes something) on `writes`, and the
        products it watches on `watching` for the batch."""
        pid = look.subject.profile_id
        self._write(writes, pid, outcome)
        if look.changed is None or look.changed & plan.watch_events:
            for product, at in watched(plan, look.subject.history, look.now).items():
                watching.append((product, pid, at))
        next_at = _keep_next_moments(writes, self.keys.of(pid), plan, outcome, stored)
        if next_at != due:
            writes.moment = (due, next_at)

    def _mark(
        self, writes: Writes, key: str, a: Asked, stored: dict[bytes, bytes], events: int
    ) -> Asked:
        """The evaluation asked for, as it is made, and the marks it leaves on the memberships
        hash `key`: never at a moment before the profile's latest transition; everything
        decided, as for events, when events were put off until it; a long history's moment
        noted; a failure before healed."""
        last = int(stored.get(LAST_FIELD, 0))
        if last > a.now:  # another worker recorded a transition later than this moment: from
            a = a._replace(now=last)  # there on (a transition is never recorded before one)
        if LATER_FIELD in stored:
            writes.hdel(key, LATER)
            a = a._replace(cause="event", changed=None)
        if events > self.hot_events:
            writes.hset(key, SEEN, a.now)  # the events of the next second wait for its end
        if FAILURES_FIELD in stored:
            writes.hdel(key, FAILURES)
        return a

    def _write(self, writes: Writes, pid: str, outcome: Outcome) -> None:
        rows = []
        for change in outcome.changes:
            if change.change == "enter":
                writes.hset(self.keys.of(pid), change.audience, change.at)
                writes.zadd(self.keys.members(change.audience), pid, change.at)
            else:
                writes.hdel(self.keys.of(pid), change.audience)
                writes.zrem(self.keys.members(change.audience), pid)
            writes.xadd(self.keys.changes, change.fields(), self.changes_kept)
            rows.append(change.row())
        if rows:
            writes.xadd(self.records_stream, {"table": "audience_log",
                                              "rows": orjson.dumps(rows).decode()})  # fmt: skip
            writes.hset(self.keys.of(pid), LAST, max(change.at for change in outcome.changes))

    def retire_merged(self, merges: list[tuple[str, str]], now: int) -> None:
        """`retire` of the profiles merged away (merged, survivor), together; if that
        fails, each alone, and one that fails alone is set aside: its look again finds it
        merged away, and retires it then."""
        try:
            self.retire(merges, now)
            return
        except self.storage_errors:
            raise
        except Exception as error:
            if len(merges) == 1:
                self.set_aside_profile(Asked(merges[0][0], now, "merge", None), error)
                return
        for merge in merges:
            self.retire_merged([merge], now)

    def retire(self, merges: Sequence[tuple[str, str | None]], now: int) -> None:
        """Profiles merged into others (or erased: no survivor): they leave their audiences
        (recorded under the definitions of now), read in one call, written in another; one
        another worker wrote meanwhile is read and written again."""
        plan = self.refresh()
        for _ in range(10):
            pipe = self.client.pipeline(transaction=False)
            for merged, _ in merges:
                pipe.hgetall(self.keys.of(merged))
            profiles, outcomes = [], []
            for (merged, survivor), stored in zip(merges, pipe.execute(), strict=True):
                reason = [{"path": "root", "condition": "merge", "value": survivor,
                           "threshold": "", "holds": False}] if survivor else []  # fmt: skip
                outcome = Outcome(changes=[
                    AudienceChange(a, merged, "exit", now, "merge", plan.generation, reason)
                    for a in sorted(memberships(stored))
                ])  # fmt: skip
                writes = Writes()
                self._write(writes, merged, outcome)
                key = self.keys.of(merged)
                writes.delete(key)
                writes.zrem(self.keys.due, merged)
                profiles.append([key, _version(stored), writes.commands, merged, "", "", 0])
                outcomes.append(outcome)
            conflicts = {int(place) - 1 for place in self._commit(
                keys=[self.keys.due], args=[orjson.dumps(profiles), "[]", VERSION])}  # fmt: skip
            for n, outcome in enumerate(outcomes):
                if n not in conflicts:
                    _count(outcome)
            merges = [merges[n] for n in sorted(conflicts)]
            if not merges:
                return
        raise RuntimeError(f"memberships of {merges[0][0]} kept changing under us")


def _put_off(writes: Writes, key: str, stored: dict[bytes, bytes], due: int | None) -> Outcome:
    """A long history evaluated within the second: its events wait for the second's end, when
    the profile is looked at (everything decided then, as for events)."""
    look = int(stored[SEEN_FIELD]) + HOT_PAUSE_MS
    if LATER_FIELD not in stored:
        writes.hset(key, LATER, 1)
    if due is None or look < due:
        writes.moment = (due, look)
    PUT_OFF_EVALUATIONS.inc()
    return PUT_OFF_OUTCOME


def _count(outcome: Outcome) -> None:
    """The transitions written, in the metrics."""
    for change in outcome.changes:
        TRANSITIONS.labels(change.change, change.cause).inc()


def _keep_next_moments(
    writes: Writes, key: str, plan: Plan, outcome: Outcome, stored: dict[bytes, bytes]
) -> int | None:
    """Write the audiences' next moments in the memberships hash `key` (`stored`: as read)
    if the matched ones moved (forgetting audiences gone from the plan); the profile's next
    moment: the soonest of all its audiences'."""
    if len(outcome.matched) == len(plan.definitions):  # every audience matched: the text
        kept = outcome.next_of  # written last time is this one's if none moved
        text = orjson.dumps(kept) if kept else None
        if text != stored.get(NEXT_FIELD):
            _write_next_moments(writes, key, text)
    else:
        nexts = next_moments(stored)
        kept = {a: at for a, at in nexts.items()
                if a in plan.definitions and a not in outcome.matched}  # fmt: skip
        kept.update(outcome.next_of)
        if kept != nexts:
            _write_next_moments(writes, key, orjson.dumps(kept) if kept else None)
    return min(kept.values(), default=None)


def _write_next_moments(writes: Writes, key: str, text: bytes | None) -> None:
    if text:
        writes.hset(key, NEXT, text.decode())
    else:
        writes.hdel(key, NEXT)


def watched(plan: Plan, history: list[Happened], now: int) -> dict[str, int]:
    """The products the profile viewed or wishlisted within the stock conditions' windows,
    each with the last time: one entry per product, however often it was seen."""
    found: dict[str, int] = {}
    events = plan.watch_events
    if not events:
        return found
    since = now - plan.watch_ms
    for at, _, event, properties in history:  # in time order: the last seen stays
        if at > since and event in events:
            product = product_of(properties)
            if product:
                found[product] = at
    return found


def batches_of(asked: list[Asked]) -> list[list[Asked]]:
    """The evaluation batches of these profiles, in order: the first of up to
    `FIRST_BATCH`, each next twice the one before, up to `EVALUATION_BATCH`."""
    batches, start, size = [], 0, FIRST_BATCH
    while start < len(asked):
        batches.append(asked[start : start + size])
        start, size = start + size, min(2 * size, EVALUATION_BATCH)
    return batches


def tune_collector() -> None:
    """The collector's thresholds of an audience worker process (`GC_THRESHOLDS`)."""
    gc.set_threshold(*GC_THRESHOLDS)


def retry_after(failures: int) -> int:
    """How long a profile that failed this many times in a row is set aside (ms)."""
    return min(MAX_RETRY_MS, RETRY_MS << min(max(failures - 1, 0), 16))


def _version(stored: dict[Any, Any]) -> str:
    """The memberships hash's version, as read (every write moves it on)."""
    return text(stored.get(VERSION_FIELD, b""))


def _text(moment: int | None) -> str:
    return "" if moment is None else str(moment)


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    """A hash as a script returns it (a flat list), as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _dict(raw: bytes | None) -> dict[str, Any]:
    value = orjson.loads(raw) if raw else {}
    return value if isinstance(value, dict) else {}  # Lua's cjson writes an empty table as []?


def _list(raw: bytes | None) -> list[Any]:
    if not raw:
        return []
    value = orjson.loads(raw)
    return value if isinstance(value, list) else []  # Lua's cjson writes an empty list as {}
