"""What `/healthz` tells: whether the storage answers, each worker's backlog (how many
stream entries wait for it and how old the oldest is), the audience schedule's (profiles
whose moment has come and nobody took: time-based transitions waiting), the worker
processes and threads, and the dead letters. Not healthy (503) when storage is away, a
worker is not running, or a worker's oldest waiting entry, or the schedule's oldest moment,
is older than the allowed lag: stuck or far behind (a schedule nobody runs shows no other
way while no event comes)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis

from cdp import deadletters
from cdp.storage import Warehouse
from cdp.streams import group_states


@dataclass
class Health:
    status: str = "ok"
    problems: list[str] = field(default_factory=list)
    workers: dict[str, dict[str, Any]] = field(default_factory=dict)
    buffered_entries: int = 0
    dead_letters: int = 0
    schedule: dict[str, Any] = field(default_factory=lambda: {"due": 0, "oldest_seconds": 0.0})

    def problem(self, text: str) -> None:
        self.status = "unhealthy"
        self.problems.append(text)

    @property
    def http_status(self) -> int:
        return 200 if self.status == "ok" else 503


def check(
    client: redis.Redis,
    warehouse: Warehouse,
    streams: dict[str, str],
    dead_letter_stream: str,
    running: dict[str, bool],
    max_lag_seconds: float,
    schedule: str | None = None,
    invalid_audiences: Callable[[], dict[str, str]] | None = None,
) -> Health:
    """`streams` maps a short name to its stream key; `running` names the workers this
    process runs (or watches) and whether each is alive; `schedule`, the audience schedule's
    key (a sorted set: profile -> its moment; a profile taken is leased, its moment ahead);
    `invalid_audiences`, the stored audience definitions that are not valid (id -> why: such
    an audience is not kept)."""
    health = Health()
    try:
        warehouse.query_rows("SELECT 1")
    except Exception as error:  # any failure of the warehouse is what health must report
        health.problem(f"ClickHouse: {error}"[:300])
    try:
        client.ping()
    except redis.RedisError as error:
        health.problem(f"Redis: {error}"[:300])
        return health
    now_ms = int(time.time() * 1000)
    _check_streams(health, client, streams, now_ms, max_lag_seconds)
    if schedule is not None:
        _check_schedule(health, client, schedule, now_ms, max_lag_seconds)
    for audience, why in sorted((invalid_audiences() if invalid_audiences else {}).items()):
        health.problem(
            f"audience {audience} is not evaluated: its stored definition is not valid "
            f"({why}); PUT it anew or DELETE it"
        )
    for name, alive in running.items():
        if not alive:
            health.problem(f"{name} is not running")
    health.dead_letters = deadletters.count(client, dead_letter_stream)
    return health


def _check_streams(
    health: Health, client: redis.Redis, streams: dict[str, str], now_ms: int, max_lag: float
) -> None:
    for short, stream in streams.items():
        if short == "events":
            health.buffered_entries = int(client.xlen(stream))
        for group, state in group_states(client, stream, now_ms).items():
            name = f"{short}/{group}"
            lag = state["oldest_ms"] / 1000
            health.workers[name] = {"waiting": state["waiting"], "oldest_seconds": lag}
            if lag > max_lag:
                health.problem(
                    f"{name}: the oldest of {state['waiting']} waiting entries is {lag:.0f}s "
                    f"old (allowed: {max_lag:.0f}s)"
                )


def _check_schedule(
    health: Health, client: redis.Redis, schedule: str, now_ms: int, max_lag_seconds: float
) -> None:
    due = int(client.zcount(schedule, "-inf", now_ms))
    first: Any = client.zrange(schedule, 0, 0, withscores=True)
    late = max(0.0, (now_ms - first[0][1]) / 1000) if first else 0.0
    health.schedule = {"due": due, "oldest_seconds": late}
    if late > max_lag_seconds:
        health.problem(
            f"audience schedule: {due} profiles are due, the oldest {late:.0f}s past its "
            f"moment (allowed: {max_lag_seconds:.0f}s): is an audience worker running?"
        )
