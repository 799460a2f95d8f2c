"""The audience worker: merges move memberships, entries handled again change nothing twice,
definitions change while events flow, a product back in stock brings its watchers up."""

from __future__ import annotations

import contextlib
import gc
import itertools
import time
from datetime import UTC, datetime

import pytest
import redis

from cdp import deadletters
from cdp.catalog import Product
from cdp.profiles.keyspace import Keyspace
from cdp.report import overview
from cdp.settings import Settings
from cdp.storage import Warehouse
from rules.audiences import Audiences
from rules.definition import Definition
from rules.evaluation import Plan
from rules.keyspace import FAILURES, VERSION, AudienceKeys
from rules.worker import (
    DUE_BATCH,
    EVALUATION_BATCH,
    FIRST_BATCH,
    GC_THRESHOLDS,
    HOT_PAUSE_MS,
    LEASE_MS,
    RETRY_MS,
    Ahead,
    Asked,
    AudienceWorker,
    RulesUnavailable,
    batches_of,
    retry_after,
)
from tests.rules.shop import CRAWLER, HOUR_MS, Shop, days, step

TWICE = {"performed": {"event": "Product Viewed", "within": "P1D", "times": 2}}


def viewed_twice(shop: Shop, *visitors: str) -> None:
    """Each visitor views twice, a millisecond apart: in TWICE once evaluated."""
    for who in visitors:
        shop.track(who, "Product Viewed", at=shop.now - 1)
        shop.track(who, "Product Viewed")


def recent_viewers(shop: Shop, count: int, at: int | None = None) -> list[str]:
    """`count` visitors, each viewing once (at `at`, now by default), in the audience
    "recent" (viewed within the hour) once evaluated."""
    shop.define("recent", {"performed": {"event": "Product Viewed", "within": "PT1H",
                                         "times": 1}})  # fmt: skip
    viewers = [f"v{i}" for i in range(count)]
    for who in viewers:
        shop.track(who, "Product Viewed", at=at)
    shop.settle()
    return viewers


def test_a_merge_moves_memberships_to_the_survivor(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        shop.track("phone", "Product Viewed", at=shop.now - 2000)
        shop.track("phone", "Product Viewed", at=shop.now - 1000)
        shop.track("laptop", "Product Viewed")
        shop.settle()
        phone, laptop = shop.profile_of("phone"), shop.profile_of("laptop")
        assert shop.members("twice") == {phone}

        shop.identify("laptop", "sam")
        shop.identify("phone", "sam")
        shop.settle()
        survivor = shop.profile_of("phone")
        assert survivor == shop.profile_of("laptop")
        merged = ({phone, laptop} - {survivor}).pop()
        assert shop.members("twice") == {survivor} == shop.sql_members("twice")
        changes = [(c["profile"], c["change"], c["cause"]) for c in shop.changes()
                   if c["audience"] == "twice"]  # fmt: skip
        if merged == phone:  # the member's profile went; the survivor came in
            assert changes[1:] == [(phone, "exit", "merge"), (survivor, "enter", "event")]
        assert not redis_client.exists(shop.keys.of(merged))


def bot_profiles(shop: Shop) -> int:
    """What the shop's report says of profiles only bots sent events to."""
    since = datetime(2000, 1, 1, tzinfo=UTC)
    return overview(shop.warehouse, since, shop.client, []).bot_profiles


NEVER_ORDERED = {"not": {"performed": {"event": "Order Completed", "within": "P7D", "times": 1}}}


def test_a_profile_only_bots_sent_events_to_is_in_no_audience_until_a_person_comes(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """A crawler rendering the shop's pages makes a profile a page: none is a shopper who
    never ordered. A person's event (the same cookie, or a person's profile merged in, even
    by a bot's event) makes the profile judged like any, every audience matched at once;
    both paths say the same."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("never-ordered", NEVER_ORDERED)
        shop.define("twice", TWICE)
        for who in ("crawler", "turned"):
            shop.track(who, "Product Viewed", bot=True)
            shop.send({"type": "page", "anonymousId": who, "context": {"userAgent": CRAWLER}})
        shop.send({"type": "identify", "anonymousId": "crawled-kim", "userId": "kim",
                   "context": {"userAgent": CRAWLER}})  # fmt: skip
        shop.track("person", "Product Viewed")
        shop.track("kim-phone", "Product Viewed")
        shop.track("mixed", "Product Viewed", bot=True)  # one step with a person's page
        shop.send({"type": "page", "anonymousId": "mixed"})
        shop.settle()
        person, phone = shop.profile_of("person"), shop.profile_of("kim-phone")
        mixed = shop.profile_of("mixed")
        assert shop.members("never-ordered") == {person, phone, mixed}
        assert shop.sql_members("never-ordered") == {person, phone, mixed}
        why = shop.why(shop.profile_of("crawler"), "never-ordered")
        assert why["bot_only"] and not why["holds"] and why["unchanged_until"] is None
        assert bot_profiles(shop) == 3  # the crawler's, the one turning, crawled Kim's

        shop.send({"type": "page", "anonymousId": "turned"})  # a person's browser, this time
        shop.send(
            {
                "type": "identify",
                "anonymousId": "kim-phone",
                "userId": "kim",
                "context": {"userAgent": CRAWLER},
            }
        )  # a bot's: the phone's profile goes in
        shop.settle()
        kim = shop.profile_of("crawled-kim")
        assert kim == shop.profile_of("kim-phone") != phone
        judged = {person, mixed, shop.profile_of("turned"), kim}
        assert shop.members("never-ordered") == judged == shop.sql_members("never-ordered")
        assert not shop.why(shop.profile_of("turned"), "never-ordered")["bot_only"]
        assert bot_profiles(shop) == 1
        assert shop.members("twice") == set() == shop.sql_members("twice")  # no view counted
        shop.advance(days(8))
        assert shop.members("never-ordered") == judged == shop.sql_members("never-ordered")


def test_bots_profiles_merged_together_or_moved_to_a_new_root_stay_bots_only(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("never-ordered", NEVER_ORDERED)
        for who in ("m-bot", "z-bot"):
            shop.track(who, "Product Viewed", bot=True)
        shop.settle()
        before = shop.profile_of("m-bot")
        for who in ("m-bot", "z-bot", "a-bot"):  # one user id: one profile, then rooted at
            shop.send(
                {
                    "type": "identify",
                    "anonymousId": who,
                    "userId": "crawl",
                    "context": {"userAgent": CRAWLER},
                }
            )  # a smaller identifier: moved
            shop.settle()
        assert shop.profile_of("m-bot") == shop.profile_of("z-bot") == shop.profile_of("a-bot")
        assert shop.profile_of("m-bot") != before
        assert shop.members("never-ordered") == set() == shop.sql_members("never-ordered")


class Killed(BaseException):
    """The process ends here (no `except Exception` of the worker's takes it for a failure)."""


class CrashBeforeAck(AudienceWorker):
    """Killed after a batch's writes, before the entries are acknowledged (as between two
    batches of one read: only the last one's write acknowledges them)."""

    def _evaluate_once(self, asked, entries, ahead=None, later=None):  # type: ignore[no-untyped-def]
        super()._evaluate_once(asked, (), ahead)
        raise Killed("before acknowledging")


def test_entries_handled_again_after_a_crash_record_each_transition_once(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        viewed_twice(shop, "a", "b", "c")
        crashing = shop.audience_worker(CrashBeforeAck, consumer="crashing")
        shop.worker = crashing
        with contextlib.suppress(Killed):
            shop.settle()
        enters = [c for c in shop.changes() if c["change"] == "enter" and c["audience"] == "twice"]
        assert len(enters) == 3  # the effect is stored, the entries not acknowledged
        restarted = shop.audience_worker(consumer="crashing")
        assert restarted.recover() > 0
        shop.worker = restarted
        shop.settle()
        enters = [c for c in shop.changes() if c["change"] == "enter" and c["audience"] == "twice"]
        assert len(enters) == 3
        pending = redis_client.xpending(settings.profile_changes_stream, "audiences")
        assert pending["pending"] == 0
        step(shop.records)
        logged = "SELECT count() FROM audience_log WHERE audience_id = 'twice'"
        assert warehouse.query_rows(logged)[0][0] == 3


def test_the_changes_stream_keeps_the_newest_entries_and_the_log_keeps_all(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """`audience_changes` hands transitions over to activation; it is no store: it keeps
    about the newest `CDP_AUDIENCE_CHANGES_KEPT` entries (with nobody consuming it yet, it
    grew for ever), while `audience_log` in ClickHouse keeps every one."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.worker = shop.audience_worker(changes_kept=100)
        recent_viewers(shop, 150)
        shop.advance(HOUR_MS)  # they all leave `recent` (and enter `browse-abandonment`)
        step(shop.records)
        logged = warehouse.query_rows("SELECT audience_id, change, count() FROM audience_log "
                                      "GROUP BY audience_id, change")  # fmt: skip
        counts = {(audience, change): n for audience, change, n in logged}
        assert counts[("recent", "enter")] == counts[("recent", "exit")] == 150
        made = sum(counts.values())
        kept = redis_client.xlen(shop.keys.changes)
        # Trimmed a whole node of entries at a time (Redis' `MAXLEN ~`; 100 entries a node).
        assert 100 <= kept <= 200 < made
        [(_, newest)] = redis_client.xrevrange(shop.keys.changes, count=1)
        assert newest[b"cause"] == b"time"  # the newest are kept


class NoSeparateAck(AudienceWorker):
    """Killed whenever it would acknowledge entries in a call of their own."""

    def ack(self, entries):  # type: ignore[no-untyped-def]
        raise Killed("before a separate acknowledgement")


def test_the_entries_are_acknowledged_by_the_script_that_writes_their_effects(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """No moment lies between a batch's writes and its entries' acknowledgement: a worker
    killed after the write has nothing to redo."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        viewed_twice(shop, "a", "b")
        shop.worker = shop.audience_worker(NoSeparateAck, consumer="atomic")
        shop.settle()  # no separate acknowledgement was needed
        assert shop.members("twice") == {shop.profile_of("a"), shop.profile_of("b")}
        pending = redis_client.xpending(settings.profile_changes_stream, "audiences")
        assert pending["pending"] == 0


def test_definitions_change_while_events_flow(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        plans = []
        for round_ in range(6):
            for who in range(5):
                shop.track(f"v{who}", "Product Viewed", at=shop.now - round_ * 1000 - who)
            times = 2 + round_ % 3
            root = {"performed": {"event": "Product Viewed", "within": "P1D", "times": times}}
            changed = Definition.model_validate({"id": "twice", "name": "Twice", "root": root})
            shop.audiences.save(changed, create=False)
            shop.settle()
            plans.append(shop.worker.refresh())
        # The last definition (3 views) holds for everyone; every profile was decided by it
        # once its events arrived.
        everyone = {shop.profile_of(f"v{who}") for who in range(5)}
        assert shop.members("twice") == everyone == shop.sql_members("twice") & everyone
        # Each generation's rules were freed when the next came (the engine keeps them else).
        assert len({id(plan) for plan in plans}) == 6
        assert [plan.matcher.shard_count() for plan in plans] == [0] * 5 + [2]
        enters = [c for c in shop.changes() if c["change"] == "enter"]
        exits = [c for c in shop.changes() if c["change"] == "exit"]
        assert len(enters) - len(exits) == 5


def test_a_product_seen_again_is_watched_from_the_last_time(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """The watchers of a product are kept by the last time each saw it (the index forgets
    those seen before the kept history): a second view moves it on; a product id that is
    not text, and events that watch nothing, are not indexed."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.track("ann", "Product Viewed", product_id="boot", at=shop.now - days(5))
        shop.track("ann", "Product Viewed", product_id="boot", at=shop.now - days(1))
        shop.track("ann", "Product Viewed", product_id=7)
        shop.track("ann", "Order Completed", product_id="hat")
        shop.settle()
        keys = AudienceKeys(settings.redis_prefix)
        assert redis_client.zscore(keys.watchers("boot"), shop.profile_of("ann")) == (
            shop.now - days(1)
        )
        assert redis_client.keys(keys.watchers("*")) == [keys.watchers("boot").encode()]


def test_a_product_back_in_stock_moves_its_watchers(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.catalog.upsert([Product(id="boot", name="Boot", stock=0)])
        shop.track("ann", "Product Viewed", product_id="boot")
        shop.track("bob", "Product Viewed", product_id="hat")
        shop.settle()
        ann = shop.profile_of("ann")
        assert shop.members("back-in-stock-watchers") == {ann}
        assert shop.sql_members("back-in-stock-watchers") & {ann} == {ann}

        shop.now += 1000
        assert shop.catalog.upsert([Product(id="boot", name="Boot", stock=4)], now=shop.now) == [
            "boot"
        ]
        shop.settle()
        assert shop.members("back-in-stock-watchers") == set()
        stored = warehouse.query_rows(
            "SELECT properties.product_id.:String FROM events WHERE event = 'Back In Stock'"
        )
        assert stored == [("boot",)]


def test_an_event_telling_a_new_time_zone_moves_the_audiences_reading_it(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """The time zone comes with any event (`context.timezone`): one of a name no audience
    reads still has the audiences reading the time zone matched again."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("berlin", {"time_zone": {"in": ["Europe/Berlin"]}})
        shop.track("ann", "Product Viewed", time_zone="Asia/Tokyo")
        shop.settle()
        ann = shop.profile_of("ann")
        assert shop.members("berlin") == set()
        shop.now += 1000
        shop.track("ann", "Signed In", time_zone="Europe/Berlin")
        shop.settle()
        assert shop.members("berlin") == {ann} == shop.sql_members("berlin")
        [entered] = [c for c in shop.changes() if c["audience"] == "berlin"]
        assert entered["cause"] == "event" and int(entered["at"]) == shop.now
        # A day's browsing is applied as one change: a time zone on any of its events counts.
        shop.track("bob", "Product Viewed")
        shop.settle()
        shop.now += 1000
        shop.track("bob", "Product Viewed")
        shop.track("bob", "Product Viewed", time_zone="Europe/Berlin")
        shop.settle()
        assert shop.members("berlin") == {ann, shop.profile_of("bob")}


def test_product_updated_events_from_a_server_key_update_the_catalog(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    from cdp.profiles.worker import ProfileWorker

    with Shop(settings, redis_client, warehouse) as shop:
        shop.profiles = ProfileWorker(redis_client, shop.store, settings.events_stream,
                                      catalog=shop.catalog, catalog_sources=frozenset({"server"}),
                                      block_ms=10)  # fmt: skip
        update = {"type": "track", "event": "Product Updated", "userId": "shop-backend",
                  "properties": {"product_id": "boot", "name": "Boot", "stock": 3}}  # fmt: skip
        shop.send(update)
        shop.send({**update, "properties": {"product_id": "hat", "stock": 1}}, source="browser")
        shop.settle()
        boot = shop.catalog.get("boot")
        assert boot is not None and boot.stock == 3 and boot.name == "Boot"
        assert shop.catalog.get("hat") is None  # the browser's key may not change the catalog


class Interrupted(AudienceWorker):
    """Another worker writes a profile's memberships while this one decides a batch."""

    interrupted = ""

    def _look(self, writes, plan, a, *read):  # type: ignore[no-untyped-def]
        self.decided.append(a.profile_id)
        if not self.interrupted:
            self.interrupted = a.profile_id
            # As another worker's commit does: the version moves on.
            self.client.hincrby(self.keys.of(a.profile_id), VERSION, 1)
        return super()._look(writes, plan, a, *read)


def test_a_batch_another_worker_touched_is_decided_again_one_by_one(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        shop.worker = shop.audience_worker(Interrupted)
        shop.worker.decided = []
        viewed_twice(shop, "a", "b", "c")
        shop.settle()
        interrupted = shop.worker.interrupted
        assert shop.worker.decided.count(interrupted) == 2  # its first decision not written
        assert len(shop.worker.decided) == 4
        everyone = {shop.profile_of(who) for who in ("a", "b", "c")}
        assert shop.members("twice") == everyone
        enters = [c["profile"] for c in shop.changes() if c["audience"] == "twice"]
        assert sorted(enters) == sorted(everyone)  # once each


def test_a_batch_read_ahead_of_a_write_to_its_profile_is_decided_again_alone(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """The next batch's read is sent before this batch is written: a profile in both was
    read as it was before the write, so its second decision is not written (the version
    moved) and it is decided again alone: one enter."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        visitors = [f"v{i}" for i in range(FIRST_BATCH)]  # the first batch; the second: one
        viewed_twice(shop, *visitors)
        shop.apply()
        ids = [shop.profile_of(who) for who in visitors]
        shop.worker = shop.audience_worker(Interrupted)
        shop.worker.decided = []
        shop.worker.interrupted = "nobody"  # counts, interrupts nothing
        shop.worker.evaluate_batches([Asked(pid, shop.now, "event", None)
                                      for pid in [*ids, ids[0]]])  # fmt: skip
        assert shop.worker.decided.count(ids[0]) == 3  # in each batch, then alone
        assert shop.members("twice") == set(ids)
        enters = [c for c in shop.changes() if c["audience"] == "twice"]
        assert sorted(c["profile"] for c in enters) == sorted(ids)


class KilledWhenDecidedAgain(Interrupted):
    """Interrupted, then killed as it decides the interrupted profile again."""

    def _look(self, writes, plan, a, *read):  # type: ignore[no-untyped-def]
        if a.profile_id == self.interrupted:
            raise Killed("deciding it again")
        return super()._look(writes, plan, a, *read)


@pytest.mark.parametrize("last_batch", [5, 1])  # (a batch of one is evaluated alone)
def test_a_batch_written_while_the_next_is_evaluated_is_finished_before_the_acknowledgement(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse, last_batch: int
) -> None:
    """An entry naming two batches: the first batch's write is read back only when the
    second's is sent; a profile of the first that another worker touched meanwhile is decided
    again alone before the entry is acknowledged (by the second batch's write): a crash then
    leaves the entry to be handled again."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        visitors = [f"v{i}" for i in range(FIRST_BATCH + last_batch)]
        viewed_twice(shop, *visitors)
        shop.worker = shop.audience_worker(KilledWhenDecidedAgain, consumer="crashing")
        shop.worker.decided = []
        finished: list[int] = []
        finish = shop.worker.finish_writes
        shop.worker.finish_writes = lambda later: (finished.append(len(later)), finish(later))  # type: ignore[method-assign]
        with pytest.raises(Killed):
            shop.settle()
        assert 1 in finished  # a write was left unread, then finished
        pending = redis_client.xpending(settings.profile_changes_stream, "audiences")
        assert pending["pending"] > 0
        shop.worker = shop.audience_worker(consumer="crashing")
        assert shop.worker.recover() > 0
        shop.settle()
        ids = {shop.profile_of(who) for who in visitors}
        assert shop.members("twice") == ids
        enters = [c["profile"] for c in shop.changes() if c["audience"] == "twice"]
        assert sorted(enters) == sorted(ids)  # once each
        pending = redis_client.xpending(settings.profile_changes_stream, "audiences")
        assert pending["pending"] == 0


class Forgetful(AudienceWorker):
    """Valkey forgets its scripts while the first batch is decided (as after its restart)."""

    forgot = False

    def _decide(self, *args):  # type: ignore[no-untyped-def]
        if not self.forgot:
            self.forgot = True
            self.client.script_flush()
        return super()._decide(*args)


def test_a_write_sent_to_a_valkey_that_forgot_the_script_is_made_again(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        visitors = [f"v{i}" for i in range(FIRST_BATCH * 2)]
        viewed_twice(shop, *visitors)
        shop.apply()
        ids = [shop.profile_of(who) for who in visitors]
        shop.worker = shop.audience_worker(Forgetful)
        pool = redis_client.connection_pool
        in_use = len(pool._in_use_connections)  # type: ignore[attr-defined]
        shop.worker.evaluate_batches([Asked(pid, shop.now, "event", None) for pid in ids])
        assert shop.worker.forgot
        assert shop.members("twice") == set(ids)
        enters = [c["profile"] for c in shop.changes() if c["audience"] == "twice"]
        assert sorted(enters) == sorted(ids)
        assert len(pool._in_use_connections) == in_use  # type: ignore[attr-defined]


def test_a_read_sent_ahead_is_taken_only_by_its_batch_and_lets_go_of_its_connection(
    redis_client: redis.Redis,
) -> None:
    pool = redis_client.connection_pool
    script = redis_client.register_script("return ARGV[1]")
    script(args=["loaded"])
    mine, other = [Asked("p1", 1, "event", None)], [Asked("p1", 1, "event", None)]
    ahead = Ahead(redis_client, script.sha)
    ahead.send(mine, [], ["ahead"])
    assert ahead.reply(other) is None  # an equal batch, not the one it was sent for
    assert ahead.reply(mine) == b"ahead"
    assert ahead.reply(mine) is None  # taken once
    forgotten = Ahead(redis_client, "0" * 40)  # a script Valkey does not hold
    forgotten.send(mine, [], ["x"])
    assert forgotten.reply(mine) is None  # read as usual instead
    dropped = Ahead(redis_client, script.sha)
    dropped.send(mine, [], ["never taken"])
    dropped.drop()
    assert len(pool._in_use_connections) == 0  # type: ignore[attr-defined]
    assert redis_client.ping()


class Counting(AudienceWorker):
    """Counts the profiles it evaluated."""

    evaluated = 0

    def evaluate_all(self, asked, entries=(), ahead=None, later=None):  # type: ignore[no-untyped-def]
        self.evaluated += len(asked)
        return super().evaluate_all(asked, entries, ahead, later)


def test_two_workers_share_the_changes_and_the_schedule_each_transition_once(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        shop.worker = shop.audience_worker(Counting, consumer="first", batch_size=1)
        shop.more_workers = [shop.audience_worker(Counting, consumer="second", batch_size=1)]
        shoppers = [f"s{n}" for n in range(8)]
        for who in shoppers:  # a profile change each
            shop.track(who, "Product Viewed", at=shop.now - 60_000)
            shop.track(who, "Product Viewed")
            shop.apply()
        while sum(step(worker) for worker in shop.audience_workers):  # an entry each in turn
            pass
        shop.settle()
        everyone = {shop.profile_of(who) for who in shoppers}
        assert shop.members("twice") == shop.sql_members("twice") == everyone
        assert [w.evaluated for w in shop.audience_workers] == [4, 4]  # type: ignore[attr-defined]

        shop.advance(days(1))  # the first view of each slides out of the day: all leave
        assert shop.members("twice") == shop.sql_members("twice") == set()
        changes = [(c["profile"], c["change"]) for c in shop.changes() if c["audience"] == "twice"]
        assert sorted(changes) == sorted([(p, "enter") for p in everyone]
                                         + [(p, "exit") for p in everyone])  # fmt: skip


def test_evaluation_batches_grow_from_a_small_first_one() -> None:
    """The first batch's read is waited for (nothing is evaluated meanwhile): it is small;
    each next is twice the one before, up to the largest; none is left out or repeated."""
    asked = [Asked(f"p{i}", 0, "event", None) for i in range(10_000)]
    batches = batches_of(asked)
    sizes = [len(b) for b in batches]
    assert sizes[:3] == [FIRST_BATCH, 2 * FIRST_BATCH, 4 * FIRST_BATCH]
    assert max(sizes) == EVALUATION_BATCH > FIRST_BATCH
    assert [a for b in batches for a in b] == asked
    assert batches_of(asked[:1]) == [asked[:1]] and batches_of([]) == []


def test_events_are_not_held_behind_a_burst_of_due_profiles(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """Thousands whose hour ends together come due at once; an event arriving then waits
    for one evaluation batch of them, not for all: each round takes a batch of the due
    profiles, then the new stream entries."""
    with Shop(settings, redis_client, warehouse) as shop:
        recent_viewers(shop, 3 * DUE_BATCH)
        assert len(shop.members("recent")) == 3 * DUE_BATCH
        shop.now += HOUR_MS  # everyone is due at once, and a new shopper views now
        shop.track("new", "Product Viewed")
        shop.apply()
        shop.worker.drain_once(0)
        assert shop.profile_of("new") in shop.members("recent")  # taken in the first round
        due = redis_client.zcount(shop.keys.due, "-inf", shop.now)
        assert due == 2 * DUE_BATCH  # one batch of the due taken before it
        shop.advance(0)
        assert shop.members("recent") == {shop.profile_of("new")} == shop.sql_members("recent")


def test_no_due_profile_is_held_behind_a_big_stream_entry(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """A stream entry may name thousands of profiles (a backlog read at once): between its
    evaluation batches, a batch of the profiles due is taken."""
    with Shop(settings, redis_client, warehouse) as shop:
        recent_viewers(shop, 3 * DUE_BATCH)
        shop.now += HOUR_MS  # they are all due, and new shoppers view now (3 batches)
        new = 4 * FIRST_BATCH
        assert [len(b) for b in batches_of([Asked(str(i), 0, "event", None)
                                            for i in range(new)])] == [FIRST_BATCH, 2 * FIRST_BATCH,
                                                                       FIRST_BATCH]  # fmt: skip
        for i in range(new):
            shop.track(f"new{i}", "Product Viewed")
        shop.apply()
        entries = shop.worker.read_new(None)
        assert len(entries) == 1  # one profile-script call: one entry naming them all
        shop.worker.handle(entries, recovered=False)
        assert len(shop.members("recent")) == new + DUE_BATCH
        due = redis_client.zcount(shop.keys.due, "-inf", shop.now)
        assert due == DUE_BATCH  # a batch of the due after each batch but the last
        shop.advance(0)
        assert len(shop.members("recent")) == new


class Moments(AudienceWorker):
    """Notes the moment each profile is evaluated at, in order; its clock moves on 10 ms
    after its first reading."""

    def __init__(self, *args, **options):  # type: ignore[no-untyped-def]
        super().__init__(*args, **options)
        self.seen: dict[str, list[int]] = {}
        started, readings = self.clock, itertools.count()
        self.clock = lambda: started() + (10 if next(readings) else 0)

    def evaluate_all(self, asked, entries=(), ahead=None, later=None):  # type: ignore[no-untyped-def]
        for a in asked:
            self.seen.setdefault(a.profile_id, []).append(a.now)
        return super().evaluate_all(asked, entries, ahead, later)


def test_due_profiles_taken_between_batches_are_those_due_by_the_batches_moment(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """While a big entry is handled at its moment, the clock moves on: the due profiles
    taken between its batches are those due by that moment, so no profile is evaluated at a
    moment before one it was evaluated at (it would enter again what it left)."""
    with Shop(settings, redis_client, warehouse) as shop:
        viewers = recent_viewers(shop, 3 * FIRST_BATCH, shop.now - HOUR_MS + 5)  # due in 5 ms
        shop.worker = shop.audience_worker(Moments)
        for i in range(2 * FIRST_BATCH):
            shop.track(f"new{i}", "Product Viewed")
        for who in viewers:  # in the same entry, with the new, and due 5 ms after its moment
            shop.track(who, "Product Added")
        shop.apply()
        [entry] = shop.worker.read_new(None)
        shop.worker.handle([entry], recovered=False)
        seen = shop.worker.seen  # type: ignore[attr-defined]
        assert all(moments == sorted(moments) for moments in seen.values()), seen
        changes = [c for c in shop.changes() if c["audience"] == "recent"]
        assert len(changes) == 5 * FIRST_BATCH  # an enter each; nobody left yet


class Racing(AudienceWorker):
    """Between its batches, another worker (its clock ahead) takes the profiles due."""

    other: AudienceWorker

    def run_due(self, by=None):  # type: ignore[no-untyped-def]
        if by is not None:
            self.other.run_due()
        return super().run_due(by)


def test_no_profile_is_evaluated_at_a_moment_before_its_last_transition(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """Two workers: one handles a big entry at its moment while the other, later, takes the
    profiles of that entry that came due meanwhile and records their exits. The first then
    evaluates those profiles at its (earlier) moment: it must not enter them again there
    (an enter recorded before the exit it follows, and a second exit)."""
    with Shop(settings, redis_client, warehouse) as shop:
        start = shop.now
        viewers = recent_viewers(shop, 3 * FIRST_BATCH, start - HOUR_MS + 5)  # leave at +5
        first = shop.worker = shop.audience_worker(Racing, consumer="first")
        later = shop.audience_worker(consumer="later")
        later.clock = lambda: start + 10
        first.other = later  # type: ignore[attr-defined]
        shop.more_workers = [later]
        for i in range(FIRST_BATCH):
            shop.track(f"new{i}", "Product Viewed")
        for who in viewers:  # a late view: read by `recent`, too old to count
            shop.track(who, "Product Viewed", at=start - 2 * HOUR_MS)
        shop.apply()
        [entry] = first.read_new(None)
        first.handle([entry], recovered=False)
        shop.now = start + 10
        shop.advance(0)
        moves: dict[str, list[tuple[str, int]]] = {}
        for c in shop.changes():
            if c["audience"] == "recent":
                moves.setdefault(c["profile"], []).append((c["change"], int(c["at"])))
        for who in viewers:
            assert moves[shop.profile_of(who)] == [("enter", start), ("exit", start + 5)], who


def test_a_long_history_is_evaluated_at_most_once_a_second(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """A visitor sending without end (its history long: here past 20 events) is evaluated for
    its events at most once in `HOT_PAUSE_MS`: what comes within it waits for its end, and is
    decided then, as for events. A shopper's events beside it are decided at once."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.worker = shop.audience_worker(hot_events=20)
        shop.define("ordered", {"performed": {"event": "Order Completed", "within": "P1D",
                                              "times": 1}})  # fmt: skip
        start = shop.now
        for i in range(30):
            shop.track("bot", "Product Viewed", at=start - i)
        shop.settle()  # evaluated: its moment noted
        shop.now = start + 400
        shop.track("bot", "Order Completed")
        shop.track("shopper", "Order Completed")
        shop.settle()
        bot, shopper = shop.profile_of("bot"), shop.profile_of("shopper")
        assert shop.members("ordered") == {shopper}  # the bot's order waits for the second
        assert redis_client.zscore(shop.keys.due, bot) == start + HOT_PAUSE_MS
        shop.advance(HOT_PAUSE_MS - 400 - 1)
        assert shop.members("ordered") == {shopper}
        shop.advance(1)
        assert shop.members("ordered") == {shopper, bot} == shop.sql_members("ordered")
        [entered] = [
            c for c in shop.changes() if c["profile"] == bot and c["audience"] == "ordered"
        ]
        assert (entered["change"], entered["cause"], int(entered["at"])) == (
            "enter", "event", start + HOT_PAUSE_MS)  # fmt: skip
        shop.now += 2 * HOT_PAUSE_MS  # a second later: evaluated at once again
        shop.track("bot", "Product Viewed")
        shop.settle()
        seen = redis_client.hget(shop.keys.of(bot), "~seen")
        assert seen is not None and int(seen) == shop.now


def test_events_put_off_are_decided_at_the_first_look_even_one_due_for_time(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """The events put off wait for the second's end, unless the profile is looked at sooner
    for time (a window ending): that look decides them too, whatever audience was due."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.worker = shop.audience_worker(hot_events=20)
        shop.define("ordered", {"performed": {"event": "Order Completed", "within": "P1D",
                                              "times": 1}})  # fmt: skip
        start = shop.now
        [bot] = recent_viewers(shop, 1, start - HOUR_MS + 500)  # leaves `recent` at start+500
        for i in range(30):
            shop.track(bot, "Product Added", at=start - 1000 - i, product_id="p1")
        shop.settle()  # evaluated at start: its moment noted
        shop.now = start + 100
        shop.track(bot, "Order Completed")
        shop.settle()
        profile = shop.profile_of(bot)
        assert shop.members("ordered") == set()  # put off
        shop.advance(400)  # start+500: due for `recent`
        assert shop.members("recent") == set()
        assert shop.members("ordered") == {profile} == shop.sql_members("ordered")
        [entered] = [c for c in shop.changes() if c["audience"] == "ordered"]
        assert (entered["cause"], int(entered["at"])) == ("event", start + 500)


def test_a_due_profile_is_leased_to_the_worker_that_took_it(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        second = shop.audience_worker(consumer="second")
        shop.track("ann", "Product Viewed", at=shop.now - 60_000)
        shop.track("ann", "Product Viewed")
        shop.settle()
        ann = shop.profile_of("ann")
        moment = int(redis_client.zscore(shop.keys.due, ann) or 0)  # its next change
        assert moment > shop.now
        assert shop.worker.claim_due(moment) == [(ann, moment)]
        assert second.claim_due(moment) == []  # leased to the first: not taken twice
        # The first died holding it: when the lease ends, it is due again, at its moment.
        assert second.claim_due(moment + LEASE_MS) == [(ann, moment + LEASE_MS)]


class Allergic(AudienceWorker):
    """Cannot evaluate one profile, as when a condition meets data it was not made for."""

    allergen = ""

    def _look(self, writes, plan, a, *rest):  # type: ignore[no-untyped-def]
        if a.profile_id == self.allergen:
            raise ValueError("a condition failed on this profile")
        return super()._look(writes, plan, a, *rest)


def test_a_profile_that_cannot_be_evaluated_is_set_aside_and_holds_back_nobody(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        viewed_twice(shop, "ann", "bad", "bob")  # one entry of the profile changes names all three
        shop.apply()
        bad = shop.profile_of("bad")
        shop.worker = shop.audience_worker(Allergic)
        shop.worker.allergen = bad  # type: ignore[attr-defined]
        shop.settle()
        others = {shop.profile_of("ann"), shop.profile_of("bob")}
        assert shop.members("twice") == others
        assert redis_client.xpending(settings.profile_changes_stream, "audiences")["pending"] == 0
        [letter] = deadletters.listed(redis_client, settings.dead_letter_stream)
        assert (letter.group, letter.payload["profile"], letter.entry_id) == ("audiences", bad, "")
        assert letter.error == "ValueError: a condition failed on this profile"
        assert redis_client.zscore(shop.keys.due, bad) == shop.now + RETRY_MS

        shop.advance(days(1))  # the schedule: the others leave on time; it fails again, alone
        assert shop.members("twice") == set()
        assert deadletters.count(redis_client, settings.dead_letter_stream) == 2
        # Failing in a row, it is looked at twice as late each time (a few letters a day).
        assert redis_client.zscore(shop.keys.due, bad) == shop.now + 2 * RETRY_MS
        assert deadletters.listed(redis_client, settings.dead_letter_stream)[0].payload[
            "failures"] == "2"  # fmt: skip
        shop.advance(2 * RETRY_MS)
        assert redis_client.zscore(shop.keys.due, bad) == shop.now + 4 * RETRY_MS
        assert [retry_after(n) // RETRY_MS for n in range(1, 8)] == [1, 2, 4, 8, 16, 24, 24]
        shop.worker.allergen = ""  # type: ignore[attr-defined]  # (fixed): it heals on its look
        shop.advance(4 * RETRY_MS)
        assert deadletters.count(redis_client, settings.dead_letter_stream) == 3
        assert not redis_client.hexists(shop.keys.of(bad), FAILURES)  # the next failure: an hour
        ann = shop.profile_of("ann")  # evaluated: its next moment is its history's, as ann's
        assert redis_client.zscore(shop.keys.due, bad) == redis_client.zscore(shop.keys.due, ann)
        changes = [(c["profile"], c["change"]) for c in shop.changes() if c["audience"] == "twice"]
        assert sorted(changes) == sorted([(p, "enter") for p in others]
                                         + [(p, "exit") for p in others])  # fmt: skip


@pytest.mark.parametrize("member", ['["only-an-id"]', '["id", "Product Viewed"]', "not json"])
def test_a_history_entry_of_another_shape_sets_its_profile_aside_not_its_batch(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse, member: str
) -> None:
    """The history's entries are read as they are stored ([id, name, properties]); one of
    another shape (written by something else) fails its profile's evaluation, which is set
    aside with the reason, and the others of its batch are decided."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        viewed_twice(shop, "ann", "bad", "bob")
        shop.apply()
        bad = shop.profile_of("bad")
        redis_client.zadd(Keyspace(settings.redis_prefix).profile(bad, "history"),
                          {member: shop.now - 5})  # fmt: skip
        shop.settle()
        assert shop.members("twice") == {shop.profile_of("ann"), shop.profile_of("bob")}
        [letter] = deadletters.listed(redis_client, settings.dead_letter_stream)
        assert (letter.group, letter.payload["profile"]) == ("audiences", bad)


def test_definitions_that_cannot_be_made_into_rules_set_nobody_aside(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """No profile can be evaluated then: each set aside would flood the dead letters and
    lose the entries; they wait instead (the worker's loop retries; health shows the lag)."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        viewed_twice(shop, "ann")
        shop.apply()
        built = Plan.of
        monkeypatch.setattr(Plan, "of", lambda *_: (_ for _ in ()).throw(ValueError("no")))
        with pytest.raises(RulesUnavailable, match="generation 1: no"):
            step(shop.worker)
        assert deadletters.count(redis_client, settings.dead_letter_stream) == 0
        assert redis_client.xpending(settings.profile_changes_stream, "audiences")["pending"] == 1
        monkeypatch.setattr(Plan, "of", built)
        assert shop.worker.recover() == 1
        assert shop.members("twice") == {shop.profile_of("ann")}


class RetireFails(AudienceWorker):
    """Cannot retire the merged profiles `failing` names ("*": any), as when their
    memberships keep changing under them."""

    failing: frozenset[str] = frozenset({"*"})

    def retire(self, merges, now):  # type: ignore[no-untyped-def]
        if any("*" in self.failing or merged in self.failing for merged, _ in merges):
            raise ValueError("memberships kept changing")
        super().retire(merges, now)


def test_a_merge_that_cannot_be_retired_is_set_aside_and_the_survivor_goes_on(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        shop.track("phone", "Product Viewed", at=shop.now - 1000)
        shop.track("laptop", "Product Viewed")
        shop.settle()
        laptop = shop.profile_of("laptop")  # its first event is the later: it is merged
        shop.worker = shop.audience_worker(RetireFails)
        shop.identify("laptop", "sam")
        shop.identify("phone", "sam")
        shop.settle()
        survivor = shop.profile_of("phone")
        assert survivor != laptop and shop.members("twice") == {survivor}  # two views now
        [letter] = deadletters.listed(redis_client, settings.dead_letter_stream)
        assert (letter.payload["profile"], letter.payload["cause"]) == (laptop, "merge")
        assert redis_client.exists(shop.keys.of(laptop))  # not retired yet
        shop.worker.failing = frozenset()  # type: ignore[attr-defined]
        shop.advance(RETRY_MS)  # its look again finds it merged away: retired
        assert not redis_client.exists(shop.keys.of(laptop))
        assert shop.members("twice") == {survivor}


def test_merges_are_retired_together_and_one_that_cannot_be_holds_back_no_other(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        shop.track("phone", "Product Viewed", at=shop.now - 2000)
        for device in ("laptop", "tablet"):
            shop.track(device, "Product Viewed", at=shop.now - 1000)
            shop.track(device, "Product Viewed")
        shop.settle()
        laptop, tablet = shop.profile_of("laptop"), shop.profile_of("tablet")
        assert shop.members("twice") == {laptop, tablet}
        shop.worker = shop.audience_worker(RetireFails)
        shop.worker.failing = frozenset({laptop})  # type: ignore[attr-defined]
        for device in ("phone", "laptop", "tablet"):
            shop.identify(device, "sam")
        shop.settle()
        survivor = shop.profile_of("phone")
        assert survivor not in (laptop, tablet)  # its first event is the earliest
        [letter] = deadletters.listed(redis_client, settings.dead_letter_stream)
        assert (letter.payload["profile"], letter.payload["cause"]) == (laptop, "merge")
        assert redis_client.exists(shop.keys.of(laptop))  # not retired yet
        assert not redis_client.exists(shop.keys.of(tablet))  # retired
        exits = {c["profile"] for c in shop.changes() if c["change"] == "exit"}
        assert exits == {tablet}
        assert shop.members("twice") == {laptop, survivor}
        shop.worker.failing = frozenset()  # type: ignore[attr-defined]
        devices = ("watch", "tv")
        for device in devices:
            shop.track(device, "Product Viewed", at=shop.now - 1000)
            shop.track(device, "Product Viewed")
        shop.settle()
        merged = {shop.profile_of(device) for device in devices}
        for device in devices:
            shop.identify(device, "sam")
        shop.settle()  # both retired by one call
        assert not any(redis_client.exists(shop.keys.of(pid)) for pid in merged)
        exits = {c["profile"] for c in shop.changes() if c["change"] == "exit"}
        assert exits == {tablet, *merged}


def test_a_changed_audience_says_it_is_computing_until_its_profiles_are_decided(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """A marketer who creates an audience on a big shop sees size 0 first: the answer says
    its members are being decided, how many profiles wait, until the worker is done."""
    from rules.api import AudiencesApi

    with Shop(settings, redis_client, warehouse) as shop:
        shop.now = int(time.time() * 1000)  # the API decides at the wall clock's moment
        viewed_twice(shop, "a", "b", "c")
        shop.track("d", "Product Viewed")
        shop.settle()
        api = AudiencesApi(shop.audiences, shop.store, redis_client, warehouse, shop.sources)
        definition = Definition.model_validate({"id": "twice", "name": "T", "root": TWICE})
        created = api.save(definition, create=True)
        assert created["size"] == 0
        assert created["computing"]["candidates"] == 3  # a, b and c, by the SQL
        assert created["computing"]["waiting"] == 3
        shop.now = int(time.time() * 1000) + 1000  # the backfill asks 1,000 a second
        shop.advance(0)  # the worker runs what is due
        shown = api.out(shop.audiences.get("twice"))
        assert shown["size"] == 3 and shown["computing"] is None
        assert not redis_client.hexists(shop.keys.backfills, "twice")

        # Changed: its members (and the new candidates) are decided again.
        changed = definition.model_copy(update={"root": Definition.model_validate(
            {"id": "x", "name": "x", "root": {"performed": {
                "event": "Product Viewed", "within": "P1D", "times": 1}}}).root})  # fmt: skip
        assert api.save(changed, create=False)["computing"]["candidates"] == 4
        shop.now = int(time.time() * 1000) + 1000
        shop.advance(0)
        shown = api.out(shop.audiences.get("twice"))
        assert shown["size"] == 4 and shown["computing"] is None


def test_a_new_audience_takes_in_who_enters_it_later_with_no_event(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """Its backfill decides those the SQL holds for now and those who may enter as time
    passes: a customer whose last order was 100 days ago enters "ordered, not within 120
    days" 20 days later, with no event (its next look was due only when the order is
    forgotten, 300 days on)."""
    from rules.api import AudiencesApi

    with Shop(settings, redis_client, warehouse) as shop:
        shop.now = int(time.time() * 1000)  # the API decides at the wall clock's moment
        ordered = shop.now - days(100)
        shop.track("ann", "Order Completed", at=ordered, revenue=10)
        shop.track("bob", "Product Viewed", at=ordered)
        shop.settle()
        ann = shop.profile_of("ann")
        api = AudiencesApi(shop.audiences, shop.store, redis_client, warehouse, shop.sources)
        lapsed = {"last_performed": {"event": "Order Completed", "op": ">=", "ago": "P120D"}}
        definition = Definition.model_validate({"id": "lapsed-120", "name": "L", "root": lapsed})
        assert api.save(definition, create=True)["computing"]["candidates"] == 1  # not bob
        shop.now = int(time.time() * 1000) + 1000
        shop.advance(0)
        assert shop.members("lapsed-120") == set() == shop.sql_members("lapsed-120")
        shop.advance(ordered + days(120) - 1 - shop.now)  # 20 days on, less a millisecond
        assert shop.members("lapsed-120") == set()
        shop.advance(1)
        assert shop.members("lapsed-120") == {ann} == shop.sql_members("lapsed-120")
        [entered] = [c for c in shop.changes() if c["audience"] == "lapsed-120"]
        assert (entered["change"], entered["cause"], int(entered["at"])) == (
            "enter", "time", ordered + days(120))  # fmt: skip


def test_who_a_new_audience_takes_in_at_once_enters_for_the_definition(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """The backfill's look at a profile evaluated before: an enter into the new audience
    says `definition` (a campaign may tell it from one an event or time made), one into an
    audience whose moment came with that look says `time`; a profile never evaluated
    before, looked at first by a backfill, enters for its events."""
    from rules.api import AudiencesApi, schedule

    with Shop(settings, redis_client, warehouse) as shop:
        shop.now = int(time.time() * 1000) - 10_000  # (the API decides at the wall clock's)
        shop.define("recent", {"performed": {"event": "Product Viewed", "within": "PT1H",
                                             "times": 1}})  # fmt: skip
        shop.track("ann", "Product Viewed", at=shop.now - 2 * HOUR_MS)
        shop.track("ann", "Product Viewed", at=shop.now - HOUR_MS + 500)  # out of "recent"
        # 500 ms on, before the save
        shop.settle()
        ann = shop.profile_of("ann")
        assert shop.members("recent") == {ann}
        api = AudiencesApi(shop.audiences, shop.store, redis_client, warehouse, shop.sources)
        definition = Definition.model_validate({"id": "twice", "name": "T", "root": TWICE})
        api.save(definition, create=True)
        shop.now = int(time.time() * 1000) + 1000
        shop.advance(0)  # one look: "recent" due (its hour ended), the backfill's asked
        assert shop.members("twice") == {ann} and shop.members("recent") == set()
        causes = {(c["audience"], c["change"]): c["cause"] for c in shop.changes()
                  if c["audience"] in ("recent", "twice")}  # fmt: skip
        assert causes == {("recent", "enter"): "event", ("recent", "exit"): "time",
                          ("twice", "enter"): "definition"}  # fmt: skip
        viewed_twice(shop, "bob")
        shop.apply()  # its profile made, not evaluated
        bob = shop.profile_of("bob")
        schedule(redis_client, shop.keys, [bob], shop.now)
        shop.advance(0)
        assert shop.members("twice") == {ann, bob}
        [entered] = [c for c in shop.changes() if c["profile"] == bob and c["audience"] == "twice"]
        assert entered["cause"] == "event"


class Matching(AudienceWorker):
    """Notes the audiences matched for each profile it decides."""

    matched: list[set[str]]

    def _decide(self, plan, asked, profiles, watching):  # type: ignore[no-untyped-def]
        outcomes, writes = super()._decide(plan, asked, profiles, watching)
        self.matched += [o.matched for o in outcomes if o is not None]
        return outcomes, writes


def test_after_a_definitions_change_a_look_matches_what_changed_since_the_profiles_last(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """Not every audience: those its event reads and those whose definitions changed since
    the profile's last look (a new one it already belongs to is entered then, before any
    backfill); one never evaluated has every audience matched."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("viewers", {"performed": {"event": "Product Viewed", "within": "P1D",
                                              "times": 1}})  # fmt: skip
        shop.define("buyers", {"performed": {"event": "Order Completed", "within": "P30D",
                                             "times": 1}})  # fmt: skip
        shop.track("ann", "Product Wishlisted", at=shop.now - 1000)
        shop.worker = shop.audience_worker(Matching)
        shop.worker.matched = []
        shop.settle()
        assert {"viewers", "buyers"} <= shop.worker.matched[-1]  # never evaluated: all
        ann = shop.profile_of("ann")
        shop.define("wishers", {"performed": {"event": "Product Wishlisted", "within": "P1D",
                                              "times": 1}})  # fmt: skip
        shop.worker.matched = []
        shop.track("ann", "Product Viewed")
        shop.settle()
        [matched] = shop.worker.matched
        assert {"viewers", "wishers"} <= matched and "buyers" not in matched
        assert shop.members("wishers") == {ann} == shop.members("viewers")
        shop.worker.matched = []
        shop.track("ann", "Product Viewed")
        shop.settle()
        [matched] = shop.worker.matched
        assert "viewers" in matched and "wishers" not in matched  # changed before its last


def test_audiences_saved_by_an_older_version_are_taken_as_changed_now_at_start(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """No last change kept (an older version saved them): the start gives each, the shipped
    ones too, the generation of then (a profile evaluated under it had all matched); until
    then a worker takes them as changed since any look."""
    from rules.api import AudiencesApi

    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("viewers", {"performed": {"event": "Product Viewed", "within": "P1D",
                                              "times": 1}})  # fmt: skip
        redis_client.delete(shop.keys.changed)
        generation = int(redis_client.get(shop.keys.generation) or 0)
        plan = Plan.of(generation, [d for d in shop.audiences.shipped.values()], {},
                       shop.audiences.changed())  # fmt: skip
        assert plan.changed_since(generation) == frozenset(shop.audiences.shipped)
        plan.matcher.close()
        api = AudiencesApi(shop.audiences, shop.store, redis_client, warehouse, shop.sources)
        adopted = api.adopt_shipped()  # none recorded yet: each adopted, a generation on
        assert shop.audiences.changed() == {
            **dict.fromkeys(shop.audiences.shipped, generation + 1),
            "viewers": generation + 1,
        }
        assert set(adopted) == set(shop.audiences.shipped)
        shop.define("buyers", {"performed": {"event": "Order Completed", "within": "P30D",
                                             "times": 1}})  # fmt: skip
        assert shop.audiences.changed()["buyers"] == generation + 2
        shop.audiences.delete("buyers")
        assert "buyers" not in shop.audiences.changed()


def test_a_big_backfill_holds_back_no_time_based_transition(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """A backfill asks for its profiles at a pace (`CDP_BACKFILL_RATE`, here 1 a second): a
    cart abandoned meanwhile enters `abandoned-cart` at its moment, not after the backfill,
    and the audience says it is computing until its last profile is decided."""
    from rules.api import AudiencesApi

    with Shop(settings, redis_client, warehouse) as shop:
        shop.now = int(time.time() * 1000)  # the API decides at the wall clock's moment
        viewed_twice(shop, *(f"v{i}" for i in range(5)))
        shop.track("cart", "Product Added", at=shop.now - HOUR_MS + 2_500, product_id="p1")
        shop.settle()
        viewers = {shop.profile_of(f"v{i}") for i in range(5)}
        api = AudiencesApi(shop.audiences, shop.store, redis_client, warehouse, shop.sources,
                           backfill_rate=1)  # fmt: skip
        definition = Definition.model_validate({"id": "twice", "name": "T", "root": TWICE})
        assert api.save(definition, create=True)["computing"]["candidates"] == 5
        moments = sorted(int(redis_client.zscore(shop.keys.due, v) or 0) for v in viewers)
        start = moments[0]
        assert moments == [start + 1000 * i for i in range(5)]

        shop.now = start + 2_600  # three of the backfill's and the abandoned cart are due
        shop.advance(0)
        assert len(shop.members("twice")) == 3
        [entered] = [c for c in shop.changes() if c["audience"] == "abandoned-cart"]
        assert int(entered["at"]) < start + 2_600 and entered["cause"] == "time"
        assert api.out(shop.audiences.get("twice"))["computing"]["waiting"] >= 2
        shop.advance(1_400)
        shown = api.out(shop.audiences.get("twice"))
        assert shown["size"] == 5 and shown["computing"] is None


def test_a_predefined_audience_a_setting_changed_is_decided_anew_at_start(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """`CDP_VIP_REVENUE` raised from 100 to 200 and the server started again: `vip` holds
    only who reaches 200 at once, with no event (the members before were kept otherwise, and
    the audit disagreed), and a second server starting finds nothing left to do."""
    from rules.api import AudiencesApi

    with Shop(settings.model_copy(update={"vip_revenue": 100}), redis_client, warehouse) as shop:
        shop.now = int(time.time() * 1000)  # the API decides at the wall clock's moment
        shop.track("ann", "Order Completed", revenue=150)
        shop.track("bob", "Order Completed", revenue=250)
        shop.settle()
        ann, bob = shop.profile_of("ann"), shop.profile_of("bob")
        api = AudiencesApi(shop.audiences, shop.store, redis_client, warehouse, shop.sources)
        assert set(api.adopt_shipped()) == set(shop.audiences.shipped)  # none recorded yet
        assert api.adopt_shipped() == []
        shop.now = int(time.time() * 1000) + 1000
        shop.advance(0)
        assert shop.members("vip") == {ann, bob}

        shop.audiences = Audiences(redis_client, settings.redis_prefix, settings.history_days,
                                   vip_revenue=200)  # fmt: skip
        shop.worker = shop.audience_worker()
        restarted = AudiencesApi(shop.audiences, shop.store, redis_client, warehouse,
                                 shop.sources)  # fmt: skip
        assert restarted.adopt_shipped() == ["vip"]
        assert restarted.adopt_shipped() == []
        shop.now = int(time.time() * 1000) + 1000
        shop.advance(0)
        assert shop.members("vip") == {bob} == shop.sql_members("vip")
        [left] = [c for c in shop.changes() if c["audience"] == "vip" and c["change"] == "exit"]
        assert left["profile"] == ann


def test_a_predefined_audience_the_shop_changed_stays_the_shops_whatever_a_setting_says(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    from rules.api import AudiencesApi

    with Shop(settings.model_copy(update={"vip_revenue": 100}), redis_client, warehouse) as shop:
        api = AudiencesApi(shop.audiences, shop.store, redis_client, warehouse, shop.sources)
        assert "vip" in api.adopt_shipped()
        own = shop.audiences.shipped["vip"].model_copy(update={"name": "Our VIPs"})
        api.save(own, create=False)
        restarted = Audiences(redis_client, settings.redis_prefix, settings.history_days,
                              vip_revenue=200)  # fmt: skip
        assert restarted.adopt_shipped() == []
        assert restarted.get("vip").definition == own


@pytest.mark.parametrize("changed", [None, frozenset({"Product Viewed"})])
def test_a_look_that_changes_nothing_writes_nothing(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse,
    changed: frozenset[str] | None,
) -> None:  # fmt: skip
    """Looked at again at the same moment (every audience matched, or those an event names),
    profiles keep their memberships and next moments: their hashes are not written (their
    versions stay)."""
    with Shop(settings, redis_client, warehouse) as shop:
        shop.define("twice", TWICE)
        shop.define("lately", {"performed": {"event": "Product Viewed", "within": "PT2H",
                                             "times": 1}})  # fmt: skip
        viewed_twice(shop, "ann", "bob")
        shop.track("cid", "Product Viewed")
        shop.settle()
        ids = [shop.profile_of(who) for who in ("ann", "bob", "cid")]

        def versions() -> list[bytes | None]:
            return [redis_client.hget(shop.keys.of(pid), VERSION) for pid in ids]  # type: ignore[misc]

        before = versions()
        assert all(before)
        shop.worker.evaluate_batches([Asked(pid, shop.now, "event", changed) for pid in ids])
        assert versions() == before
        shop.now += 60_000  # (next moments are moments: a minute on, none moved)
        shop.worker.evaluate_batches([Asked(pid, shop.now, "event", changed) for pid in ids])
        assert versions() == before


def test_an_audience_worker_process_collects_garbage_seldom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`cdp audience-worker` sets the collector's thresholds before it runs (a batch's objects
    would have the older generations collected over and over: `GC_THRESHOLDS`)."""
    from cdp import cli

    seen: list[tuple[int, int, int]] = []
    monkeypatch.setattr(cli, "_run_worker", lambda *_: seen.append(gc.get_threshold()))
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        cli.audience_worker(log_level="warning", parent=0, index=0, metrics_port=0,
                            metrics_host="127.0.0.1")  # fmt: skip
    finally:
        gc.set_threshold(*before)
    assert seen == [GC_THRESHOLDS]
