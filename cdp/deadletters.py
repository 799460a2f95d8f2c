"""Dead letters: stream entries a worker could not process after a bounded number of tries,
set aside with the error so the entries behind them go on. Each is one entry in the Redis
stream `<prefix>:stream:dead_letters`, written in the same transaction that acknowledges
the original, so an entry is either still pending or set aside, never both, never lost.
A worker whose entries name many things (the audience worker: profiles) sets aside the one
that fails, not the entry: its letter has no entry id, and its payload names it.
Operators see them in `/metrics`, `/healthz` and `GET /api/v1/dead-letters`."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from prometheus_client import Counter

from cdp.storage import text
from cdp.streams import entry_id

SET_ASIDE = Counter(
    "cdp_dead_letters", "Stream entries set aside after failing every try, by group", ["group"]
)
PAYLOAD_LIMIT = 64 * 1024  # characters of each field kept; the entry itself is at most 500 KB
KEPT = 100_000  # dead letters: a failure that repeats for every profile would grow them forever


@dataclass(frozen=True)
class DeadLetter:
    id: str  # the dead-letter entry's id
    stream: str  # where the entry came from
    group: str  # the worker that gave up on it
    entry_id: str
    error: str
    tries: int
    at: int  # epoch ms
    payload: dict[str, str]


def dead_letter_stream(stream: str) -> str:
    """`<prefix>:stream:dead_letters` beside `<prefix>:stream:<name>`."""
    return stream.rpartition(":")[0] + ":dead_letters"


def set_aside(
    client: redis.Redis,
    stream: str,
    group: str,
    entry: tuple[Any, dict[bytes, bytes] | None],
    error: BaseException,
    tries: int,
) -> None:
    """Keep the entry with the reason, and acknowledge it, in one transaction."""
    entry_id, fields = entry
    payload = {text(k): text_of(v)[:PAYLOAD_LIMIT] for k, v in (fields or {}).items()}
    pipe = client.pipeline(transaction=True)
    add_letter(pipe, stream, group, text(entry_id), error, tries, payload)
    pipe.xack(stream, group, entry_id)
    pipe.execute()
    SET_ASIDE.labels(group).inc()


def add_letter(
    pipe: redis.client.Pipeline, stream: str, group: str, entry_id: str, error: BaseException,
    tries: int, payload: dict[str, str],
) -> None:  # fmt: skip
    """Queue a dead letter on the caller's transaction: what failed where, and what to look
    at (an entry's fields; for a part of an entry, what names that part). The newest `KEPT`
    are kept; `cdp_dead_letters` counts them all."""
    pipe.xadd(dead_letter_stream(stream), {
        "stream": stream,
        "group": group,
        "entry_id": entry_id,
        "error": f"{type(error).__name__}: {error}"[:2000],
        "tries": str(tries),
        "at": str(int(time.time() * 1000)),
        "payload": orjson.dumps(payload),
    }, maxlen=KEPT, approximate=False)  # fmt: skip


def text_of(value: bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def count(client: redis.Redis, stream: str) -> int:
    return int(client.xlen(stream))


def listed(
    client: redis.Redis, stream: str, limit: int = 100, before: str | None = None
) -> list[DeadLetter]:
    """The newest dead letters first; `before` pages on from an id given earlier."""
    end = "+"
    if before:
        ms, seq = entry_id(before)
        if (ms, seq) == (0, 0):
            return []  # nothing comes before the first possible id
        if ms < 2**64 and seq < 2**64:  # else: past any id there can be
            end = f"({ms}-{seq}"
    rows: Any = client.xrevrange(stream, max=end, min="-", count=limit)
    return [_letter(entry_id, fields) for entry_id, fields in rows]


def _letter(entry_id: Any, fields: dict[bytes, bytes]) -> DeadLetter:
    values = {text(k): text_of(v) for k, v in fields.items()}
    return DeadLetter(
        id=text(entry_id),
        stream=values.get("stream", ""),
        group=values.get("group", ""),
        entry_id=values.get("entry_id", ""),
        error=values.get("error", ""),
        tries=int(values.get("tries", "0") or 0),
        at=int(values.get("at", "0") or 0),
        payload=orjson.loads(values.get("payload", "{}")),
    )
