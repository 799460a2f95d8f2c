"""What an operator sees: one access-log line per request (never a key), requests by route
and status in /metrics (unrouted paths too), JSON log lines on request."""

from __future__ import annotations

import logging

import httpx
import orjson
import pytest

from cdp.access import JSONFormatter
from cdp.credentials import source_id
from cdp.settings import Settings
from tests.conftest import API_KEY, WRITE_KEY, LiveServer


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"log_format": "json"})


def test_each_request_is_one_line_naming_the_write_key_by_its_id(
    live_server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="cdp.access")
    track = httpx.post(f"{live_server.url}/v1/t", json={"event": "Viewed", "userId": "u"},
                       auth=(WRITE_KEY, ""))  # fmt: skip
    assert track.status_code == 200
    httpx.get(f"{live_server.url}/nothing")
    lines = [r.getMessage() for r in caplog.records if r.name == "cdp.access"]
    assert len(lines) == 2, lines
    assert lines[0].startswith('127.0.0.1 "POST /v1/t" 200 ')
    assert lines[0].endswith(f" 16B key={source_id(WRITE_KEY)}")
    assert lines[1].startswith('127.0.0.1 "GET /nothing" 404 ')
    assert all(WRITE_KEY not in line for line in lines)
    record = next(r for r in caplog.records if r.name == "cdp.access")
    fields = orjson.loads(JSONFormatter().format(record))
    assert fields["method"] == "POST" and fields["path"] == "/v1/t" and fields["status"] == 200
    assert fields["bytes"] == 16 and fields["write_key_id"] == source_id(WRITE_KEY)
    assert fields["duration_ms"] > 0 and fields["level"] == "info"


def test_requests_by_route_and_status_in_metrics(live_server: LiveServer) -> None:
    api = {"Authorization": f"Bearer {API_KEY}"}
    httpx.get(f"{live_server.url}/wp-login.php")
    httpx.get(f"{live_server.url}/api/v1/profiles/nobody", headers=api)
    httpx.post(f"{live_server.url}/v1/batch", json={"batch": []}, auth=(WRITE_KEY, ""))
    metrics = httpx.get(f"{live_server.url}/metrics").text
    assert 'cdp_http_requests_total{method="GET",route="unrouted",status="404"}' in metrics
    assert ('cdp_http_requests_total{method="GET",route="/api/v1/profiles/{profile_id}",'
            'status="404"}') in metrics  # fmt: skip
    assert 'cdp_http_requests_total{method="POST",route="/v1/batch",status="200"}' in metrics
    assert 'cdp_http_request_seconds_bucket{le="0.001",route="unrouted"}' in metrics
    assert "wp-login" not in metrics  # a path never becomes a label of its own
