"""The audience worker (durable_rules inside) killed with SIGKILL while events flow: the
server restarts it, and every profile enters the audience exactly once, nothing lost."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import API_KEY, WRITE_KEY, wait_for
from tests.servers import ServerProcess, children_of

pytestmark = pytest.mark.e2e

PEOPLE = 300


def test_killing_the_engine_mid_stream_loses_and_doubles_nothing(data_dir: Path) -> None:
    server = ServerProcess(data_dir, run_writer=True)
    admin = {"Authorization": f"Bearer {API_KEY}"}
    try:
        with httpx.Client(base_url=server.url, headers=admin, timeout=30) as api:
            root = {"performed": {"event": "Product Viewed", "within": "P1D", "times": 2}}
            created = api.post("/api/v1/audiences", json={"id": "twice", "name": "T", "root": root})
            assert created.status_code == 201
            [engine] = wait_for(lambda: children_of(server.process.pid, b"audience-worker"))
            with httpx.Client(base_url=server.url, auth=(WRITE_KEY, ""), timeout=30) as tracking:
                for start in range(0, PEOPLE, 20):
                    batch = [{"type": "track", "event": "Product Viewed", "anonymousId": f"v{i}",
                              "properties": {"n": n}}
                             for i in range(start, start + 20) for n in range(2)]  # fmt: skip
                    assert tracking.post("/v1/batch", json={"batch": batch}).status_code == 200
                    if start == 160:  # about half sent, and the engine at work
                        os.kill(engine, signal.SIGKILL)

            def settled() -> bool:
                sizes = api.get("/api/v1/audiences/twice/sizes").json()["sizes"]
                return bool(sizes) and sizes[-1]["size"] == PEOPLE

            wait_for(settled, timeout=120, interval=0.5)
            [restarted] = children_of(server.process.pid, b"audience-worker")
            assert restarted != engine
            sizes = api.get("/api/v1/audiences/twice/sizes").json()["sizes"]
            assert sum(s["entered"] for s in sizes) == PEOPLE  # once each
            assert sum(s["exited"] for s in sizes) == 0
            assert api.get("/api/v1/audiences/twice").json()["size"] == PEOPLE
            health = api.get("/healthz").json()
            assert health["dead_letters"] == 0
            [worker] = health["audience_workers"]  # its restart shown
            assert (worker["running"], worker["pid"], worker["restarts"]) == (True, restarted, 1)
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=60)
