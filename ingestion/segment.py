"""Payload models of the Segment HTTP Tracking API (track, identify, page, screen, group,
alias, batch), validated one event at a time so a bad event never sinks its neighbours."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

EventType = Literal["track", "identify", "page", "screen", "group", "alias"]
EVENT_TYPES: tuple[str, ...] = ("track", "identify", "page", "screen", "group", "alias")

MIN_TIMESTAMP = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIMESTAMP = datetime(2200, 1, 1, tzinfo=UTC)
MAX_ID_LENGTH = 512
# Levels of objects and arrays in one event, itself the first. Every layer carries this
# much (orjson writes at most 254 levels, ClickHouse's JSON type and the exports add some).
MAX_DEPTH = 32


def deeper_than(value: Any, limit: int) -> bool:
    """Whether objects and arrays nest more than `limit` levels in `value`."""
    stack = [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        for child in children:
            if isinstance(child, dict | list):
                if level + 1 > limit:
                    return True
                stack.append((child, level + 1))
    return False


class SegmentEvent(BaseModel):
    """One event as the Segment spec describes it (camelCase on the wire)."""

    # SDKs in loosely typed languages send numeric ids; Segment stores them as text.
    model_config = ConfigDict(extra="ignore", populate_by_name=True, coerce_numbers_to_str=True)

    type: EventType
    message_id: str | None = Field(
        default=None, alias="messageId", max_length=MAX_ID_LENGTH, pattern=r"^[^\x00-\x1f]*$"
    )
    anonymous_id: str | None = Field(default=None, alias="anonymousId", max_length=MAX_ID_LENGTH)
    user_id: str | None = Field(default=None, alias="userId", max_length=MAX_ID_LENGTH)
    group_id: str | None = Field(default=None, alias="groupId", max_length=MAX_ID_LENGTH)
    previous_id: str | None = Field(default=None, alias="previousId", max_length=MAX_ID_LENGTH)
    event: str | None = Field(default=None, max_length=1024)
    name: str | None = Field(default=None, max_length=1024)
    category: str | None = Field(default=None, max_length=1024)
    timestamp: datetime | None = None
    original_timestamp: datetime | None = Field(default=None, alias="originalTimestamp")
    sent_at: datetime | None = Field(default=None, alias="sentAt")
    # None (JSON null) is read as empty.
    properties: dict[str, Any] | None = None
    traits: dict[str, Any] | None = None
    context: dict[str, Any] | None = None

    @field_validator("timestamp", "original_timestamp", "sent_at")
    @classmethod
    def _aware_and_in_range(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)  # Segment reads a zone-less time as UTC
        if not MIN_TIMESTAMP <= value < MAX_TIMESTAMP:
            raise ValueError("must be between 1970 and 2200")
        return value.astimezone(UTC)

    @field_validator("properties", "traits", "context")
    @classmethod
    def _not_too_deep(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and deeper_than(value, MAX_DEPTH - 1):
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels in all")
        return value

    @model_validator(mode="after")
    def _required_by_type(self) -> SegmentEvent:
        for name in ("message_id", "anonymous_id", "user_id", "group_id", "previous_id"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                setattr(self, name, None)  # a blank id is no id
        if self.type == "alias":
            if not self.user_id or not self.previous_id:
                raise ValueError("alias needs both userId and previousId")
            return self
        if not self.user_id and not self.anonymous_id:
            raise ValueError("userId or anonymousId is required")
        if self.type == "track" and not (self.event and self.event.strip()):
            raise ValueError("track needs a non-empty event name")
        if self.type == "group" and not self.group_id:
            raise ValueError("group needs a groupId")
        return self


class BatchEnvelope(BaseModel):
    """The `/v1/batch` body; its events are validated one by one, not here."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    batch: list[Any]
    sent_at: datetime | None = Field(default=None, alias="sentAt")
    context: dict[str, Any] | None = None
    write_key: str | None = Field(default=None, alias="writeKey")

    @field_validator("sent_at")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        return SegmentEvent._aware_and_in_range(value)


def describe(error: ValidationError, where: str) -> list[str]:
    """`batch[3].event: field required`-style messages, naming the wire field."""
    messages = []
    for item in error.errors(include_url=False):
        path = ".".join(str(part) for part in item["loc"])
        message = item["msg"]
        if message.startswith("Value error, "):
            message = message.removeprefix("Value error, ")
        messages.append(f"{where}.{path}: {message}" if path else f"{where}: {message}")
    return messages
