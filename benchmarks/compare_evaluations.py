"""Evaluations/s of the audience worker of one source tree, to compare two commits in
alternating rounds (the VM's speed swings more than many changes move it). Not a test.

    git worktree add /tmp/base <commit>
    for round in 1 2; do for tree in /tmp/base "$PWD"; do
      .venv/bin/python benchmarks/compare_evaluations.py $tree
    done; done

Each line: the best of 3 passes over the bench's state (3,000 simulated visitors, the 50
audiences of `bench_audiences.py`): every audience matched, those reading `Product Viewed`,
and the shop's own traffic (its profile changes, one entry at a time); each as evaluations
per second of wall time and, in brackets, of the process's CPU time (where the two differ,
the worker waited: for Valkey, mostly)."""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

TREE = str(Path(sys.argv[1] if len(sys.argv) > 1 else ".").resolve())
sys.path[:0] = [TREE, f"{TREE}/benchmarks"]  # the tree's code, not this checkout's
from bench_audiences import fifty_more, shop_events  # noqa: E402

from cdp.catalog import Catalog  # noqa: E402
from cdp.cli import quiet_collector  # noqa: E402
from cdp.profiles.store import ProfileStore  # noqa: E402
from cdp.redis_server import EmbeddedRedis  # noqa: E402
from cdp.settings import Settings  # noqa: E402
from cdp.storage import connect_redis, text  # noqa: E402
from rules import worker as worker_module  # noqa: E402
from rules.audiences import Audiences  # noqa: E402
from rules.worker import Asked, AudienceWorker  # noqa: E402


def main(tree: str) -> None:
    if not str(worker_module.__file__).startswith(tree):
        sys.exit(f"the code comes from {worker_module.__file__}, not {tree}")
    data_dir = Path(tempfile.mkdtemp(prefix="cdp-compare-"))
    valkey = EmbeddedRedis(data_dir)
    valkey.start()
    client = connect_redis(valkey.url)
    quiet_collector()
    getattr(worker_module, "tune_collector", lambda: None)()  # as its worker process runs
    try:
        settings = Settings(redis_prefix="bench", data_dir=data_dir)
        store = ProfileStore.from_settings(client, settings)
        events = shop_events(3000)
        for start in range(0, len(events), 500):
            store.apply_events(events[start : start + 500])
        audiences = Audiences(client, "bench", settings.history_days, settings.vip_revenue)
        for definition in fifty_more():
            audiences.save(definition, create=True)
        worker = AudienceWorker(client, settings.profile_changes_stream, store, audiences,
                                Catalog(client, "bench", ""), settings.records_stream,
                                settings.history_days)  # fmt: skip
        plan = worker.refresh()
        forget = getattr(plan.matcher, "forget", lambda: None)  # (trees before it kept none)
        profiles = sorted(text(p) for p in client.smembers("bench:profiles"))
        now = int(time.time() * 1000)
        changes: list[Any] = client.xrange(settings.profile_changes_stream)  # type: ignore[assignment]

        def every(changed: frozenset[str] | None) -> Callable[[], int]:
            def run() -> int:
                worker.evaluate_batches([Asked(p, now, "event", changed) for p in profiles])
                return len(profiles)

            return run

        def shop() -> int:
            return sum(worker.handle([entry], recovered=False) for entry in changes)

        every(None)()  # the first pass enters everyone
        best: dict[str, tuple[float, float]] = {}  # wall, CPU
        for _ in range(3):
            for name, run in (("full", every(None)),
                              ("after a view", every(frozenset({"Product Viewed"}))),
                              ("the shop's traffic", shop)):  # fmt: skip
                forget()  # no pass takes the engine's answers of the one before
                started, cpu = time.perf_counter(), time.process_time()
                evaluated = run()
                wall, own = time.perf_counter() - started, time.process_time() - cpu
                before = best.get(name, (0.0, 0.0))
                best[name] = (max(before[0], evaluated / wall), max(before[1], evaluated / own))
        print(f"{tree}: " + ", ".join(f"{name} {rate:,.0f}/s ({by_cpu:,.0f})"
                                      for name, (rate, by_cpu) in best.items()))  # fmt: skip
    finally:
        client.close()
        valkey.stop()


if __name__ == "__main__":
    main(TREE)
