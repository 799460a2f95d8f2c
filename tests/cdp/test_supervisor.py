"""The profile worker runs in a process of its own, watched by the server: restarted when
it dies, stopped with the server."""

from __future__ import annotations

import os
import signal

import httpx

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
