"""Crash test: events answered 200, the server killed with SIGKILL before its writer ran,
restarted: every acknowledged event is in ClickHouse exactly once. Graceful stop: Ctrl+C
(SIGINT to the whole process group) stores every acknowledged event before Valkey stops."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import WRITE_KEY, wait_for
from tests.servers import ServerProcess, children_of

pytestmark = pytest.mark.e2e


def count_in_chdb(data_dir: Path) -> tuple[int, int]:
    """Read the embedded engine from a fresh process, once the server let go of it."""
    code = (
        "import clickhouse_connect, sys;"
        f"c = clickhouse_connect.get_client(dsn='chdb://{(data_dir / 'chdb').resolve()}');"
        "print(*c.query('SELECT count(), uniqExact(message_id) FROM cdp.events').result_rows[0])"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    total, unique = output.split()
    return int(total), int(unique)


@pytest.mark.parametrize("also_kill_valkey", [False, True], ids=["server", "server+valkey"])
def test_acknowledged_events_survive_sigkill(data_dir: Path, also_kill_valkey: bool) -> None:
    first = ServerProcess(data_dir, run_writer=False)
    batches = [
        [
            {
                "type": "track",
                "event": "Product Viewed",
                "anonymousId": f"a-{b}",
                "messageId": f"crash-{b}-{i}",
                "properties": {"i": i},
            }  # fmt: skip
            for i in range(50)
        ]
        for b in range(10)
    ]
    with httpx.Client(base_url=first.url, auth=(WRITE_KEY, "")) as client:
        for batch in batches:
            assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
    assert children_of(first.process.pid), "the server runs its profile worker apart"
    first.process.send_signal(signal.SIGKILL)
    first.process.wait()
    # Its profile worker process notices and goes too.
    wait_for(lambda: not children_of(first.process.pid), timeout=15)
    if also_kill_valkey:
        valkey_pid = int((data_dir / "valkey" / "valkey.pid").read_text())
        os.kill(valkey_pid, signal.SIGKILL)

    second = ServerProcess(data_dir, run_writer=True)
    try:
        wait_for(lambda: second.events() == 500, timeout=60, interval=0.2)
        # The client never heard back and sends everything again: nothing is stored twice.
        with httpx.Client(base_url=second.url, auth=(WRITE_KEY, "")) as client:
            for batch in batches:
                assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
            marker = {"type": "track", "event": "Marker", "userId": "u", "messageId": "marker"}
            assert client.post("/v1/track", json=marker).status_code == 200
        wait_for(lambda: second.events() == 501, timeout=60, interval=0.2)
    finally:
        second.process.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises the signal it caught.
        assert second.process.wait(timeout=60) in (0, -signal.SIGTERM)
    assert not (data_dir / "valkey" / "valkey.pid").exists(), "Valkey was not stopped on exit"
    assert count_in_chdb(data_dir) == (501, 501)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_a_signal_to_the_process_group_stores_what_was_acknowledged(
    data_dir: Path, sig: signal.Signals
) -> None:
    # The writer naps 3 s after its first read: whatever is sent meanwhile is still in the
    # stream when the signal comes.
    server = ServerProcess(data_dir, run_writer=True, CDP_WRITER_MAX_WAIT_MS="3000")
    with httpx.Client(base_url=server.url, auth=(WRITE_KEY, "")) as client:
        for b in range(10):
            batch = [{"type": "track", "event": "Product Viewed", "anonymousId": f"a-{b}",
                      "messageId": f"stop-{b}-{i}"} for i in range(50)]  # fmt: skip
            assert client.post("/v1/batch", json={"batch": batch}).status_code == 200
    os.killpg(server.process.pid, sig)  # the server, its workers and (once) Valkey
    assert server.process.wait(timeout=60) in (0, -sig, 128 + sig)
    assert not (data_dir / "valkey" / "valkey.pid").exists(), "Valkey was not stopped on exit"
    assert count_in_chdb(data_dir) == (500, 500)
