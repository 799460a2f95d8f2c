"""The tracking handler on its own: pass-through of other paths, and a 503 (not a 500) when
the event buffer is down, so SDKs retry."""

import asyncio
from types import SimpleNamespace

import httpx
import redis.asyncio as aioredis

from ingestion.routes import Tracking, TrackingAPI
from ingestion.stream import EventStream
from tests.conftest import WRITE_KEY


async def fallback(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 418, "headers": []})
    await send({"type": "http.response.body", "body": b"framework"})


def edge(redis_url: str) -> TrackingAPI:
    client = aioredis.Redis.from_url(redis_url)
    tracking = Tracking(
        write_keys=frozenset({WRITE_KEY}),
        stream=EventStream(client, "s", "p", 60),
        max_event_bytes=32 * 1024,
        max_batch_bytes=500 * 1024,
        cors_origins=frozenset({"https://shop.example"}),
    )
    return TrackingAPI(fallback, SimpleNamespace(tracking=tracking))


async def call(app: TrackingAPI, method: str, path: str, **kwargs: object) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=("192.0.2.1", 1234))
    async with httpx.AsyncClient(transport=transport, base_url="http://cdp") as client:
        return await client.request(method, path, **kwargs)  # type: ignore[arg-type]


def test_a_down_event_buffer_answers_503_with_retry_after(tmp_path) -> None:  # type: ignore[no-untyped-def]
    app = edge(f"unix://{tmp_path}/nothing-listens-here.sock")
    response = asyncio.run(
        call(app, "POST", "/v1/track", json={"event": "X", "userId": "u"}, auth=(WRITE_KEY, ""))
    )
    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.json() == {"success": False, "error": "event buffer unavailable, retry later"}


def test_other_paths_and_methods_reach_the_framework(redis_url: str) -> None:
    app = edge(redis_url)
    assert asyncio.run(call(app, "GET", "/v1/track")).status_code == 418
    assert asyncio.run(call(app, "POST", "/api/v1/reports/overview")).status_code == 418


def test_cors_only_for_allowed_origins(redis_url: str) -> None:
    app = edge(redis_url)
    preflight = {"Origin": "https://shop.example", "Access-Control-Request-Method": "POST"}
    allowed = asyncio.run(call(app, "OPTIONS", "/v1/batch", headers=preflight))
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    other = {**preflight, "Origin": "https://evil.example"}
    refused = asyncio.run(call(app, "OPTIONS", "/v1/batch", headers=other))
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
