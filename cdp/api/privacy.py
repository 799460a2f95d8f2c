"""GDPR: export all we hold on a person (Art. 15 and 20), erase it everywhere (Art. 17)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from cdp.api.common import ADMIN, JSONBytes, documented, errors, provided, resource_router
from cdp.api.profiles import EventOut, MergeOut, ProfileOut
from cdp.profiles import privacy
from cdp.profiles.consent import Channel, Purpose, Status
from cdp.profiles.privacy import Erasure


class ConsentLogOut(BaseModel):
    channel: Channel
    purpose: Purpose
    status: Status
    at: datetime
    source: str
    message_id: str
    current: bool = Field(description="Whether this statement is the one in force now")


class SuppressionLogOut(BaseModel):
    channel: Channel
    reason: str
    suppressed: bool = Field(description="false: the suppression was lifted")
    at: datetime
    source: str


class AudienceLogOut(BaseModel):
    audience_id: str
    profile_id: str = Field(description="The profile then (one merged into this one, maybe)")
    change: Literal["enter", "exit"]
    at: datetime
    cause: str = Field(description="`event`, `time`, `definition` or `merge`")
    reason: list[dict[str, Any]] = Field(
        description="Each condition then: its path, value, threshold, whether it held"
    )


class ExportOut(BaseModel):
    profile: ProfileOut
    merges: list[MergeOut]
    consent_log: list[ConsentLogOut]
    suppression_log: list[SuppressionLogOut]
    audience_log: list[AudienceLogOut] = Field(
        description="The audiences the person entered and left, and why (the profiling done)"
    )
    events: list[EventOut]


class ErasedOut(BaseModel):
    profile_id: str
    erased: bool
    removed: dict[str, int] = Field(
        description="What was removed where: Redis keys, rows per ClickHouse table, stream entries"
    )


API = provided(Erasure)
router = resource_router()


@router.get(
    "/profiles/{profile_id}/export",
    tags=["privacy"],
    summary="Everything held on the person, as JSON (GDPR Art. 15 and 20)",
    responses={**documented(ExportOut), **errors(404)},
)
def export_profile(profile_id: str, _: ADMIN, api: Erasure = API) -> JSONBytes:
    return JSONBytes(privacy.export(api.warehouse, api.store.existing(profile_id)))


@router.delete(
    "/profiles/{profile_id}",
    tags=["privacy"],
    summary="Erase the person everywhere (GDPR Art. 17); answers what was removed",
    response_model=ErasedOut,
    responses=errors(404),
)
def erase_profile(profile_id: str, _: ADMIN, api: Erasure = API) -> dict[str, Any]:
    erased_id, removed = api.forget(profile_id)
    return {"profile_id": erased_id, "erased": True, "removed": removed}
