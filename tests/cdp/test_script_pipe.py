"""ScriptPipe on a real Valkey: calls sent ahead run in order, a failing call fails alone,
and a lost connection fails the calls under way and is made again for the next."""

from __future__ import annotations

import uuid

import pytest
import redis

from cdp.script_pipe import ScriptPipe
from cdp.settings import Settings

# Appends its argument to a list and returns the list's length; 'fail' raises.
SCRIPT = """
if ARGV[2] == 'fail' then return redis.error_reply('refused ' .. ARGV[2]) end
return redis.call('RPUSH', ARGV[1], ARGV[2])
"""


@pytest.fixture
def pipe(redis_client: redis.Redis):  # type: ignore[no-untyped-def]
    made = ScriptPipe(redis_client, SCRIPT, f"test-{uuid.uuid4().hex[:8]}")
    yield made
    made.close()


def test_calls_sent_ahead_run_in_order(
    pipe: ScriptPipe, redis_client: redis.Redis, settings: Settings
) -> None:
    key = f"{settings.redis_prefix}:order"
    futures = [pipe.submit(key, str(i)) for i in range(200)]
    assert [f.result(timeout=10) for f in futures] == list(range(1, 201))
    assert redis_client.lrange(key, 0, -1) == [str(i).encode() for i in range(200)]


def test_a_failing_call_fails_alone(
    pipe: ScriptPipe, redis_client: redis.Redis, settings: Settings
) -> None:
    key = f"{settings.redis_prefix}:errors"
    before, failing, after = pipe.submit(key, "a"), pipe.submit(key, "fail"), pipe.submit(key, "b")
    assert before.result(timeout=10) == 1
    with pytest.raises(redis.ResponseError, match="refused fail"):
        failing.result(timeout=10)
    assert after.result(timeout=10) == 2


def test_a_lost_connection_fails_the_calls_under_way_and_the_next_reconnects(
    pipe: ScriptPipe, redis_client: redis.Redis, settings: Settings
) -> None:
    key = f"{settings.redis_prefix}:lost"
    assert pipe.submit(key, "first").result(timeout=10) == 1
    (ours,) = [c for c in redis_client.client_list() if c["name"] == pipe.name]
    redis_client.execute_command("CLIENT", "PAUSE", 10_000, "WRITE")  # the calls wait unrun
    try:
        under_way = [pipe.submit(key, "a"), pipe.submit(key, "b")]
        redis_client.client_kill_filter(_id=ours["id"])
    finally:
        redis_client.execute_command("CLIENT", "UNPAUSE")
    for future in under_way:
        with pytest.raises(redis.ConnectionError):
            future.result(timeout=10)
    assert pipe.submit(key, "again").result(timeout=10) == 2
    assert redis_client.lrange(key, 0, -1) == [b"first", b"again"]
