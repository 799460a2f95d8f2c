"""Turns a validated Segment event into one warehouse row: server receive time, clock-skew
correction, a message id when the client sent none, UTM parameters, the parsed user agent
and a bot flag."""

from __future__ import annotations

import uuid
from datetime import datetime
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import ua_parser
from ua_parser import parse as parse_user_agent

from ingestion.segment import SegmentEvent

UTM_FIELDS = ("source", "medium", "campaign", "term", "content")
# Clients ua-parser does not call spiders but that no shopper uses.
_BOT_MARKERS = ("bot", "crawler", "spider", "headlesschrome", "python-requests", "curl/", "wget")


class Row(NamedTuple):
    """One `events` row: the scalar columns (times in epoch milliseconds, UTC) and the three
    JSON columns apart, as the stream carries them."""

    columns: dict[str, Any]
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]


def to_row(event: SegmentEvent, *, received_at: datetime, source_id: str, ip: str) -> Row:
    """The `events` row for one event; `received_at` is the server's clock (UTC)."""
    context = event.context or {}
    properties = event.properties or {}
    page = _dict(context.get("page"))
    page_url = _text(page.get("url")) or _text(properties.get("url"))
    user_agent = _text(context.get("userAgent"))
    agent = describe_user_agent(user_agent[:1024])
    utm = _utm(context.get("campaign"), page_url)
    happened = event.timestamp or event.original_timestamp
    columns = {
        "message_id": event.message_id or str(uuid.uuid4()),
        "type": event.type,
        "event": event.event or "",
        "name": event.name or "",
        "anonymous_id": event.anonymous_id or "",
        "user_id": event.user_id or "",
        "group_id": event.group_id or "",
        "previous_id": event.previous_id or "",
        "timestamp": millis(corrected_timestamp(event, received_at)),
        "original_timestamp": millis(happened) if happened else None,
        "sent_at": millis(event.sent_at) if event.sent_at else None,
        "received_at": millis(received_at),
        "source_id": source_id,
        "ip": _text(context.get("ip")) or ip,
        "user_agent": user_agent,
        "browser": agent[0],
        "os": agent[1],
        "device_type": agent[2],
        "is_bot": agent[3],
        "page_url": page_url,
        "page_path": _text(page.get("path")) or _text(properties.get("path")),
        "referrer": _text(page.get("referrer")) or _text(properties.get("referrer")),
        "utm_source": utm[0],
        "utm_medium": utm[1],
        "utm_campaign": utm[2],
        "utm_term": utm[3],
        "utm_content": utm[4],
    }
    return Row(columns, properties, event.traits or _dict(context.get("traits")), context)


def millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def corrected_timestamp(event: SegmentEvent, received_at: datetime) -> datetime:
    """Segment's rule: a device clock that is off shifts `timestamp` and `sentAt` alike, so
    `receivedAt - (sentAt - timestamp)` is when it really happened."""
    happened = event.timestamp or event.original_timestamp
    if happened is None:
        return received_at
    if event.sent_at is None:
        return happened
    return received_at - (event.sent_at - happened)


def load_user_agent_rules() -> None:
    """Compile the user-agent rules now (a quarter second) rather than on a first request."""
    ua_parser.parser  # noqa: B018 - the documented way to initialise the global parser


@lru_cache(maxsize=4096)
def describe_user_agent(user_agent: str) -> tuple[str, str, str, bool]:
    """(browser, os, device type, is bot) for a User-Agent string; cached, since a shop sees
    few distinct agents and parsing one costs far more than the rest of an event."""
    if not user_agent:
        return "", "", "", False
    parsed = parse_user_agent(user_agent)
    browser = parsed.user_agent.family if parsed.user_agent else "Other"
    os = parsed.os.family if parsed.os else "Other"
    device = parsed.device.family if parsed.device else "Other"
    lowered = user_agent.lower()
    is_bot = device == "Spider" or any(marker in lowered for marker in _BOT_MARKERS)
    return browser, os, _device_type(device, os, lowered, is_bot), is_bot


def _device_type(device: str, os: str, lowered: str, is_bot: bool) -> str:
    if is_bot:
        return "bot"
    if "ipad" in lowered or "tablet" in lowered:
        return "tablet"
    if "mobi" in lowered or os in ("iOS", "Android"):
        return "mobile"
    return "desktop"


def _utm(campaign: Any, url: str) -> tuple[str, ...]:
    """(source, medium, campaign, term, content): the URL's utm_ parameters, overridden by an
    explicit context.campaign (analytics.js puts utm_campaign under `name`)."""
    utm = _utm_of_url(url) if "utm_" in url else _NO_UTM
    if not isinstance(campaign, dict):
        return utm
    return tuple(
        (_text(campaign.get("name" if field == "campaign" else field)) or utm[i])[:512]
        for i, field in enumerate(UTM_FIELDS)
    )


_NO_UTM = ("",) * len(UTM_FIELDS)


@lru_cache(maxsize=4096)
def _utm_of_url(url: str) -> tuple[str, ...]:
    try:
        query = parse_qs(urlsplit(url).query)
    except ValueError:
        return _NO_UTM
    return tuple(query.get(f"utm_{field}", [""])[0][:512] for field in UTM_FIELDS)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
