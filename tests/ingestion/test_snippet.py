"""The snippet in a real browser: a shop page on one origin, the CDP on another, headless
Chromium (Debian's package) driven by Playwright."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from playwright.sync_api import Browser, Page

from cdp.storage import Warehouse
from tests.conftest import API_KEY, WRITE_KEY, LiveServer, count_events, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def shop(live_server: LiveServer) -> Iterator[str]:
    """A shop's pages on their own origin, embedding the snippet from the CDP's."""

    class Pages(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            consent = ' data-consent="required"' if "consent" in self.path else ""
            html = (
                "<!doctype html><html><head><title>Shoe shop</title>"
                f'<script src="{live_server.url}/sdk/cdp.js" data-write-key="{WRITE_KEY}"'
                f"{consent} async></script></head><body><h1>Shoes</h1></body></html>"
            )
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html.encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Pages)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """Headless Chromium as it is: its user agent says `HeadlessChrome`, a bot's (stored and
    counted, but no shopper: no profile cart, no audience)."""
    context = browser.new_context()
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def shopper(browser: Browser) -> Iterator[Page]:
    """The same browser with the user agent of a shopper's Chrome."""
    agent = (f"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
             f"Chrome/{browser.version} Safari/537.36")  # fmt: skip
    context = browser.new_context(user_agent=agent)
    opened = context.new_page()
    yield opened
    context.close()


def loaded(page: Page, url: str) -> None:
    page.goto(url)
    page.wait_for_function("window.cdp && window.cdp.loaded === true")


def test_page_track_and_identify_reach_clickhouse(
    page: Page, shop: str, warehouse: Warehouse
) -> None:
    loaded(page, f"{shop}/c/shoes?utm_source=newsletter&utm_campaign=autumn")
    page.evaluate("cdp.track('Product Viewed', {product_id: 'sku-1', category: 'Shoes'})")
    page.evaluate("cdp.identify('user-42', {email: 'sam@example.com'})")
    anonymous = page.evaluate("cdp.anonymousId()")
    cookie = {c["name"]: c["value"] for c in page.context.cookies()}["cdp_aid"]
    assert cookie == anonymous

    wait_for(lambda: count_events(warehouse, "anonymous_id = {a:String}", {"a": anonymous}) == 3)
    rows = warehouse.query_rows(
        "SELECT type, event, user_id, page_path, utm_source, utm_campaign, browser, "
        "toString(properties.category) FROM events WHERE anonymous_id = {a:String} "
        "ORDER BY timestamp",
        {"a": anonymous},
    )
    assert [r[0] for r in rows] == ["page", "track", "identify"]
    assert rows[0][3:6] == ("/c/shoes", "newsletter", "autumn")
    assert rows[1][1] == "Product Viewed" and rows[1][7] == "Shoes"
    assert rows[2][2] == "user-42"
    assert rows[0][6] == "HeadlessChrome"


def test_nothing_is_sent_or_kept_before_consent(
    page: Page, shop: str, warehouse: Warehouse
) -> None:
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/v1/" in r.url else None)
    loaded(page, f"{shop}/consent")
    page.evaluate("cdp.track('Product Viewed', {product_id: 'sku-2'})")
    page.wait_for_timeout(1500)  # longer than the snippet's flush interval
    assert sent == []
    assert "cdp_aid" not in {c["name"] for c in page.context.cookies()}

    page.evaluate("cdp.consent(true)")
    anonymous = page.evaluate("cdp.anonymousId()")
    # The held page and track, and the consent itself, recorded for the profile.
    wait_for(lambda: count_events(warehouse, "anonymous_id = {a:String}", {"a": anonymous}) == 3)
    assert "cdp_aid" in {c["name"] for c in page.context.cookies()}


def test_a_failed_send_is_retried_and_stored_once(
    page: Page, shop: str, warehouse: Warehouse
) -> None:
    attempts: list[int] = []

    def flaky(route, request) -> None:  # type: ignore[no-untyped-def]
        attempts.append(1)
        if len(attempts) == 1:
            route.fulfill(status=503, body='{"success": false}')
        else:
            route.continue_()

    page.route("**/v1/batch", flaky)
    loaded(page, f"{shop}/p/sku-3")
    anonymous = page.evaluate("cdp.anonymousId()")
    wait_for(
        lambda: count_events(warehouse, "anonymous_id = {a:String}", {"a": anonymous}) == 1,
        sleep=lambda seconds: page.wait_for_timeout(seconds * 1000),
    )
    assert len(attempts) >= 2


def test_reset_starts_a_new_anonymous_id(page: Page, shop: str, warehouse: Warehouse) -> None:
    loaded(page, shop)
    before = page.evaluate("cdp.anonymousId()")
    page.evaluate("cdp.identify('user-7'); cdp.reset(); cdp.track('Product Added')")
    after = page.evaluate("cdp.anonymousId()")
    assert after != before
    wait_for(lambda: count_events(warehouse, "anonymous_id = {a:String}", {"a": after}) == 1)
    [(user_id,)] = warehouse.query_rows(
        "SELECT user_id FROM events WHERE anonymous_id = {a:String}", {"a": after}
    )
    assert user_id == ""


def test_events_queued_when_leaving_the_page_are_sent(
    page: Page, shop: str, warehouse: Warehouse
) -> None:
    loaded(page, shop)
    anonymous = page.evaluate("cdp.anonymousId()")
    page.evaluate("cdp.track('Checkout Started')")
    page.goto("about:blank")  # before the flush timer fires: pagehide hands it to sendBeacon
    wait_for(
        lambda: (
            count_events(
                warehouse,
                "anonymous_id = {a:String} AND event = 'Checkout Started'",
                {"a": anonymous},
            )
            == 1
        )
    )


def profile(live_server: LiveServer, ready=lambda p: True, **identifier: str) -> dict:  # type: ignore[no-untyped-def]
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def found() -> dict | None:
        response = httpx.get(
            f"{live_server.url}/api/v1/profiles", params=identifier, headers=headers
        )
        return response.json() if response.status_code == 200 and ready(response.json()) else None

    return wait_for(found)


def test_consent_given_in_the_banner_is_on_the_profile(
    page: Page, shop: str, live_server: LiveServer
) -> None:
    loaded(page, f"{shop}/consent")
    page.evaluate("cdp.consent(true, {web: 'granted', email: {marketing: 'granted'}})")
    anonymous = page.evaluate("cdp.anonymousId()")
    consent = profile(live_server, lambda p: bool(p["consent"]), anonymous_id=anonymous)["consent"]
    assert consent["web"]["marketing"]["status"] == "granted"
    assert consent["email"]["marketing"]["source"] == "track"

    page.evaluate("cdp.consent(false, {email: 'denied'})")  # withdrawn: recorded, then silent
    withdrawn = profile(
        live_server,
        lambda p: p["consent"]["email"]["marketing"]["status"] == "revoked",
        anonymous_id=anonymous,
    )
    assert withdrawn["consent"]["web"]["marketing"]["status"] == "granted"
    assert "cdp_aid" not in {c["name"] for c in page.context.cookies()}


def test_two_people_on_one_computer_with_reset_are_two_profiles(
    shopper: Page, shop: str, live_server: LiveServer
) -> None:
    page = shopper
    loaded(page, f"{shop}/p/sku-1")
    page.evaluate("cdp.track('Product Added', {product_id: 'sku-1'})")
    page.evaluate("cdp.identify('ann', {email: 'ann@example.com'})")
    first_cookie = page.evaluate("cdp.anonymousId()")
    page.evaluate("cdp.reset()")  # Ann logs out
    loaded(page, f"{shop}/p/sku-2")
    page.evaluate("cdp.track('Product Added', {product_id: 'sku-2'})")
    page.evaluate("cdp.identify('bob', {email: 'bob@example.com'})")
    second_cookie = page.evaluate("cdp.anonymousId()")

    ann = profile(live_server, lambda p: p["features"]["events"] == 3, user_id="ann")
    bob = profile(live_server, lambda p: p["features"]["events"] == 3, user_id="bob")
    assert ann["id"] != bob["id"]
    assert {i["value"] for i in ann["identities"]} == {first_cookie, "ann", "ann@example.com"}
    assert {i["value"] for i in bob["identities"]} == {second_cookie, "bob", "bob@example.com"}
    assert [item["product_id"] for item in ann["features"]["cart"]] == ["sku-1"]
    assert [item["product_id"] for item in bob["features"]["cart"]] == ["sku-2"]


def test_a_headless_browser_is_a_bot_whose_cart_no_profile_keeps(
    page: Page, shop: str, live_server: LiveServer
) -> None:
    loaded(page, f"{shop}/p/sku-1")
    page.evaluate("cdp.track('Product Added', {product_id: 'sku-1'})")
    anonymous = page.evaluate("cdp.anonymousId()")
    crawler = profile(live_server, lambda p: p["features"]["events"] == 2, anonymous_id=anonymous)
    assert crawler["features"]["cart"] == []
