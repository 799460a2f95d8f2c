"""The embedded Valkey: persisted, found again after a crash, never doubled."""

import os
import signal
from pathlib import Path

import pytest
import redis

from cdp.redis_server import EmbeddedRedis, _alive, jemalloc


def test_a_running_server_is_reused_not_doubled(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path)
    first.start()
    try:
        pid = int(first.pid_path.read_text())
        # A second start, as after our process crashed and was restarted, finds the first.
        again = EmbeddedRedis(tmp_path)
        again.start()
        assert again.reused
        assert int(again.pid_path.read_text()) == pid
        redis.Redis.from_url(again.url).set("k", "v")
        assert redis.Redis.from_url(first.url).get("k") == b"v"
    finally:
        first.stop()
    assert not _alive(pid)


def test_data_survives_a_killed_server(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    server.start()
    client = redis.Redis.from_url(server.url)
    client.xadd("s", {"e": "1"})
    pid = int(server.pid_path.read_text())
    os.kill(pid, signal.SIGKILL)
    client.close()

    replacement = EmbeddedRedis(tmp_path)
    replacement.start()  # stale pid file and socket: replaced
    try:
        assert not replacement.reused
        assert int(replacement.pid_path.read_text()) != pid
        assert redis.Redis.from_url(replacement.url).xlen("s") == 1
    finally:
        replacement.stop()
        server._server = None


def test_the_server_runs_with_jemalloc_and_our_environment_is_left_alone(tmp_path: Path) -> None:
    library = jemalloc()
    if library is None:
        pytest.skip("libjemalloc2 is not installed (./dev.sh installs it)")
    before = os.environ.get("LD_PRELOAD")
    server = EmbeddedRedis(tmp_path)
    server.start()
    try:
        pid = int(server.pid_path.read_text())
        assert library in Path(f"/proc/{pid}/maps").read_text()
        client = redis.Redis.from_url(server.url)
        client.eval("for i = 1, 1000 do redis.call('HSET', 'h', i, i) end", 0)
        assert client.hlen("h") == 1000
        client.close()
    finally:
        server.stop()
    assert os.environ.get("LD_PRELOAD") == before
