from datetime import UTC, datetime, timedelta

from ingestion.normalize import corrected_timestamp, describe_user_agent, millis, to_row
from ingestion.segment import SegmentEvent

RECEIVED = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)


def event(**fields: object) -> SegmentEvent:
    return SegmentEvent.model_validate(
        {"type": "track", "event": "X", "anonymousId": "a", **fields}
    )


def row(**fields: object) -> dict:
    made = to_row(event(**fields), received_at=RECEIVED, source_id="src", ip="10.0.0.1")
    return made.columns


def test_device_clock_skew_is_corrected_from_sent_at() -> None:
    # The device clock is an hour fast: it stamped the event 5 s before sending it.
    skewed = event(timestamp="2026-11-22T12:59:55Z", sentAt="2026-11-22T13:00:00Z")
    assert corrected_timestamp(skewed, RECEIVED) == RECEIVED - timedelta(seconds=5)


def test_without_sent_at_the_client_timestamp_stands_and_without_any_it_is_receipt() -> None:
    assert corrected_timestamp(event(timestamp="2026-11-01T00:00:00Z"), RECEIVED) == datetime(
        2026, 11, 1, tzinfo=UTC
    )
    assert corrected_timestamp(event(), RECEIVED) == RECEIVED


def test_original_timestamp_is_kept_beside_the_corrected_one() -> None:
    stored = row(timestamp="2026-11-22T12:59:55Z", sentAt="2026-11-22T13:00:00Z")
    assert stored["original_timestamp"] == millis(datetime(2026, 11, 22, 12, 59, 55, tzinfo=UTC))
    assert stored["received_at"] == millis(RECEIVED)
    assert stored["timestamp"] == millis(RECEIVED - timedelta(seconds=5))


def test_message_id_is_generated_when_missing_and_kept_when_sent() -> None:
    first, second = row(), row()
    assert first["message_id"] and first["message_id"] != second["message_id"]
    assert row(messageId="m-1")["message_id"] == "m-1"


def test_utm_parameters_come_from_the_page_url_and_context_campaign_wins() -> None:
    url = "https://shop.example/c/bags?utm_source=google&utm_medium=cpc&utm_campaign=brand"
    stored = row(context={"page": {"url": url, "path": "/c/bags"}, "campaign": {"name": "sale"}})
    assert (stored["utm_source"], stored["utm_medium"], stored["utm_campaign"]) == (
        "google",
        "cpc",
        "sale",
    )
    assert stored["page_path"] == "/c/bags" and stored["page_url"] == url


def test_user_agent_is_parsed_and_bots_flagged() -> None:
    assert describe_user_agent(CHROME) == ("Chrome", "Windows", "desktop", False)
    assert describe_user_agent(IPHONE)[2:] == ("mobile", False)
    googlebot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    assert describe_user_agent(googlebot)[3] is True
    assert describe_user_agent("curl/8.5.0")[3] is True
    assert describe_user_agent("") == ("", "", "", False)


def test_context_ip_wins_over_the_connection_address() -> None:
    assert row()["ip"] == "10.0.0.1"
    assert row(context={"ip": "192.0.2.7"})["ip"] == "192.0.2.7"


def test_hostile_context_shapes_do_not_break_normalisation() -> None:
    stored = row(context={"page": "not an object", "userAgent": 5, "campaign": ["x"]})
    assert stored["page_url"] == "" and stored["user_agent"] == "" and stored["utm_source"] == ""
