"""What an operator sees: one access-log line per request (never a key), requests by route
and status in /metrics (unrouted paths too), JSON log lines on request."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import httpx
import orjson
import pytest
from prometheus_client import REGISTRY
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from cdp.access import JSONFormatter
from cdp.credentials import source_id
from cdp.metrics import MULTIPROCESS_ENV, _summed
from cdp.settings import Settings
from tests.conftest import API_KEY, WRITE_KEY, LiveServer, wait_for
from tests.servers import free_port
from tests.streams import append, rows


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

    def logged() -> list[str]:  # a line is written once its answer is sent: maybe after
        return [r.getMessage() for r in caplog.records if r.name == "cdp.access"]

    wait_for(lambda: len(logged()) >= 2, timeout=5)
    lines = logged()
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


def served(metrics: str, name: str, **labels: str) -> float:
    """A sample's value in an exposition (0 when absent)."""
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_the_worker_processes_counters_are_in_metrics(live_server: LiveServer) -> None:
    """The profile and audience workers run in processes of their own: what they count is
    served by the server's /metrics, beside its own (this test's process serves, so what
    it counted itself is taken off)."""
    order = {"type": "track", "event": "Order Completed", "userId": "metrics-buyer",
             "properties": {"order_id": "o-1", "revenue": 30}}  # fmt: skip
    assert httpx.post(f"{live_server.url}/v1/batch", json={"batch": [order]},
                      auth=(WRITE_KEY, "")).status_code == 200  # fmt: skip
    wanted = [
        [("cdp_profile_events_total", {"outcome": "applied"})],
        [("cdp_audience_evaluations_total", {"cause": "event"})],
        # recent-purchasers entered for the event: by its evaluation, or by the look the
        # start's backfill of the predefined audiences (new to this shop) asked for if it
        # found the order in ClickHouse first (a profile never evaluated enters for events)
        [("cdp_audience_transitions_total", {"cause": "event", "change": "enter"})],
    ]  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        metrics = httpx.get(f"{live_server.url}/metrics").text
        theirs = [sum(served(metrics, name, **labels) - (REGISTRY.get_sample_value(name, labels)
                                                         or 0) for name, labels in samples)
                  for samples in wanted]  # fmt: skip
        if all(value >= 1 for value in theirs) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(value >= 1 for value in theirs), list(zip(wanted, theirs, strict=True))
    names = [family.name for family in text_string_to_metric_families(metrics)]
    assert len(names) == len(set(names))  # one family a name, merged


def test_one_series_counted_here_and_by_a_worker_is_served_once_summed() -> None:
    """prometheus_client gives this process's labels in their declared order and a
    worker's (read from its file) sorted: the same series either way."""
    mine = Metric("cdp_audience_transitions", "enters and exits", "counter")
    mine.add_sample("cdp_audience_transitions_total", {"change": "enter", "cause": "event"}, 2)
    theirs = Metric("cdp_audience_transitions", "enters and exits", "counter")
    theirs.add_sample("cdp_audience_transitions_total", {"cause": "event", "change": "enter"}, 1)
    merged = _summed(mine, theirs)
    assert [(s.labels, s.value) for s in merged.samples] == [
        ({"cause": "event", "change": "enter"}, 3.0)
    ]


def test_a_worker_run_alone_serves_its_own_metrics(settings: Settings) -> None:
    """As docker-compose runs the profile worker (a service of its own, no `cdp serve` to
    gather its counts): `--metrics-port` serves what it counted."""
    port = free_port()
    env = {**os.environ, "CDP_REDIS_URL": settings.redis_url,
           "CDP_REDIS_PREFIX": settings.redis_prefix, "CDP_DATA_DIR": str(settings.data_dir),
           "CDP_WRITE_KEYS": WRITE_KEY}  # fmt: skip
    env.pop(MULTIPROCESS_ENV, None)
    append(settings, rows(3, anonymousId="counted-alone"))
    worker = subprocess.Popen(
        [sys.executable, "-m", "cdp", "profile-worker", "--metrics-port", str(port),
         "--log-level", "warning"],
        env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:

        def applied() -> float:
            assert worker.poll() is None, "the worker exited"
            try:
                metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
            except httpx.HTTPError:
                return 0.0
            return served(metrics, "cdp_profile_events_total", outcome="applied")

        assert wait_for(lambda: applied() >= 3, timeout=60, interval=0.2)
        assert applied() == 3  # its own count: the test's process counted nothing there
    finally:
        worker.terminate()
        worker.wait(timeout=30)
