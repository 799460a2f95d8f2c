"""Audience benchmark (not a test). Run: `./benchmarks/run.sh audiences`.

1. Evaluations/s of one audience worker process with 50 audiences defined, over the
   simulated shop's profiles: every audience matched, those reading `Product Viewed`, and
   the shop's own traffic (the profile changes its events made); against the honest floor,
   the batch read every evaluation needs (memberships, next moment, history, traits,
   consent: one script call), measured in the same run; and the time split between reading
   conditions and the engine.
2. Latency from the HTTP 200 of an event to its `audience_changes` record, at 1,000 events/s
   (100 requests/s of 10 events) from returning visitors, with the 50 audiences and two
   measured ones defined, on `cdp serve` with its own worker processes: p50/p99, split at
   the profile worker's announcement of the change. (`--fsync everysec` runs it with Valkey
   fsyncing once a second instead of at every write: what the fsyncs cost; not the product.)
3. Lag of time-based transitions behind their due moment: each visitor is in "viewed in the
   last 5 s" until 5 s after their last view; the exit's record time minus its moment.
4. Memory: Redis bytes per profile for 100,000 profiles with their history, and the part the
   audiences add (memberships, members, schedule, watchers); the worker's resident memory
   across new generations of the definitions; what one evaluation of a visitor who sends
   without end costs (its history keeps the newest `CDP_HISTORY_EVENTS`).
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import API_KEY, WRITE_KEY, serve  # noqa: E402

from cdp.catalog import Catalog  # noqa: E402
from cdp.cli import quiet_collector  # noqa: E402
from cdp.demo.shop import simulate_shop  # noqa: E402
from cdp.events import StoredEvent  # noqa: E402
from cdp.profiles.store import ProfileStore  # noqa: E402
from cdp.redis_server import EmbeddedRedis  # noqa: E402
from cdp.settings import Settings  # noqa: E402
from cdp.storage import connect_redis, text  # noqa: E402
from ingestion.normalize import to_row  # noqa: E402
from ingestion.segment import SegmentEvent  # noqa: E402
from rules.audiences import Audiences  # noqa: E402
from rules.batch import Batch  # noqa: E402
from rules.conditions import Reading, read  # noqa: E402
from rules.definition import Definition  # noqa: E402
from rules.engine import engine_json  # noqa: E402
from rules.evaluation import Plan, subject_from, subject_of  # noqa: E402
from rules.worker import (  # noqa: E402
    EVALUATION_BATCH,
    HOT_PAUSE_MS,
    Asked,
    AudienceWorker,
    batches_of,
    tune_collector,
)

CATEGORIES = ("Sneakers", "Jackets", "Bags", "Accessories")
EVENTS = ("Product Viewed", "Product Added", "Order Completed", "Product List Viewed")


def fifty_more() -> list[Definition]:
    """42 audiences besides the 8 predefined: the shapes marketers write, varied."""
    roots: list[dict[str, Any]] = []
    for i, category in enumerate(CATEGORIES):
        roots.append({"performed": {"event": "Product Viewed", "within": f"P{i + 1}D",
                                    "times": 2, "where": [{"property": "category",
                                                           "value": category}]}})  # fmt: skip
        roots.append({"and": [
            {"performed": {"event": "Product Viewed", "within": "P7D", "times": 1,
                           "where": [{"property": "category", "value": category}]}},
            {"not": {"performed": {"event": "Order Completed", "within": "P7D", "times": 1}}},
        ]})  # fmt: skip
    for days in (1, 2, 3, 5, 14, 21, 30):
        for event in EVENTS:
            roots.append({"performed": {"event": event, "within": f"P{days}D", "times": 2}})
    for value in (50, 100, 200, 400):
        roots.append({"aggregate": {"event": "Order Completed", "property": "revenue",
                                    "within": "P30D", "op": ">=", "value": value}})  # fmt: skip
    for wait in ("PT30M", "PT2H", "PT6H"):
        roots.append({"not_followed_by": {"event": "Product Added",
                                          "then": {"event": "Order Completed"},
                                          "wait": wait, "within": "P3D"}})  # fmt: skip
    roots.append({"and": [{"member_of": {"audience": "vip"}},
                          {"last_performed": {"event": "Order Completed", "op": ">=",
                                              "ago": "P14D"}}]})  # fmt: skip
    roots.append({"or": [{"cart": {"op": ">=", "units": 3}},
                         {"bucket": {"salt": "holdout", "below": 10}}]})  # fmt: skip
    roots.append({"performed": {"event": "Product Viewed", "within": "P7D", "times": 4,
                                "same": "category"}})  # fmt: skip
    return [Definition.model_validate({"id": f"custom-{i:02d}", "name": f"Custom {i}", "root": r})
            for i, r in enumerate(roots[:42])]  # fmt: skip


def shop_events(visitors: int, seed: int = 42) -> list[StoredEvent]:
    shop = simulate_shop(visitors, seed=seed)
    now = datetime.now(UTC)
    events = []
    for visitor in shop:
        for raw in visitor.events:
            row = to_row(SegmentEvent.model_validate(raw), received_at=now, source_id="s",
                         ip="127.0.0.1")  # fmt: skip
            c = row.columns
            events.append(StoredEvent.of(c, row.properties, row.traits, row.context))
    return events


def evaluations(visitors: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cdp-bench-audiences-"))
    valkey = EmbeddedRedis(data_dir)
    valkey.start()
    client = connect_redis(valkey.url)
    quiet_collector()  # as a worker process runs
    tune_collector()  # as `cdp audience-worker` runs
    try:
        settings = Settings(redis_prefix="bench", data_dir=data_dir)
        store = ProfileStore.from_settings(client, settings)
        events = shop_events(visitors)
        for start in range(0, len(events), 500):
            store.apply_events(events[start : start + 500])
        audiences = Audiences(client, "bench", settings.history_days, settings.vip_revenue)
        for definition in fifty_more():
            audiences.save(definition, create=True)
        worker = AudienceWorker(client, settings.profile_changes_stream, store, audiences,
                                Catalog(client, "bench", ""), settings.records_stream,
                                settings.history_days)  # fmt: skip
        plan = worker.refresh()
        profiles = sorted(text(p) for p in client.smembers(f"{settings.redis_prefix}:profiles"))
        now = int(time.time() * 1000)
        print(f"{len(events):,} events, {len(profiles):,} profiles, {len(plan.definitions)} "
              f"audiences in {plan.matcher.shard_count()} engine shards")  # fmt: skip

        def floor() -> None:  # the reads an evaluation cannot do without, a batch a round trip
            for asked in batches_of([Asked(pid, now, "event", None) for pid in profiles]):
                for a, got in zip(asked, worker.read(asked).profiles, strict=True):
                    assert got.inputs is not None
                    subject_from(a.profile_id, got.inputs, got.members, frozenset())

        def evaluate() -> None:  # in the worker's batches, every audience matched
            worker.evaluate_batches([Asked(pid, now, "event", None) for pid in profiles])

        def after_a_view() -> None:  # what an event of one name asks: the audiences reading it
            viewed = frozenset({"Product Viewed"})
            worker.evaluate_batches([Asked(pid, now, "event", viewed) for pid in profiles])

        # The shop's traffic as the worker sees it: the profile changes its events made (each
        # entry a profile-script call of 500 events: the profiles it changed, and what).
        changes: list[Any] = client.xrange(settings.profile_changes_stream)  # type: ignore[assignment]

        def shop_traffic() -> int:
            return sum(worker.handle([entry], recovered=False) for entry in changes)

        evaluate()  # the first pass enters everyone: transitions written
        timings: dict[str, list[float]] = {}
        for _ in range(3):  # alternating rounds: the VM's noise hits all alike
            for name, run in (
                ("floor", floor),
                ("evaluate", evaluate),
                ("after a view", after_a_view),
                ("shop traffic", shop_traffic),
            ):
                plan.matcher.forget()  # no pass takes the engine's answers of the one before
                started = time.perf_counter()
                evaluated = run() or len(profiles)
                rate = evaluated / (time.perf_counter() - started)
                timings.setdefault(name, []).append(rate)
        best = {name: max(rates) for name, rates in timings.items()}
        reading = sum(1 for inputs in plan.inputs.values() if "Product Viewed" in inputs)
        print(f"the shop's traffic ({len(changes)} profile changes, {shop_traffic():,} "
              f"evaluations): {best['shop traffic']:,.0f} evaluations/s")  # fmt: skip
        print(f"after a `Product Viewed` ({reading} audiences read it): "
              f"{best['after a view']:,.0f} evaluations/s")  # fmt: skip
        print(f"evaluations/s per process: {best['evaluate']:,.0f} "
              f"(floor, reads only: {best['floor']:,.0f}/s; ratio "
              f"{best['evaluate'] / best['floor']:.2f})")  # fmt: skip

        subjects = [subject_of(store, pid, set(), now, settings.history_days) for pid in profiles]
        started = time.perf_counter()
        readings = [{c.audience: read(c.root, s, now) for layer in plan.layers for c in layer}
                    for s in subjects if s]  # fmt: skip
        reading_s = (time.perf_counter() - started) / len(subjects)
        snapshots = [{c.audience: c.snapshot(r[c.audience], False)
                      for layer in plan.layers for c in layer} for r in readings]  # fmt: skip
        started = time.perf_counter()
        for snapshot in snapshots:
            plan.matcher.match(snapshot)
        engine_s = (time.perf_counter() - started) / len(snapshots)
        fresh = [subject_of(store, pid, set(), now, settings.history_days) for pid in profiles]
        started = time.perf_counter()
        for start in range(0, len(fresh), EVALUATION_BATCH):
            part = [s for s in fresh[start : start + EVALUATION_BATCH] if s]
            batch = Batch(part, [now] * len(part), plan.windows)
            rows = list(range(len(part)))
            for layer in plan.layers:
                for c in layer:
                    for leaf in c.prepared:
                        batch.column(leaf, rows)
        batch_s = (time.perf_counter() - started) / len(fresh)
        print(f"per profile: conditions read {reading_s * 1e6:,.0f} µs one profile at a time "
              f"(the reasons' and answers' path), {batch_s * 1e6:,.0f} µs a batch of "
              f"{EVALUATION_BATCH} at a time (the worker's); the engine "
              f"{engine_s * 1e6:,.0f} µs (50 audiences, all shards)")  # fmt: skip
        engine_floor = engine_calls(plan, readings)
        plan.matcher.forget()
        evaluate()
        asked = plan.matcher.answers_kept / len(profiles)
        print(f"the engine's own calls, each shard's fact asserted (serialized beforehand): "
              f"{engine_floor * 1e6:,.0f} µs a profile; the worker asks it {asked:.2f} facts a "
              f"profile in a full pass (of {plan.matcher.shard_count()}: the others' answers "
              f"kept)")  # fmt: skip
        memory(client, settings.redis_prefix, len(profiles), worker)
        generations(worker, 200)
        endless_sender(store, worker, profiles[0], settings.history_events + 2_000)
    finally:
        client.close()
        valkey.stop()


def engine_calls(plan: Plan, readings: list[dict[str, list[Reading]]]) -> float:
    """Seconds a profile that durable_rules' native calls take alone, for every audience: the
    facts made and serialized beforehand, each member flag as the tree decides (the steady
    state: no transition fires, so nothing is retracted), the best of 3 rounds."""
    texts = []
    for by_audience in readings:
        facts: dict[int, dict[str, float]] = {}
        for layer in plan.layers:
            for c in layer:
                r = by_audience[c.audience]
                facts.setdefault(plan.matcher.shard_of[c.audience], {}).update(
                    c.snapshot(r, c.decide(r))
                )
        texts.append([(shard, engine_json(fact)) for shard, fact in facts.items()])
    best = math.inf
    for _ in range(3):
        started = time.perf_counter()
        for shards in texts:
            for shard, fact in shards:
                plan.matcher.match_text(shard, fact)
        best = min(best, (time.perf_counter() - started) / len(texts))
    return best


def memory(client: redis.Redis, prefix: str, profiles: int, worker: AudienceWorker) -> None:
    """Bytes per profile in Redis: the profiles' and the audiences' keys, and the audiences'
    own among them. The streams are counted apart: they are in transit (consumed and
    trimmed by their workers, `audience_changes` bounded), and here, with no writer
    running, they hold everything this bench made."""
    total = audience_bytes = stream_bytes = 0
    for key in client.scan_iter(match=f"{prefix}:*", count=5000):
        size = int(client.memory_usage(key, samples=0) or 0)  # exact: sampling misjudges a hash
        name = text(key)
        if ":stream:" in name:
            stream_bytes += size
            continue
        total += size
        if ":audience" in name:
            audience_bytes += size
    print(f"redis memory: {total / profiles:,.0f} bytes per profile in all "
          f"({total / profiles * 100_000 / 2**20:,.0f} MiB per 100,000 profiles), of which "
          f"audiences {audience_bytes / profiles:,.0f} bytes; the streams besides, unconsumed "
          f"here: {stream_bytes / profiles:,.0f} bytes per profile")  # fmt: skip


def endless_sender(store: ProfileStore, worker: AudienceWorker, shopper: str, sent: int) -> None:
    """A visitor that sends without end (a bot on the public write key): what one evaluation
    of its profile costs, against a shop's profile; its history keeps the newest events."""
    now = datetime.now(UTC)
    events = []
    for i in range(sent):
        raw = {"type": "track", "event": "Product Viewed", "anonymousId": "endless",
               "timestamp": (now - timedelta(seconds=60 * i)).isoformat(),
               "properties": {"product_id": f"sku-{i % 100}", "category": "Bags"}}  # fmt: skip
        row = to_row(SegmentEvent.model_validate(raw), received_at=now, source_id="s",
                     ip="127.0.0.1")  # fmt: skip
        events.append(StoredEvent.of(row.columns, row.properties, row.traits, row.context))
    for start in range(0, len(events), 500):
        store.apply_events(events[start : start + 500])
    endless = store.find("a", "endless")
    assert endless is not None
    at = int(time.time() * 1000)
    viewed = frozenset({"Product Viewed"})
    cost = {}
    for name, pid in (("endless", endless), ("shop", shopper)):
        started = time.perf_counter()
        for i in range(5):  # a second apart: each one evaluated
            worker.evaluate_all([Asked(pid, at + i * HOT_PAUSE_MS, "event", viewed)])
        cost[name] = (time.perf_counter() - started) / 5 * 1000
    inputs = store.audience_inputs(endless, 0)
    kept = len(inputs.history) if inputs else 0
    print(
        f"a visitor who sent {sent:,} events (history keeps {kept:,}): "
        f"{cost['endless']:.1f} ms an evaluation (a shop's visitor: {cost['shop']:.1f} ms)"
    )
    # It goes on sending, a profile change every 10 ms for 2 s: evaluated at most once a
    # second, the others put off (each a read of its memberships, not of its history).
    start, changes = at + 10 * HOT_PAUSE_MS, 200
    started = time.perf_counter()
    for i in range(changes):
        worker.evaluate_all([Asked(endless, start + i * 10, "event", viewed)])
    spent = (time.perf_counter() - started) / 2 * 1000
    print(f"  sending on, a profile change every 10 ms: {spent:.0f} ms of the worker a second "
          f"(each evaluated: {cost['endless'] * changes / 2:,.0f} ms a second)")  # fmt: skip


def generations(worker: AudienceWorker, count: int) -> None:
    """The worker's resident memory across new generations of the definitions (each one's
    rules built, the one before deleted from the engine)."""

    def resident_mib() -> float:
        status = Path("/proc/self/status").read_text()
        return int(status.split("VmRSS:")[1].split()[0]) / 1024

    start = worker.refresh().generation + 1
    for generation in range(start, start + 50):  # the allocator settles first
        worker.plan_of(str(generation).encode(), None)
    before = resident_mib()
    for generation in range(start + 50, start + 50 + count):
        worker.plan_of(str(generation).encode(), None)
    grown = resident_mib() - before
    print(f"rules of {count} more generations of definitions: {grown:+,.1f} MiB resident "
          f"({grown / count * 1024:+,.0f} KiB a generation)")  # fmt: skip


def latency(
    rate: int, seconds: int, port: int, visitors: int, workers: int = 1, fsync: str = "always"
) -> None:
    """Returning visitors, with the 50 audiences defined and two more measured: each visitor
    has viewed a product once before; then, starting one after another over the first half
    of the run, each views one a second (`staggered`: `rate` views/s in all); the third
    view makes them enter "viewed 3 times" (measured from its HTTP 200: views measured all
    through the run), and 5 s after their last they leave "viewed in the last 5 s" (a
    time-based exit, measured behind its moment, most of them while views still come).
    Every view is read by 20 of the 52 audiences. `fsync`: Valkey's
    appendfsync (the product's is `always`; `everysec` shows what its fsyncs cost)."""
    process, url, data_dir = serve(
        port, CDP_AUDIENCE_WORKERS=str(workers), CDP_AUDIENCE_CHANGES_KEPT="10000000"
    )  # all read below
    client = redis.Redis(unix_socket_path=str(data_dir / "valkey" / "valkey.sock"))
    client.config_set("appendfsync", fsync)
    admin = {"Authorization": f"Bearer {API_KEY}"}
    try:
        measured = [
            ("viewed-3x", {"performed": {"event": "Product Viewed", "within": "P1D", "times": 3}}),
            ("recent", {"last_performed": {"event": "Product Viewed", "op": "<", "ago": "PT5S"}}),
        ]
        bodies = [d.model_dump(mode="json", by_alias=True, exclude_defaults=True)
                  for d in fifty_more()]  # fmt: skip
        bodies += [{"id": audience, "name": audience, "root": root} for audience, root in measured]
        for body in bodies:
            httpx.post(f"{url}/api/v1/audiences", headers=admin, json=body).raise_for_status()
        time.sleep(2)  # the worker takes the new generation
        answered: dict[tuple[int, int], float] = {}  # (visitor, nth event) -> HTTP 200 time

        async def post(http: httpx.AsyncClient, batch: list[tuple[int, int]]) -> None:
            events = [{"type": "track", "event": "Product Viewed", "anonymousId": f"v{v}",
                       "properties": {"n": k, "product_id": f"sku-{(v + k) % 100}",
                                      "category": CATEGORIES[(v + k) % len(CATEGORIES)]}}
                      for v, k in batch]  # fmt: skip
            response = await http.post("/v1/batch", json={"batch": events})
            at = time.time() * 1000
            if response.status_code == 200:
                answered.update(dict.fromkeys(batch, at))

        async def send(order: list[tuple[int, int]]) -> None:
            per_request, total = 10, len(order)
            async with httpx.AsyncClient(base_url=url, auth=(WRITE_KEY, ""), timeout=30) as http:
                started = time.perf_counter()
                tasks = []
                for r, first in enumerate(range(0, total, per_request)):
                    tasks.append(
                        asyncio.create_task(post(http, order[first : first + per_request]))
                    )
                    due = started + (r + 1) * per_request / rate
                    await asyncio.sleep(max(0.0, due - time.perf_counter()))
                await asyncio.gather(*tasks)

        # Returning visitors: each has been here once (their first view, evaluated in full
        # against every audience, is not measured), then the measured traffic.
        asyncio.run(send([(v, 0) for v in range(visitors)]))
        settle(client)

        # Profile changes as the profile worker announces them (read as they come: consumed
        # entries are trimmed): profile -> when.
        announced: dict[bytes, list[int]] = {}
        following = threading.Event()

        def follow() -> None:
            last = b"$"
            while not following.is_set():
                found: Any = client.xread({"cdp:stream:profile_changes": last}, block=100)
                for _, entries in found or []:
                    for entry_id, fields in entries:
                        last = entry_id
                        at = int(entry_id.split(b"-")[0])
                        for pid in orjson.loads(fields.get(b"p", b"[]")):
                            announced.setdefault(pid.encode(), []).append(at)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        cpu_before, own_before = cpu_by_process(process.pid), time.process_time()
        asyncio.run(send(staggered(visitors, rate, seconds)))
        time.sleep(10)  # the last enters are recorded; everyone has left `recent`
        cpu_after = cpu_by_process(process.pid)
        cpu = {name: cpu_after[name] - cpu_before.get(name, 0) for name in sorted(cpu_after)}
        cpu["this client"] = time.process_time() - own_before
        following.set()
        follower.join()
        pids = client.mget([f"cdp:identity:a:v{v}" for v in range(visitors)])
        visitor_of = {pid: v for v, pid in enumerate(pids) if pid}
        enter_latency: list[float] = []
        exit_lag: list[float] = []
        profile_part: list[float] = []
        audience_part: list[float] = []
        recorded_changes: Any = client.xrange("cdp:stream:audience_changes")
        for entry_id, fields in recorded_changes:
            recorded = int(entry_id.split(b"-")[0])
            audience, change = fields[b"audience"], fields[b"change"]
            if audience == b"viewed-3x" and change == b"enter":
                third = answered.get((visitor_of.get(fields[b"profile"], -1), 2))
                if third is not None:
                    enter_latency.append(recorded - third)
                    change_at = min(
                        announced.get(fields[b"profile"], []),
                        key=lambda at: abs(at - third),
                        default=None,
                    )  # the view's
                    if change_at is not None:
                        profile_part.append(change_at - third)
                        audience_part.append(recorded - change_at)
            if audience == b"recent" and change == b"exit" and fields[b"cause"] == b"time":
                exit_lag.append(recorded - int(fields[b"at"]))
        print(f"sent {len(answered):,} events at {rate}/s from {visitors:,} returning visitors, "
              f"{workers} audience worker process(es), Valkey appendfsync {fsync}")  # fmt: skip
        report("HTTP 200 of the 3rd event -> its audience_changes enter", enter_latency)
        report("  of which HTTP 200 -> profile change announced", profile_part)
        report("  and profile change -> audience_changes enter", audience_part)
        report("time-based exit behind its moment", exit_lag)
        print(f"CPU seconds over those {seconds} s and 10 s after (2 cores): "
              + ", ".join(f"{name} {used:.1f}" for name, used in cpu.items()))  # fmt: skip
    finally:
        process.terminate()
        process.wait(timeout=60)


def cpu_by_process(root: int) -> dict[str, float]:
    """CPU seconds so far of `cdp serve` (pid `root`) and of its child processes (Valkey,
    the workers), by name."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # from the state on
            command = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.parent.name) != root and int(fields[1]) != root:
            continue
        name = (
            "valkey"
            if "valkey" in command
            else command.split(" -m cdp ")[-1].split()[0]
            if " -m cdp " in command
            else "other"
        )
        found[name] = found.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return found


def staggered(visitors: int, rate: int, seconds: int) -> list[tuple[int, int]]:
    """(visitor, nth view) in the order sent: each visitor's views a period apart, the
    visitors starting one after another over the first half of the run, so that the views
    measured (each one's 3rd) come all through the run, not in one slice of it."""
    per_visitor = rate * seconds // visitors
    spread = seconds / 2
    period = (seconds - spread) / per_visitor
    timed = sorted((v * spread / visitors + j * period, v, 1 + j)
                   for v in range(visitors) for j in range(per_visitor))  # fmt: skip
    return [(v, k) for _, v, k in timed]


def settle(client: redis.Redis, limit_s: float = 60) -> None:
    """Until the audience worker has taken every profile change and no evaluation is due."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        groups = client.xinfo_groups("cdp:stream:profile_changes")
        waiting = sum(int(g["pending"]) + int(g.get("lag") or 0) for g in groups)
        due = client.zcount("cdp:audiences:due", "-inf", int(time.time() * 1000))
        if groups and not waiting and not due:
            return
        time.sleep(0.2)


def report(what: str, values: list[float]) -> None:
    if not values:
        print(f"{what}: nothing measured")
        return
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(f"{what}: p50 {statistics.median(ordered):.0f} ms, p99 {p99:.0f} ms, "
          f"max {ordered[-1]:.0f} ms ({len(ordered):,} measured)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--visitors", type=int, default=3000)
    parser.add_argument("--rate", type=int, default=1000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--port", type=int, default=8931)
    parser.add_argument("--returning", type=int, default=2000, help="visitors in the latency run")
    parser.add_argument("--audience-workers", type=int, default=1, help="in the latency run")
    parser.add_argument("--fsync", choices=("always", "everysec"), default="always",
                        help="appendfsync of Valkey in the latency run")  # fmt: skip
    parser.add_argument("--latency-rounds", type=int, default=1,
                        help="latency runs one after another (moments vary)")  # fmt: skip
    args = parser.parse_args()
    evaluations(args.visitors)
    for _ in range(args.latency_rounds):
        latency(args.rate, args.seconds, args.port, args.returning, args.audience_workers,
                args.fsync)  # fmt: skip


if __name__ == "__main__":
    main()
