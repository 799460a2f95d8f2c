"""The official browser SDKs, installed from npm (versions pinned in tests/browser), bundled
with esbuild as a shop would, loaded in Debian's Chromium from a page on another origin
(`localhost`, the CDP on `127.0.0.1`, allowed by CDP_CORS_ORIGINS) and pointed at our
server: `@segment/analytics-next` (standard and batching delivery) and
`@rudderstack/analytics-js` (XHR, XHR batches, beacon). Each event is stored once with its
fields, and the browser's anonymous id joins the identified profile."""

from __future__ import annotations

import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page

from cdp.settings import Settings
from cdp.storage import Warehouse
from tests.conftest import API_KEY, WRITE_KEY, LiveServer, wait_for

pytestmark = pytest.mark.e2e

SDKS = Path(__file__).parent.parent / "browser"


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    esbuild = SDKS / "node_modules" / ".bin" / "esbuild"
    if not esbuild.exists():
        pytest.fail("browser SDKs not installed: run ./dev.sh test (npm ci in tests/browser)")
    out = tmp_path_factory.mktemp("bundles")
    built = {}
    for name in ("segment", "rudderstack"):
        target = out / f"{name}.js"
        subprocess.run(
            [str(esbuild), f"{name}.js", "--bundle", "--format=iife", "--log-level=error",
             f"--outfile={target}"],
            cwd=SDKS, check=True,
        )  # fmt: skip
        built[name] = target.read_bytes()
    return built


class ShopPages:
    """The shop's origin: an empty page and the bundled SDKs."""

    def __init__(self, bundles: dict[str, bytes]) -> None:
        files = {f"/{name}.js": body for name, body in bundles.items()}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                body = files.get(self.path.split("?")[0])
                kind = "application/javascript"
                if body is None:
                    body, kind = b"<!doctype html><title>Shop</title><h1>Shop</h1>", "text/html"
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.origin = f"http://localhost:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def shop(bundles: dict[str, bytes]) -> Iterator[ShopPages]:
    pages = ShopPages(bundles)
    yield pages
    pages.server.shutdown()


@pytest.fixture
def settings(settings: Settings, shop: ShopPages) -> Settings:
    return settings.model_copy(update={"cors_origins": [shop.origin]})


@pytest.fixture
def page(browser: Browser, shop: ShopPages) -> Iterator[Page]:  # noqa: F811
    context = browser.new_context()
    opened = context.new_page()
    failures: list[str] = []
    opened.on("requestfailed", lambda request: failures.append(request.url))
    opened.goto(shop.origin + "/")
    yield opened
    context.close()
    assert not [url for url in failures if "127.0.0.1" in url], failures


def stored(warehouse: Warehouse, anonymous: str, user: str) -> list[tuple]:
    return warehouse.query_rows(
        "SELECT type, event, user_id, anonymous_id, toString(properties.category), "
        "toString(traits.email) FROM events WHERE anonymous_id = {a:String} "
        "OR user_id = {u:String} ORDER BY timestamp, type",
        {"a": anonymous, "u": user},
    )


def check_stored_once(
    live_server: LiveServer, warehouse: Warehouse, anonymous: str, user: str
) -> None:
    wait_for(lambda: len(stored(warehouse, anonymous, user)) >= 3)
    rows = stored(warehouse, anonymous, user)
    kinds = sorted((row[0], row[1]) for row in rows)
    assert kinds == [("identify", ""), ("page", ""), ("track", "Product Viewed")], rows
    viewed = next(row for row in rows if row[1] == "Product Viewed")
    assert viewed[3] == anonymous and viewed[4] == "Bags"
    identified = next(row for row in rows if row[0] == "identify")
    assert identified[2] == user and identified[5] == f"{user}@example.com"

    def joined() -> dict[str, Any] | None:
        found = httpx.get(
            f"{live_server.url}/api/v1/profiles", params={"user_id": user},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )  # fmt: skip
        if found.status_code != 200:
            return None
        ids = {(i["kind"], i["value"]) for i in found.json()["identities"]}
        return found.json() if ("anonymous_id", anonymous) in ids else None

    profile = wait_for(joined)
    assert profile["features"]["counts"]["1d"]["events"]["Product Viewed"] == 1


SEGMENT = """async ([host, writeKey, user, strategy]) => {
  const segment = {apiHost: host + '/v1', protocol: 'http', deliveryStrategy: strategy};
  const [analytics] = await AnalyticsBrowser.load(
    {writeKey, cdnSettings: {integrations: {'Segment.io': {apiKey: writeKey}},
                             metrics: {sampleRate: 1, flushTimer: 200}}},
    {integrations: {'Segment.io': segment}});
  await analytics.page('Home');
  await analytics.track('Product Viewed', {product_id: 'sku-1', category: 'Bags'});
  await analytics.identify(user, {email: user + '@example.com'});
  return analytics.user().anonymousId();
}"""


@pytest.mark.parametrize(
    "strategy",
    [{"strategy": "standard", "config": {}},
     {"strategy": "batching", "config": {"size": 2, "timeout": 200}}],
    ids=["standard", "batching"],
)  # fmt: skip
def test_segment_analytics_next(
    page: Page, live_server: LiveServer, warehouse: Warehouse, strategy: dict[str, Any]
) -> None:
    page.add_script_tag(url="/segment.js")
    user = f"user-{uuid.uuid4().hex[:8]}"
    host = live_server.url.removeprefix("http://")
    anonymous = page.evaluate(SEGMENT, [host, WRITE_KEY, user, strategy])
    check_stored_once(live_server, warehouse, anonymous, user)
    # Its telemetry went to /v1/m and was accepted.
    wait_for(lambda: 'route="/v1/m",status="200"' in httpx.get(f"{live_server.url}/metrics").text)


RUDDERSTACK = """([host, writeKey, user, options]) => new Promise((resolve, reject) => {
  const rudder = new RudderAnalytics();
  rudder.load(writeKey, host, {
    ...options,
    getSourceConfig: () => ({source: {id: 'shop', name: 'Shop', workspaceId: 'w',
                                      enabled: true, config: {}, destinations: []}}),
    polyfillIfRequired: false,
    onLoaded: () => {
      rudder.page('Home');
      rudder.track('Product Viewed', {product_id: 'sku-1', category: 'Bags'});
      rudder.identify(user, {email: user + '@example.com'});
      resolve(rudder.getAnonymousId());
    },
  });
  setTimeout(() => reject(new Error('RudderStack SDK did not load')), 10000);
})"""


@pytest.mark.parametrize(
    "options",
    [{},
     {"queueOptions": {"batch": {"enabled": True, "maxItems": 2, "flushInterval": 200}}},
     {"useBeacon": True, "beaconQueueOptions": {"maxItems": 2, "flushQueueInterval": 200}}],
    ids=["xhr", "xhr-batch", "beacon"],
)  # fmt: skip
def test_rudderstack_analytics_js(
    page: Page, live_server: LiveServer, warehouse: Warehouse, options: dict[str, Any]
) -> None:
    page.add_script_tag(url="/rudderstack.js")
    user = f"user-{uuid.uuid4().hex[:8]}"
    anonymous = page.evaluate(RUDDERSTACK, [live_server.url, WRITE_KEY, user, options])
    check_stored_once(live_server, warehouse, anonymous, user)
