"""Profile benchmark (not a test). Run: `./benchmarks/run.sh profiles`.

1. Profile worker, one process: events/s from a full events stream (the simulated shop's
   traffic, normalised as the tracking API does) until every event is applied to its
   profile, against reading and decoding the same entries without applying them (the
   floor any worker pays), measured in the same run.
2. Profile look-up latency, `GET /api/v1/profiles?anonymous_id=...` over HTTP with wrk:
   p50/p99 on an idle server, then while wrk sends `/v1/batch` traffic at the same time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import redis.asyncio as aioredis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ingest import API_KEY, WRITE_KEY, serve, wrk_batches  # noqa: E402

from cdp.credentials import source_id  # noqa: E402
from cdp.demo.shop import simulate_shop  # noqa: E402
from cdp.events import entry_events  # noqa: E402
from cdp.profiles.store import ProfileStore  # noqa: E402
from cdp.profiles.worker import ProfileWorker  # noqa: E402
from cdp.redis_server import EmbeddedRedis, jemalloc  # noqa: E402
from cdp.settings import Settings  # noqa: E402
from cdp.storage import connect_redis  # noqa: E402
from ingestion.normalize import to_row  # noqa: E402
from ingestion.segment import SegmentEvent  # noqa: E402
from ingestion.stream import EventStream  # noqa: E402

LOOKUP_SCRIPT = """
local ids = {%s}
wrk.headers["Authorization"] = "Bearer %s"
request = function()
  return wrk.format("GET", "/api/v1/profiles?anonymous_id=" .. ids[math.random(#ids)])
end
"""


def fill(url: str, stream: str, prefix: str, visitors: int) -> tuple[int, list[str]]:
    """The shop's events, normalised, appended 100 a call; returns the count and the ids."""
    shop = simulate_shop(visitors, seed=42)
    now = datetime.now(UTC)
    source = source_id(WRITE_KEY)
    events = [SegmentEvent.model_validate(e) for v in shop for e in v.events]
    rows = [to_row(e, received_at=now, source_id=source, ip="127.0.0.1") for e in events]

    async def append() -> None:
        client = aioredis.Redis.from_url(url, protocol=2)
        buffer = EventStream(client, stream, prefix, 3600)
        for start_at in range(0, len(rows), 100):
            await buffer.append(rows[start_at : start_at + 100])
        await client.aclose()

    asyncio.run(append())
    return len(rows), sorted({e.anonymous_id or "" for e in events})


def worker_throughput(visitors: int) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="cdp-bench-profiles-"))
    valkey = EmbeddedRedis(data_dir)
    valkey.start()
    client = connect_redis(valkey.url)
    try:
        results: dict[str, Any] = {}
        for mode in ("read and decode only", "apply to profiles"):
            prefix = "bench" + str(len(results))
            stream = f"{prefix}:stream:events"
            events, _ = fill(valkey.url, stream, prefix, visitors)
            store = ProfileStore(client, prefix, f"{prefix}:stream:records")
            worker = ProfileWorker(
                client, store, stream, consumer="bench", batch_size=Settings().profile_batch_size
            )
            worker.ensure_group()
            if mode == "read and decode only":
                worker.handle = lambda entries, recovered: (  # type: ignore[method-assign,misc]
                    sum(len(entry_events(f)) for _, f in entries if f)
                )
            started = time.perf_counter()
            done = 0
            while done < events:
                done += worker.drain_once(block_ms=100)
            if mode != "read and decode only":
                worker.wait()
            results[mode] = (events, time.perf_counter() - started)
        profiles, identified = store.counts()
    finally:
        client.close()
        valkey.stop()
    print(f"profile worker, 1 process, embedded Valkey (AOF fsync always, allocator: "
          f"{jemalloc() or 'glibc malloc'}), {visitors:,} simulated visitors")  # fmt: skip
    for mode, (events, seconds) in results.items():
        print(
            f"  {mode:<22} {events:,} events in {seconds:5.2f}s  {events / seconds:10,.0f} events/s"
        )
    floor = results["read and decode only"][1] / results["apply to profiles"][1]
    print(f"  applying runs at {floor:.2f}x the read-only floor; {profiles:,} profiles, "
          f"{identified:,} identified  (target >= 20,000 events/s)")  # fmt: skip


def latency(output: str) -> tuple[str, str, float]:
    p50 = re.search(r"50%\s+([\d.]+\w+)", output).group(1)  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+\w+)", output).group(1)  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    return p50, p99, rps


def lookups(url: str, ids: list[str], seconds: int, connections: int) -> tuple[str, str, float]:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    quoted = ",".join(f'"{i}"' for i in ids)
    script.write_text(LOOKUP_SCRIPT % (quoted, API_KEY))
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    if "Non-2xx" in output:
        raise SystemExit(f"look-ups failed:\n{output}")
    return latency(output)


def settling(url: str) -> bool:
    response = httpx.get(
        f"{url}/api/v1/reports/overview", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    return int(response.json()["backlog"]) > 0


def lookup_latency(visitors: int, seconds: int) -> None:
    server, url, data_dir = serve(18090)
    try:
        socket_url = f"unix://{data_dir / 'valkey' / 'valkey.sock'}"
        _, ids = fill(socket_url, "cdp:stream:events", "cdp", visitors)
        while settling(url):  # let the writer and the worker catch up first
            time.sleep(0.5)
        single = lookups(url, ids, seconds, 1)
        idle = lookups(url, ids, seconds, 8)
        loaded: dict[str, object] = {}
        load = threading.Thread(
            target=lambda: loaded.update(requests=wrk_batches(f"{url}/v1/batch", seconds + 2, 8))
        )
        load.start()
        time.sleep(1)
        busy = lookups(url, ids, seconds, 8)
        load.join()
    finally:
        server.terminate()
        server.wait()
    print(f"profile look-up over HTTP, {len(ids):,} anonymous ids, wrk, {seconds}s each")
    print(f"  idle, 1 connection   p50 {single[0]:>8}  p99 {single[1]:>8}  {single[2]:8,.0f} req/s")
    print(f"  idle, 8 connections  p50 {idle[0]:>8}  p99 {idle[1]:>8}  {idle[2]:8,.0f} req/s")
    batches = int(loaded.get("requests", 0))  # type: ignore[call-overload]
    print(f"  8, during /v1/batch  p50 {busy[0]:>8}  p99 {busy[1]:>8}  {busy[2]:8,.0f} req/s "
          f"(load: {batches * 100 / (seconds + 2):,.0f} events/s sent)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--visitors", type=int, default=6000)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    worker_throughput(args.visitors)
    lookup_latency(min(args.visitors, 2000), args.seconds)


if __name__ == "__main__":
    main()
