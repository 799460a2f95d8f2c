"""Events on the stream as the tracking edge puts them there, for tests of the workers."""

import asyncio
from datetime import UTC, datetime

import redis.asyncio as aioredis

from cdp.settings import Settings
from ingestion.normalize import to_row
from ingestion.segment import SegmentEvent
from ingestion.stream import EventStream


def rows(count: int, prefix: str = "m", **fields: object) -> list[dict]:
    now = datetime.now(UTC)
    return [
        to_row(
            SegmentEvent.model_validate(
                {
                    "type": "track",
                    "event": "Product Viewed",
                    "anonymousId": "a",
                    "messageId": f"{prefix}-{i}",
                    **fields,
                }  # fmt: skip
            ),
            received_at=now,
            source_id="src",
            ip="127.0.0.1",
        )
        for i in range(count)
    ]


def append(settings: Settings, batch: list[dict]) -> int:
    async def run() -> int:
        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            stream = EventStream(client, settings.events_stream, settings.redis_prefix, 3600)
            return await stream.append(batch)
        finally:
            await client.aclose()

    return asyncio.run(run())
