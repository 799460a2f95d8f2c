"""The durable buffer between the HTTP edge and the workers: a Redis Stream.

Requests arriving together are committed together: while script calls are in flight the
next requests' events gather, then go in one call (group commit). The script keeps each
event only if its (source, messageId) was not seen within the dedup window, so a client
that resends a batch adds nothing twice, and appends the kept events as one stream entry of
JSON lines. A request is answered only after its call returned, which with an fsync-always
AOF means its events are on disk.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import redis.asyncio as aioredis

from ingestion.normalize import Row

MAX_EVENTS_PER_CALL = 5_000
# A few calls overlap, so one call's fsync does not hold up the next requests; Valkey's own
# event loop then commits what arrived together.
MAX_CALLS_IN_FLIGHT = 4
# A request this large is a batch of its own: it goes straight out, on its own connection.
OWN_CALL_EVENTS = 20

# ARGV: the dedup window in seconds, then five per request: its dedup keys, scalar rows,
# properties, traits and contexts, each as lines. A request without duplicates (the usual
# case) is appended as it came; otherwise only its new lines are kept.
_APPEND = """
local ttl = ARGV[1]
local rows, properties, traits, contexts, counts = {}, {}, {}, {}, {}
local function lines(text)
  local out = {}
  for line in string.gmatch(text, '[^\\n]+') do out[#out + 1] = line end
  return out
end
for i = 2, #ARGV, 5 do
  local keys, fresh = lines(ARGV[i]), {}
  for k = 1, #keys do
    if redis.call('SET', keys[k], '1', 'NX', 'EX', ttl) then fresh[#fresh + 1] = k end
  end
  if #fresh == #keys then
    rows[#rows + 1] = ARGV[i + 1]
    properties[#properties + 1] = ARGV[i + 2]
    traits[#traits + 1] = ARGV[i + 3]
    contexts[#contexts + 1] = ARGV[i + 4]
  elseif #fresh > 0 then
    local r, p = lines(ARGV[i + 1]), lines(ARGV[i + 2])
    local t, c = lines(ARGV[i + 3]), lines(ARGV[i + 4])
    for _, k in ipairs(fresh) do
      rows[#rows + 1] = r[k]
      properties[#properties + 1] = p[k]
      traits[#traits + 1] = t[k]
      contexts[#contexts + 1] = c[k]
    end
  end
  counts[#counts + 1] = #fresh
end
if #rows > 0 then
  local total = 0
  for _, n in ipairs(counts) do total = total + n end
  redis.call('XADD', KEYS[1], '*', 'n', total, 'd', table.concat(rows, '\\n'),
             'p', table.concat(properties, '\\n'), 't', table.concat(traits, '\\n'),
             'c', table.concat(contexts, '\\n'))
end
return counts
"""


def encode_rows(rows: list[Row], dedup_prefix: str) -> list[bytes]:
    """A request's rows as the script's five arguments. JSON never holds a raw newline, and
    message ids are validated free of control characters, so lines split cleanly."""
    dumps = orjson.dumps
    return [
        "\n".join(
            f"{dedup_prefix}{row.columns['source_id']}:{row.columns['message_id']}" for row in rows
        ).encode(),
        b"\n".join([dumps(row.columns) for row in rows]),
        b"\n".join([dumps(row.properties) for row in rows]),
        b"\n".join([dumps(row.traits) for row in rows]),
        b"\n".join([dumps(row.context) for row in rows]),
    ]


class EventStream:
    """Appends normalised rows to the events stream, once per (source, message id)."""

    def __init__(self, client: aioredis.Redis, stream: str, prefix: str, dedup_seconds: int):
        self._client = client
        self._stream = stream
        self._dedup_prefix = f"{prefix}:dedup:"
        self._dedup_seconds = dedup_seconds
        self._script = client.register_script(_APPEND)
        self._pending: list[tuple[int, list[bytes], asyncio.Future[int]]] = []
        self._flushers: set[asyncio.Task[None]] = set()

    async def append(self, rows: list[Row]) -> int:
        """Returns how many rows were new (the others were sent before), once they are stored."""
        if not rows:
            return 0
        encoded = encode_rows(rows, self._dedup_prefix)
        if len(rows) >= OWN_CALL_EVENTS:
            [count] = await self._script(keys=[self._stream], args=[self._dedup_seconds, *encoded])
            return int(count)
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((len(rows), encoded, future))
        if len(self._flushers) < MAX_CALLS_IN_FLIGHT:
            task = asyncio.create_task(self._flush())
            self._flushers.add(task)
            task.add_done_callback(self._flushers.discard)
        return await future

    async def _flush(self) -> None:
        while self._pending:
            taken, size = 0, 0
            while taken < len(self._pending) and (
                size == 0 or size + self._pending[taken][0] <= MAX_EVENTS_PER_CALL
            ):
                size += self._pending[taken][0]
                taken += 1
            group, self._pending = self._pending[:taken], self._pending[taken:]
            args: list[Any] = [self._dedup_seconds]
            for _, request_args, _ in group:
                args.extend(request_args)
            try:
                counts = await self._script(keys=[self._stream], args=args)
            except Exception as error:  # each waiting request answers with it
                for _, _, future in group:
                    if not future.done():
                        future.set_exception(error)
                continue
            for (_, _, future), count in zip(group, counts, strict=True):
                if not future.done():
                    future.set_result(int(count))
