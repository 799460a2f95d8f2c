"""Ingestion benchmark (not a test). Run: `./benchmarks/run.sh` (installs wrk, then this).

1. Single-event `POST /v1/track` requests/s, against the floors of `bench_bare.py` served
   the same way (uvicorn, one process) in the same run: the ratios are what count. The
   server runs as shipped, access log on (written to /dev/null).
2. `/v1/batch` with 100 events a request (unique message ids), sent by wrk for a while:
   events/s from the first request until every row is queryable in ClickHouse.
3. Peak memory (VmHWM) of the server process, and of its embedded Valkey.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "wk_bench"
API_KEY = "sk_bench"
EVENT = {
    "event": "Product Viewed",
    "anonymousId": "3f1c2d4e-0000-4000-8000-000000000001",
    "properties": {"product_id": "sku-101", "category": "Sneakers", "price": 89.95},
    "context": {
        "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36",
        "page": {"url": "https://shop.example/p/sku-101?utm_source=google", "path": "/p/sku-101"},
    },
}
# wrk sends the same body each time; without a messageId the server makes one per request.
WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic %s"
"""


def start(command: list[str], env: dict[str, str], url: str) -> subprocess.Popen[bytes]:
    errors = open(os.environ.get("BENCH_STDERR", os.devnull), "w")  # noqa: SIM115 (the child's)
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{command} did not start")


def serve(port: int, **settings: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """`cdp serve` on the embedded defaults in a fresh data directory; the process, its URL
    and the directory."""
    data_dir = Path(tempfile.mkdtemp(prefix="cdp-bench-"))
    env = {**os.environ, "CDP_DATA_DIR": str(data_dir), "CDP_WRITE_KEYS": WRITE_KEY,
           "CDP_ADMIN_KEY": API_KEY, **settings}  # fmt: skip
    for name in ("CDP_CLICKHOUSE_URL", "CDP_REDIS_URL"):
        env.pop(name, None)
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cdp", "serve", "--port", str(port), "--log-level", "warning"]
    return start(command, env, f"{url}/healthz"), url, data_dir


def wrk(url: str, seconds: int, connections: int) -> float:
    """Single-event requests for `seconds`; returns requests/s."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    script.write_text(WRK_SCRIPT % (json.dumps(EVENT), auth))
    output = _run_wrk(url, seconds, connections, script)
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]


def peak_memory_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024  # type: ignore[union-attr]


def stored(url: str) -> int:
    response = httpx.get(
        f"{url}/api/v1/reports/overview",
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=30,
    )
    return int(response.json()["events"])


# Each request a batch of 100 events with message ids unique across the run (the server
# would rightly store a repeated id once), built by wrk's LuaJIT so the load generator
# takes little of the machine's two cores.
WRK_BATCH_SCRIPT = """
math.randomseed(os.time())
local counter = 0
local thread_id = math.random(1, 2147483647)
local tail = [[%s]]
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic %s"
request = function()
  local events = {}
  for i = 1, 100 do
    counter = counter + 1
    events[i] = '{"type":"track","messageId":"b-' .. thread_id .. '-' .. counter .. '",' .. tail
  end
  return wrk.format(nil, nil, nil, '{"batch":[' .. table.concat(events, ",") .. ']}')
end
"""


def wrk_batches(url: str, seconds: int, connections: int) -> int:
    """Sends batches for `seconds`; returns how many requests were answered 200."""
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    auth = base64.b64encode(f"{WRITE_KEY}:".encode()).decode()
    script.write_text(WRK_BATCH_SCRIPT % (json.dumps(EVENT)[1:], auth))
    output = _run_wrk(url, seconds, connections, script)
    return int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]


def _run_wrk(url: str, seconds: int, connections: int, script: Path) -> str:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non_2xx:
        raise SystemExit(f"wrk saw {non_2xx.group(1)} error answers:\n{output}")
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=int, default=5, help="wrk duration per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per endpoint")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--batch-seconds", type=int, default=10, help="wrk duration, batches")
    parser.add_argument("--batch-connections", type=int, default=16)
    parser.add_argument(
        "--no-profile-worker",
        action="store_true",
        help="the edge and the writer alone (CDP_RUN_PROFILE_WORKER=false)",
    )
    args = parser.parse_args()

    uvicorn = [sys.executable, "-m", "uvicorn", "--log-level", "warning", "--no-access-log"]
    bare_env = {**os.environ, "PYTHONPATH": str(ROOT / "benchmarks")}
    bare_url = "http://127.0.0.1:18081"
    bare = start([*uvicorn, "--port", "18081", "bench_bare:app"], bare_env, f"{bare_url}/")
    server, url, data_dir = serve(
        18080, CDP_RUN_PROFILE_WORKER=str(not args.no_profile_worker).lower()
    )
    try:
        # Rounds alternate between them, so a slow moment of the machine hits all alike.
        targets = {"floor": f"{bare_url}/v1/track", "dict": f"{bare_url}/dict/v1/track",
                   "cdp": f"{url}/v1/track"}  # fmt: skip
        runs: dict[str, list[float]] = {name: [] for name in targets}
        for target in targets.values():
            wrk(target, 2, args.connections)  # warm-up
        for _ in range(args.rounds):
            for name, target in targets.items():
                runs[name].append(wrk(target, args.seconds, args.connections))
        bare.terminate()
        bare.wait()
        floor_rps, dict_rps, cdp_rps = (statistics.median(runs[name]) for name in targets)

        baseline = stored(url)
        while True:  # let the writer catch up with the single-event runs first
            time.sleep(1)
            now = stored(url)
            if now == baseline:
                break
            baseline = now

        started = time.perf_counter()
        requests = wrk_batches(f"{url}/v1/batch", args.batch_seconds, args.batch_connections)
        acknowledged = time.perf_counter() - started
        events = requests * 100
        while stored(url) < baseline + events:
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        server_mb = peak_memory_mb(server.pid)
        valkey_pid = int((data_dir / "valkey" / "valkey.pid").read_text())
        valkey_mb = peak_memory_mb(valkey_pid)
    finally:
        for process in (bare, server):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait()

    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    worker = "off" if args.no_profile_worker else "on (its own process)"
    print(f"server: embedded engines, warehouse writer on, profile worker {worker}")
    print(f"wrk: {args.connections} connections, 1 thread, {args.rounds} alternating rounds of "
          f"{args.seconds}s per endpoint, medians")  # fmt: skip
    rows = [
        ("single-event /v1/track, floor: orjson + prebuilt Response", f"{floor_rps:,.0f} req/s"),
        ("single-event /v1/track, old floor: dict via the encoder", f"{dict_rps:,.0f} req/s"),
        ("single-event /v1/track, cdp (embedded, access log on)", f"{cdp_rps:,.0f} req/s"),
        ("ratio cdp / floor (target >= 0.8)", f"{cdp_rps / floor_rps:.2f}"),
        ("ratio cdp / old floor", f"{cdp_rps / dict_rps:.2f}"),
    ]
    for label, value in rows:
        print(f"{label:<60}{value:>14}")
    print(f"wrk: {args.batch_connections} connections for /v1/batch, {args.batch_seconds}s")
    print(f"/v1/batch x100: {events:,} events acknowledged in {acknowledged:.2f}s, "
          f"all queryable after {elapsed:.2f}s")  # fmt: skip
    print(f"batch throughput, first request to queryable {events / elapsed:10,.0f} events/s "
          "(target >= 50,000)")  # fmt: skip
    print(f"peak memory: server {server_mb:,.0f} MB, embedded Valkey {valkey_mb:,.0f} MB")


if __name__ == "__main__":
    main()
