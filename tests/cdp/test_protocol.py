"""The front door under abuse: deep nesting, huge and slow headers, slow bodies, bodies
sent without credentials, huge error lists, Host-built redirects, dates out of range; each
gets a precise answer in one JSON shape and costs the server (and other clients) nothing."""

from __future__ import annotations

import base64
import contextlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cdp.settings import Settings
from cdp.storage import Warehouse
from tests.conftest import API_KEY, WRITE_KEY, LiveServer, count_events, wait_for
from tests.servers import ServerProcess


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Short limits, so slow clients are cut off within the test's time.
    return settings.model_copy(update={"header_timeout_seconds": 1.0, "body_timeout_seconds": 1.0})


@pytest.fixture
def http(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, auth=(WRITE_KEY, ""), timeout=10) as client:
        yield client


def nested(levels: int) -> bytes:
    """An object `levels` deep, as JSON text (deeper than a JSON library writes)."""
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


def raw(live_server: LiveServer, data: bytes, read_timeout: float = 10) -> bytes:
    """Send bytes as they are; the whole answer, once the server closes or answers."""
    port = int(live_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)  # the server may answer before it has read everything
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and b"content-length" in answer.lower():
                head, _, body = answer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                if len(body) >= length:
                    break
        return answer


@pytest.mark.parametrize("levels", [40, 300, 1000])
def test_nesting_deeper_than_the_limit_is_refused_and_its_neighbours_kept(
    http: httpx.Client, warehouse: Warehouse, levels: int
) -> None:
    deep = b'{"event": "Deep", "userId": "u", "properties": ' + nested(levels) + b"}"
    single = http.post("/v1/track", content=deep, headers={"Content-Type": "application/json"})
    assert single.status_code == 400
    assert "nested deeper than 32 levels" in single.text
    fine = b'{"type": "track", "event": "Fine", "userId": "u", "properties": ' + nested(20)
    batch = b'{"batch": [' + deep[:-1] + b', "type": "track"}, ' + fine + b"}]}"
    answer = http.post("/v1/batch", content=batch, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and answer.json()["accepted"] == 1
    assert answer.json()["errors"] == ["batch[0]: nested deeper than 32 levels"]
    wait_for(lambda: count_events(warehouse, "event = 'Fine'") == 1)


def test_a_huge_header_is_refused_early_and_others_are_served(
    live_server: LiveServer, http: httpx.Client
) -> None:
    started = time.monotonic()
    header = b"X-Big: " + b"a" * (64 * 1024 * 1024) + b"\r\n"
    answer = raw(live_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b'"error":"request line and headers exceed 16384 bytes"' in answer
    assert time.monotonic() - started < 5
    assert http.get("/healthz").status_code == 200


def test_headers_sent_slowly_are_cut_off(live_server: LiveServer) -> None:
    port = int(live_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answer = b""
        try:
            while time.monotonic() - started < 5:
                sock.sendall(b"X-Slow: 1\r\n")  # a header a while, never the end
                sock.settimeout(0.3)
                try:
                    chunk = sock.recv(65536)
                except TimeoutError:
                    continue
                if not chunk:
                    break
                answer += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert time.monotonic() - started < 3


def test_a_body_sent_slowly_gets_408(live_server: LiveServer) -> None:
    auth = base64.b64encode(f"{WRITE_KEY}:".encode())
    head = (b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Basic " + auth + b"\r\nContent-Length: 100\r\n\r\n{")  # fmt: skip
    started = time.monotonic()
    answer = raw(live_server, head)
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"did not arrive within 1s" in answer
    assert time.monotonic() - started < 5


def test_the_marketer_api_answers_401_before_reading_a_body(live_server: LiveServer) -> None:
    head = (
        b"POST /api/v1/keys HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 104857600\r\n\r\n"
    )  # 100 MB announced, none sent
    started = time.monotonic()
    answer = raw(live_server, head)
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    assert b'"error":"an API key is required: Authorization: Bearer sk_..."' in answer
    assert time.monotonic() - started < 2  # it never waited for the body


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_distinct_huge_authorization_headers_leave_no_memory_behind(tmp_path: Path) -> None:
    # The server in a process of its own, so only its memory is measured; headers up to
    # 2 MB let them reach the write-key check.
    server = ServerProcess(tmp_path / "data", run_writer=True, CDP_MAX_HEADER_BYTES="2097152",
                           CDP_ACCESS_LOG="false")  # fmt: skip
    try:
        with httpx.Client(base_url=server.url, timeout=30) as client:

            def send(index: int) -> int:
                user = f"{index:04d}".encode() + b"k" * (768 * 1024)  # base64: about 1 MB
                header = "Basic " + base64.b64encode(user + b":").decode()
                return client.post("/v1/track", json={"event": "x", "userId": "u"},
                                   headers={"Authorization": header}).status_code  # fmt: skip

            assert {send(index) for index in range(20)} == {401}  # the allocator warms up
            before = rss_bytes(server.process.pid)
            assert {send(index) for index in range(20, 220)} == {401}
            grown = rss_bytes(server.process.pid) - before
    finally:
        server.process.terminate()
        server.process.wait(timeout=60)
    print(f"grew {grown / 1e6:.1f} MB")
    assert grown < 8 * 1024 * 1024, f"grew {grown / 1e6:.1f} MB"


def test_an_answer_lists_the_first_errors_and_counts_them_all(http: httpx.Client) -> None:
    body = b'{"batch":[' + b",".join([b"1"] * 200_000) + b"]}"
    answer = http.post("/v1/batch", content=body, headers={"Content-Type": "text/plain"})
    assert answer.status_code == 400
    assert len(answer.content) < 10_000
    found = answer.json()
    assert found["error_count"] == 200_000 and len(found["errors"]) == 100
    assert found["errors"][0] == "batch[0]: must be a JSON object"


def test_no_redirect_is_built_from_the_host_header(live_server: LiveServer) -> None:
    answer = httpx.get(f"{live_server.url}/sdk/cdp.js/", headers={"Host": "evil.example"})
    assert answer.status_code == 404 and "location" not in answer.headers
    assert answer.json() == {"success": False, "error": "no route /sdk/cdp.js/"}


def test_a_report_since_a_year_out_of_range_is_a_400(live_server: LiveServer) -> None:
    answer = httpx.get(
        f"{live_server.url}/api/v1/reports/overview",
        params={"since": "0999-01-01T00:00:00Z"},
        headers={"Authorization": f"Bearer {API_KEY}"},
    )
    assert answer.status_code == 400
    assert answer.json()["error"] == "since must lie between 1900-01-01 and 2299-12-31"


def test_errors_share_one_json_shape(live_server: LiveServer, http: httpx.Client) -> None:
    api = {"Authorization": f"Bearer {API_KEY}"}
    answers = [
        http.post("/v1/track", content=b"{", headers={"Content-Type": "application/json"}),
        httpx.post(f"{live_server.url}/v1/track", json={"event": "x", "userId": "u"}),
        httpx.post(f"{live_server.url}/api/v1/keys", content=b"{", headers=api),
        httpx.post(f"{live_server.url}/api/v1/keys", json={"scope": "root"}, headers=api),
        httpx.get(f"{live_server.url}/nothing/here"),
        httpx.get(f"{live_server.url}/api/v1/profiles", headers=api),
    ]
    assert [a.status_code for a in answers] == [400, 401, 422, 422, 404, 400]
    for answer in answers:
        body = answer.json()
        assert body["success"] is False and isinstance(body["error"], str), body
    assert answers[3].json()["errors"] == ["body.scope: Input should be 'read', 'write' or 'admin'"]


def test_the_docs_load_their_assets_from_this_server(live_server: LiveServer) -> None:
    for page, asset in (("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")):
        html = httpx.get(f"{live_server.url}{page}").text
        assert "cdn.jsdelivr" not in html and "unpkg" not in html
        src = next(part for part in html.split('"') if part.endswith(asset))
        assert src.startswith("/")
        script = httpx.get(f"{live_server.url}{src}")
        assert script.status_code == 200 and len(script.content) > 100_000


def test_a_value_stored_deeper_than_json_writes_is_shown_clipped(
    live_server: LiveServer, http: httpx.Client, warehouse: Warehouse
) -> None:
    # Events refused at the edge today may have been stored before the limit existed.
    http.post("/v1/identify", json={"userId": "deep-old", "traits": {"plan": "b"}})
    api = httpx.Client(base_url=live_server.url, headers={"Authorization": f"Bearer {API_KEY}"})
    found = wait_for(lambda: (a := api.get("/api/v1/profiles", params={"user_id": "deep-old"}))
                     .status_code == 200 and a.json())  # fmt: skip
    wait_for(lambda: count_events(warehouse, "user_id = 'deep-old'") == 1)
    warehouse.command(
        "INSERT INTO events (message_id, type, event, user_id, source_id, timestamp, "
        "received_at, properties) VALUES ('old-deep', 'track', 'Deep', 'deep-old', 's', "
        "now64(3), now64(3), {p:String})",
        {"p": '{"a":' * 299 + "1" + "}" * 299},  # 299 objects deep, a number at the end
    )
    timeline = api.get(f"/api/v1/profiles/{found['id']}/events")
    assert timeline.status_code == 200
    assert "(nested deeper than 200 levels: not shown)" in timeline.text
    assert api.get(f"/api/v1/profiles/{found['id']}/export").status_code == 200
