"""Consent per channel and purpose, and suppression per channel.

Consent arrives as `{"email": "granted"}` (the marketing purpose), `{"email": true}`, or
`{"email": {"marketing": "granted", "transactional": "denied"}}`: in `identify` traits
under `consent`, in a `Consent Updated` track event's properties (the snippet sends those),
or through the API. A denial after a grant is recorded as `revoked`. Every statement is
kept in the ClickHouse audit log `consent_log`; the profile holds the latest per pair."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class Channel(StrEnum):
    EMAIL = "email"
    WHATSAPP = "whatsapp"
    SMS = "sms"
    WEB = "web"


class Purpose(StrEnum):
    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"


class Status(StrEnum):
    GRANTED = "granted"
    DENIED = "denied"
    REVOKED = "revoked"


class SuppressionReason(StrEnum):
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    STOP = "stop"  # a WhatsApp or SMS STOP reply


CONSENT_EVENT = "Consent Updated"
Statement = tuple[str, str, str]  # channel, purpose, status


def _status(value: Any) -> Status | None:
    if value is True:
        return Status.GRANTED
    if value is False:
        return Status.DENIED
    if isinstance(value, str) and value in Status.__members__.values():
        return Status(value)
    return None


def parse_consent(value: Any) -> tuple[list[Statement], list[str]]:
    """The statements in a consent object, and a warning for each part that is not one."""
    if not isinstance(value, dict):
        return [], ["consent must be an object of channels"]
    statements: list[Statement] = []
    warnings: list[str] = []
    for channel, given in value.items():
        if channel not in Channel.__members__.values():
            warnings.append(f"consent channel {channel!r} is unknown")
            continue
        per_purpose = given if isinstance(given, dict) else {Purpose.MARKETING.value: given}
        for purpose, raw in per_purpose.items():
            status = _status(raw)
            if purpose not in Purpose.__members__.values():
                warnings.append(f"consent purpose {purpose!r} is unknown")
            elif status is None:
                warnings.append(f"consent {channel}.{purpose}: {raw!r} is not a status")
            else:
                statements.append((channel, purpose, status.value))
    return statements, warnings


# Statements made outside events (the API), as the profile script takes them.


def given(channel: Channel, purpose: Purpose, status: Status, source: str) -> dict[str, Any]:
    return {"kind": "consent", "consent": [channel.value, purpose.value, status.value],
            "source": source}  # fmt: skip


def suppressed(channel: Channel, reason: SuppressionReason, source: str) -> dict[str, Any]:
    return {"kind": "suppress", "channel": channel.value, "reason": reason.value,
            "source": source}  # fmt: skip


def lifted(channel: Channel, source: str) -> dict[str, Any]:
    return {"kind": "unsuppress", "channel": channel.value, "source": source}
