"""The durable buffer between the HTTP edge and the workers: a Redis Stream.

`append` stores a request's events in one atomic script: each event is added only if its
(source, messageId) was not seen within the dedup window, so a client that resends a batch
adds nothing twice. The HTTP answer waits for it, which with an fsync-always AOF means an
acknowledged event is on disk.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

JSON_COLUMNS = ("properties", "traits", "context")

_APPEND = """
local ttl = ARGV[1]
local added = 0
for i = 2, #ARGV, 5 do
  if redis.call('SET', ARGV[i], '1', 'NX', 'EX', ttl) then
    redis.call('XADD', KEYS[1], '*', 'r', ARGV[i + 1], 'p', ARGV[i + 2], 't', ARGV[i + 3],
                'c', ARGV[i + 4])
    added = added + 1
  end
end
return added
"""


@dataclass(frozen=True)
class StreamEntry:
    entry_id: bytes
    row: dict[str, Any]


def encode_row(row: dict[str, Any]) -> list[bytes]:
    """Scalar columns as one JSON object (times as epoch milliseconds), JSON columns apart so
    the writer hands them to ClickHouse without parsing them again."""
    scalars = {
        key: _millis(value) if isinstance(value, datetime) else value
        for key, value in row.items()
        if key not in JSON_COLUMNS
    }
    return [orjson.dumps(scalars), *(orjson.dumps(row[column]) for column in JSON_COLUMNS)]


def decode_entry(entry_id: bytes, fields: dict[bytes, bytes]) -> StreamEntry:
    row = orjson.loads(fields[b"r"])
    row["properties"] = fields[b"p"].decode()
    row["traits"] = fields[b"t"].decode()
    row["context"] = fields[b"c"].decode()
    return StreamEntry(entry_id, row)


class EventStream:
    """Appends normalised rows to the events stream, once per (source, message id)."""

    def __init__(self, client: aioredis.Redis, stream: str, prefix: str, dedup_seconds: int):
        self._client = client
        self._stream = stream
        self._prefix = prefix
        self._dedup_seconds = dedup_seconds
        self._script = client.register_script(_APPEND)

    async def append(self, rows: list[dict[str, Any]]) -> int:
        """Returns how many rows were new; the others were sent before."""
        if not rows:
            return 0
        args: list[Any] = [self._dedup_seconds]
        for row in rows:
            args.append(f"{self._prefix}:dedup:{row['source_id']}:{row['message_id']}")
            args.extend(encode_row(row))
        return int(await self._script(keys=[self._stream], args=args))


def trim_consumed(client: redis.Redis, stream: str) -> int:
    """Drop entries every consumer group has read and acknowledged; returns how many."""
    try:
        groups = client.xinfo_groups(stream)
    except redis.ResponseError:
        return 0
    if not groups:
        return 0
    floor: tuple[int, int] | None = None
    for group in groups:
        candidates = [_entry_id(group["last-delivered-id"])]
        if group["pending"]:
            summary = client.xpending(stream, group["name"])
            candidates.append(_entry_id(summary["min"]))
        lowest = min(candidates)
        floor = lowest if floor is None else min(floor, lowest)
    if floor is None or floor == (0, 0):
        return 0
    return int(client.xtrim(stream, minid=f"{floor[0]}-{floor[1]}", approximate=False))


def _entry_id(value: bytes | str) -> tuple[int, int]:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _millis(value: datetime) -> int:
    return int(value.timestamp() * 1000)
