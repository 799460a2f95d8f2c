"""The durable buffer between the HTTP edge and the workers: a Redis Stream.

Requests arriving together are committed together: while one script call is in flight the
next requests' events gather, then go in one call (group commit). The script keeps each
event only if its (source, messageId) was not seen within the dedup window, so a client
that resends a batch adds nothing twice, and appends the kept events as one stream entry of
JSON lines. A request is answered only after its call returned, which with an fsync-always
AOF means its events are on disk.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import orjson
import redis
import redis.asyncio as aioredis

JSON_COLUMNS = ("properties", "traits", "context")
TIME_COLUMNS = ("timestamp", "original_timestamp", "sent_at", "received_at")
MAX_EVENTS_PER_CALL = 5_000

_APPEND = """
local ttl = ARGV[1]
local rows, properties, traits, contexts, flags = {}, {}, {}, {}, {}
for i = 2, #ARGV, 5 do
  if redis.call('SET', ARGV[i], '1', 'NX', 'EX', ttl) then
    rows[#rows + 1] = ARGV[i + 1]
    properties[#properties + 1] = ARGV[i + 2]
    traits[#traits + 1] = ARGV[i + 3]
    contexts[#contexts + 1] = ARGV[i + 4]
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
if #rows > 0 then
  redis.call('XADD', KEYS[1], '*', 'n', #rows, 'd', table.concat(rows, '\\n'),
             'p', table.concat(properties, '\\n'), 't', table.concat(traits, '\\n'),
             'c', table.concat(contexts, '\\n'))
end
return flags
"""


def encode_event(row: dict[str, Any]) -> list[bytes]:
    """One event as JSON lines: the scalar columns (times as epoch milliseconds), then each
    JSON column on its own, so the writer hands those to ClickHouse without parsing them."""
    scalars = {key: value for key, value in row.items() if key not in JSON_COLUMNS}
    for column in TIME_COLUMNS:
        value = scalars[column]
        if isinstance(value, datetime):
            scalars[column] = int(value.timestamp() * 1000)
    return [orjson.dumps(scalars), *(orjson.dumps(row[column]) for column in JSON_COLUMNS)]


class EventStream:
    """Appends normalised rows to the events stream, once per (source, message id)."""

    def __init__(self, client: aioredis.Redis, stream: str, prefix: str, dedup_seconds: int):
        self._client = client
        self._stream = stream
        self._prefix = prefix
        self._dedup_seconds = dedup_seconds
        self._script = client.register_script(_APPEND)
        self._pending: list[tuple[list[bytes | str], asyncio.Future[int]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def append(self, rows: list[dict[str, Any]]) -> int:
        """Returns how many rows were new (the others were sent before), once they are stored."""
        if not rows:
            return 0
        args: list[bytes | str] = []
        for row in rows:
            args.append(f"{self._prefix}:dedup:{row['source_id']}:{row['message_id']}")
            args.extend(encode_event(row))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((args, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await future

    async def _flush(self) -> None:
        while self._pending:
            taken, size = 0, 0
            while taken < len(self._pending) and (
                size == 0 or size + len(self._pending[taken][0]) // 5 <= MAX_EVENTS_PER_CALL
            ):
                size += len(self._pending[taken][0]) // 5
                taken += 1
            group, self._pending = self._pending[:taken], self._pending[taken:]
            args: list[Any] = [self._dedup_seconds]
            for request_args, _ in group:
                args.extend(request_args)
            try:
                flags = await self._script(keys=[self._stream], args=args)
            except Exception as error:  # each waiting request answers with it
                for _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            offset = 0
            for request_args, future in group:
                count = len(request_args) // 5
                if not future.done():
                    future.set_result(sum(flags[offset : offset + count]))
                offset += count


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
