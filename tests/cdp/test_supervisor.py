"""The profile worker runs in a process of its own, watched by the server: restarted when
it dies, stopped with the server."""

from __future__ import annotations

import os
import signal

import httpx
import redis

from cdp.settings import Settings
from cdp.storage import Warehouse
from tests.conftest import API_KEY, WRITE_KEY, LiveServer, wait_for


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_a_dead_profile_worker_is_restarted_and_stops_with_the_server(
    live_server: LiveServer,
) -> None:
    supervised = live_server.app.state.runtime.profile_process
    first = supervised.pid
    assert first and alive(first)
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: supervised.restarts == 1 and supervised.pid != first)
    second = supervised.pid

    with httpx.Client(base_url=live_server.url, timeout=10) as client:
        sent = client.post("/v1/identify", json={"userId": "after-restart"}, auth=(WRITE_KEY, ""))
        assert sent.status_code == 200
        wait_for(
            lambda: (
                client.get(
                    "/api/v1/profiles",
                    params={"user_id": "after-restart"},
                    headers={"Authorization": f"Bearer {API_KEY}"},
                ).status_code
                == 200
            )
        )
    live_server.__exit__(None, None, None)
    wait_for(lambda: not alive(second))


def test_several_audience_workers_share_the_work_each_in_its_process(
    settings: Settings, warehouse: Warehouse, redis_client: redis.Redis
) -> None:
    from cdp.app import create_app

    two = settings.model_copy(update={"audience_workers": 2})
    admin = {"Authorization": f"Bearer {API_KEY}"}
    with LiveServer(create_app(two), two) as server:
        processes = server.app.state.runtime.audience_processes
        assert len(processes) == 2
        pids = [wait_for(lambda p=p: p.pid) for p in processes]
        assert len(set(pids)) == 2 and all(alive(pid) for pid in pids)
        orders = [
            {
                "type": "track",
                "event": "Order Completed",
                "userId": f"buyer-{n}",
                "properties": {"order_id": f"o{n}", "revenue": 10},
            }
            for n in range(20)
        ]
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for order in orders:  # one request each: many profile changes to share
                assert client.post("/v1/batch", json={"batch": [order]},
                                   auth=(WRITE_KEY, "")).status_code == 200  # fmt: skip
            members = lambda: client.get("/api/v1/audiences/recent-purchasers/members",  # noqa: E731
                                         headers=admin).json()["members"]  # fmt: skip
            wait_for(lambda: len(members()) == 20)
            health = client.get("/healthz").json()
        assert health["status"] == "ok", health["problems"]
        stream, group = two.profile_changes_stream, "audiences"
        consumers = lambda: {c["name"] for c in redis_client.xinfo_consumers(stream, group)}  # noqa: E731
        wait_for(lambda: len(consumers()) == 2)  # each reads the group under its own name
        entered = [
            fields[b"profile"]
            for _, fields in redis_client.xrange(f"{two.redis_prefix}:stream:audience_changes")
            if fields[b"audience"] == b"recent-purchasers" and fields[b"change"] == b"enter"
        ]
        assert len(entered) == len(set(entered)) == 20  # each once
