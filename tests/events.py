"""Stored events for tests that drive the profile store directly."""

from __future__ import annotations

import time
import uuid
from typing import Any

from cdp.events import StoredEvent

BASE_MS = (int(time.time()) // 3600 - 24) * 3600 * 1000  # yesterday, on the hour


def stored(
    kind: str = "track",
    event: str = "",
    *,
    at: int = 0,
    anonymous_id: str = "",
    user_id: str = "",
    previous_id: str = "",
    properties: dict[str, Any] | None = None,
    traits: dict[str, Any] | None = None,
    context: dict[str, Any] | None = None,
    message_id: str | None = None,
    is_bot: bool = False,
) -> StoredEvent:
    """An event `at` seconds after BASE_MS."""
    return StoredEvent(
        message_id=message_id or uuid.uuid4().hex,
        source_id="source",
        type=kind,
        event=event,
        anonymous_id=anonymous_id,
        user_id=user_id,
        previous_id=previous_id,
        timestamp=BASE_MS + at * 1000,
        is_bot=is_bot,
        properties=properties or {},
        traits=traits or {},
        context=context or {},
    )
