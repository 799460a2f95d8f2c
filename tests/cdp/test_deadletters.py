"""No poison message: an entry a worker cannot process is tried a bounded number of times,
set aside with its error, and everybody else's events go on; operators see it in the API,
/metrics and /healthz, and /healthz tells when a worker is stuck."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from cdp import deadletters
from cdp.consumer import Entries, StreamConsumer
from cdp.deadletters import dead_letter_stream, listed, set_aside
from cdp.health import Health, check
from cdp.settings import Settings
from cdp.storage import Warehouse
from cdp.streams import forget
from rules.keyspace import AudienceKeys
from tests.conftest import API_KEY, WRITE_KEY, LiveServer, wait_for
from tests.streams import append, rows


class Picky(StreamConsumer):
    """Handles entries unless their events name the user `poison`."""

    group = "picky"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.handled: list[str] = []
        self.calls = 0

    def handle(self, entries: Entries, *, recovered: bool) -> int:
        self.calls += 1
        for _, fields in entries:
            if fields and b'"poison"' in fields[b"d"]:
                raise ValueError("cannot digest this one")
        self.handled += [str(entry_id) for entry_id, _ in entries]
        self.ack(entries)
        return len(entries)


def test_a_failing_entry_is_set_aside_after_its_tries_and_the_others_go_on(
    settings: Settings, redis_client: redis.Redis
) -> None:
    worker = Picky(redis_client, settings.events_stream, block_ms=20, tries=3)
    worker.ensure_group()
    append(settings, rows(2, prefix="before"))
    append(settings, rows(1, prefix="bad", userId="poison"))
    append(settings, rows(2, prefix="after"))
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,), daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(worker.handled) == 2 and worker.set_aside == 1, timeout=15)
        append(settings, rows(1, prefix="later"))
        wait_for(lambda: len(worker.handled) == 3)
    finally:
        stop.set()
        thread.join(10)
    [letter] = listed(redis_client, dead_letter_stream(settings.events_stream))
    assert letter.group == "picky" and letter.tries == 3
    assert letter.error == "ValueError: cannot digest this one"
    assert "bad-0" in letter.payload["d"]
    assert redis_client.xpending(settings.events_stream, "picky")["pending"] == 0


def test_the_dead_letter_stream_is_the_one_settings_name(settings: Settings) -> None:
    assert dead_letter_stream(settings.events_stream) == settings.dead_letter_stream
    assert dead_letter_stream(settings.records_stream) == settings.dead_letter_stream


@pytest.fixture
def api(live_server: LiveServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=live_server.url, headers=headers, timeout=30) as client:
        yield client


def send(live_server: LiveServer, *events: dict[str, Any]) -> None:
    response = httpx.post(
        f"{live_server.url}/v1/batch", json={"batch": list(events)}, auth=(WRITE_KEY, "")
    )
    assert response.status_code == 200, response.text


def profile(api: httpx.Client, user: str, check: Any = lambda p: True) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        found = api.get("/api/v1/profiles", params={"user_id": user})
        return found.json() if found.status_code == 200 and check(found.json()) else None

    return wait_for(ready)  # type: ignore[no-any-return]


def test_an_order_too_large_to_count_hurts_nobody(
    live_server: LiveServer, api: httpx.Client
) -> None:
    send(
        live_server,
        {"type": "track", "userId": "whale", "event": "Order Completed",
         "properties": {"revenue": 1e308}},
        {"type": "track", "userId": "whale", "event": "Order Completed",
         "properties": {"products": [{"price": 1e11, "quantity": 1e300}]}},
    )  # fmt: skip
    send(live_server, {"type": "track", "userId": "next", "event": "Order Completed",
                       "properties": {"revenue": 12.5}})  # fmt: skip
    after = profile(api, "next", lambda p: p["features"]["orders"] == 1)
    assert after["features"]["revenue"] == 12.5
    whale = profile(api, "whale", lambda p: p["features"]["orders"] == 2)
    assert whale["features"]["revenue"] == 0
    assert [entry["message"] for entry in whale["log"]] == [
        "order amount of 1e+12 or more not counted"
    ] * 2


def test_an_unreadable_entry_is_listed_and_health_shows_it(
    live_server: LiveServer, api: httpx.Client, settings: Settings, redis_client: redis.Redis
) -> None:
    redis_client.xadd(settings.events_stream, {"n": "1", "d": "{not json", "p": "", "t": ""})
    send(live_server, {"type": "identify", "userId": "after-poison", "traits": {"plan": "b"}})
    assert profile(api, "after-poison")["traits"] == {"plan": "b"}

    def letters() -> dict[str, Any] | None:
        found = api.get("/api/v1/dead-letters").json()
        return found if found["total"] == 2 else None  # the warehouse's and the profiles'

    found = wait_for(letters, timeout=20)
    assert {letter["group"] for letter in found["dead_letters"]} == {"warehouse", "profiles"}
    assert all(letter["payload"]["d"] == "{not json" for letter in found["dead_letters"])
    assert all(letter["tries"] == 3 for letter in found["dead_letters"])
    health = httpx.get(f"{live_server.url}/healthz")
    assert health.status_code == 200 and health.json()["dead_letters"] == 2
    metrics = httpx.get(f"{live_server.url}/metrics").text
    assert "cdp_dead_letters_waiting 2.0" in metrics
    assert api.get("/api/v1/dead-letters", params={"before": "x"}).status_code == 422
    newest = found["dead_letters"][0]["id"]
    older = api.get("/api/v1/dead-letters", params={"before": newest}).json()["dead_letters"]
    assert [letter["id"] for letter in older] == [found["dead_letters"][1]["id"]]


def test_health_answers_503_when_a_worker_falls_behind(
    live_server: LiveServer, settings: Settings, redis_client: redis.Redis
) -> None:
    settings.health_max_lag_seconds = 1.0  # read by each health check

    def workers() -> set[str]:
        health = httpx.get(f"{live_server.url}/healthz")
        assert health.status_code == 200, health.json()
        return set(health.json()["workers"])

    wait_for(lambda: workers() >= {"events/warehouse", "events/profiles", "records/warehouse"})
    # A consumer group that reads nothing: its backlog only grows older.
    redis_client.xgroup_create(settings.events_stream, "idle", id="$", mkstream=True)
    send(live_server, {"type": "track", "userId": "u", "event": "Product Viewed"})
    time.sleep(settings.health_max_lag_seconds + 0.5)
    health = httpx.get(f"{live_server.url}/healthz")
    assert health.status_code == 503
    body = health.json()
    assert body["status"] == "unhealthy" and body["workers"]["events/idle"]["waiting"] == 1
    assert body["problems"][0].startswith("events/idle: the oldest of 1 waiting entries is")


def test_health_answers_503_when_the_audience_schedule_is_overdue(
    settings: Settings, redis_client: redis.Redis, warehouse: Warehouse
) -> None:
    """With no audience worker running and no event coming, only the schedule shows that
    the time-based transitions (an abandoned cart's hour passing) stopped."""
    due = AudienceKeys(settings.redis_prefix).due
    now = int(time.time() * 1000)

    def health() -> Health:
        return check(redis_client, warehouse, {}, settings.dead_letter_stream, {}, 60.0, due)

    redis_client.zadd(due, {"p-leased": now + 10_000, "p-soon": now - 30_000})
    fine = health()
    assert fine.http_status == 200 and fine.schedule["due"] == 1
    assert 30 <= fine.schedule["oldest_seconds"] < 60
    redis_client.zadd(due, {"p-forgotten": now - 120_000})
    late = health()
    assert late.http_status == 503 and late.schedule["due"] == 2
    assert late.problems[0].startswith("audience schedule: 2 profiles are due, the oldest 12")


def test_the_newest_dead_letters_are_kept_up_to_a_bound(
    settings: Settings, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure that repeats for every profile would grow them without end."""
    monkeypatch.setattr(deadletters, "KEPT", 3)
    for n in range(5):
        set_aside(redis_client, settings.events_stream, "g", (f"1-{n}".encode(), {b"n": b"x"}),
                  ValueError(str(n)), 3)  # fmt: skip
    kept = listed(redis_client, settings.dead_letter_stream)
    assert [letter.error for letter in kept] == ["ValueError: 4", "ValueError: 3", "ValueError: 2"]


def test_erasure_forgets_the_dead_letters_that_mention_a_person(
    settings: Settings, redis_client: redis.Redis
) -> None:
    stream = settings.dead_letter_stream
    for user in ("sam@example.com", "kim@example.com"):
        fields = {b"d": b'{"user_id": "' + user.encode() + b'"}'}
        set_aside(redis_client, settings.events_stream, "g", (b"1-1", fields), ValueError(), 3)
    assert forget(redis_client, stream, ["sam@example.com", "nobody"]) == 1
    [left] = listed(redis_client, stream)
    assert "kim@example.com" in left.payload["d"]


def test_health_answers_503_while_the_profile_worker_is_down(live_server: LiveServer) -> None:
    def health() -> httpx.Response:
        return httpx.get(f"{live_server.url}/healthz", timeout=10)

    pid = wait_for(lambda: health().json()["profile_worker"]["pid"])
    os.kill(pid, signal.SIGKILL)
    down = wait_for(lambda: (answer := health()).status_code == 503 and answer, interval=0.02)
    assert "profile worker is not running" in down.json()["problems"]
    # Restarted by its supervisor: healthy again.
    back = wait_for(lambda: (answer := health()).status_code == 200 and answer)
    assert back.json()["profile_worker"]["restarts"] == 1
