from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from ingestion.normalize import to_row
from ingestion.segment import SegmentEvent, describe


def errors_of(payload: dict) -> list[str]:
    with pytest.raises(ValidationError) as caught:
        SegmentEvent.model_validate(payload)
    return describe(caught.value, "batch[3]")


def test_track_needs_an_identity() -> None:
    assert errors_of({"type": "track", "event": "Viewed"}) == [
        "batch[3]: userId or anonymousId is required"
    ]


def test_track_needs_an_event_name() -> None:
    assert errors_of({"type": "track", "userId": "u1", "event": "  "}) == [
        "batch[3]: track needs a non-empty event name"
    ]


def test_alias_needs_previous_id() -> None:
    assert errors_of({"type": "alias", "userId": "u1"}) == [
        "batch[3]: alias needs both userId and previousId"
    ]


def test_group_needs_group_id() -> None:
    assert errors_of({"type": "group", "userId": "u1"}) == ["batch[3]: group needs a groupId"]


def test_wrong_types_are_named_by_wire_field() -> None:
    messages = errors_of(
        {"type": "track", "event": "x", "userId": "u", "properties": [1], "timestamp": "soon"}
    )
    assert any(m.startswith("batch[3].properties: ") for m in messages)
    assert any(m.startswith("batch[3].timestamp: ") for m in messages)


def test_unknown_type_is_refused() -> None:
    assert errors_of({"type": "purchase", "userId": "u"})[0].startswith("batch[3].type: ")


def test_numeric_ids_become_text_and_blank_ids_count_as_missing() -> None:
    event = SegmentEvent.model_validate({"type": "identify", "userId": 42})
    assert event.user_id == "42"
    assert errors_of({"type": "identify", "userId": " ", "anonymousId": ""})


def test_boolean_id_is_refused() -> None:
    assert errors_of({"type": "identify", "userId": True})[0].startswith("batch[3].userId")


def test_zoneless_timestamp_is_utc_and_out_of_range_is_refused() -> None:
    event = SegmentEvent.model_validate(
        {"type": "page", "anonymousId": "a", "timestamp": "2026-01-02T03:04:05"}
    )
    assert event.timestamp == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert errors_of({"type": "page", "anonymousId": "a", "timestamp": "1066-10-14T00:00:00Z"})


def test_null_objects_are_stored_empty_and_unknown_fields_ignored() -> None:
    event = SegmentEvent.model_validate(
        {"type": "page", "anonymousId": "a", "properties": None, "integrations": {"All": True}}
    )
    row = to_row(event, received_at=datetime.now(UTC), source_id="s", ip="")
    assert row.properties == {} and row.context == {} and "integrations" not in row.columns


def test_message_id_with_control_characters_is_refused() -> None:
    message = errors_of({"type": "page", "anonymousId": "a", "messageId": "m\n1"})[0]
    assert message.startswith("batch[3].messageId: String should match pattern")


def test_overlong_id_is_refused() -> None:
    assert errors_of({"type": "identify", "userId": "u" * 600})[0].startswith("batch[3].userId")
