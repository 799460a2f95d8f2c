"""The embedded Valkey: persisted, found again after a crash, never doubled."""

import os
import signal
from pathlib import Path

import redis

from cdp.redis_server import EmbeddedRedis, _alive


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
