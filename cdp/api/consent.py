"""Consent and suppression, stated through the API (the events' own statements come with
the events)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from cdp.api.common import WRITE, errors, provided, resource_router
from cdp.api.profiles import ConsentOut
from cdp.errors import NotFound
from cdp.profiles import consent
from cdp.profiles.consent import Channel, Purpose, Status, SuppressionReason
from cdp.profiles.store import ProfileStore


@dataclass(frozen=True)
class ConsentApi:
    store: ProfileStore

    def state_after(self, profile_id: str, statement: dict[str, Any]) -> dict[str, Any]:
        updated = self.store.state(profile_id, statement)
        if updated is None:
            raise NotFound(f"no profile {profile_id}")
        return {"profile_id": updated.id, "consent": updated.consent,
                "suppression": updated.suppression}  # fmt: skip


class ConsentChange(BaseModel):
    channel: Channel
    purpose: Purpose = Purpose.MARKETING
    status: Status
    source: str = Field(default="api", max_length=64, description="Where the consent was given")


class Suppression(BaseModel):
    channel: Channel
    reason: SuppressionReason
    source: str = Field(default="api", max_length=64)


class ConsentStateOut(BaseModel):
    profile_id: str
    consent: dict[str, dict[str, ConsentOut]] = Field(description="channel → purpose → state")
    suppression: dict[str, dict[str, Any]]


API = provided(ConsentApi)
router = resource_router()


@router.put(
    "/profiles/{profile_id}/consent",
    tags=["consent"],
    summary="Grant, deny or revoke",
    response_model=ConsentStateOut,
    responses=errors(400, 404),
)
def set_consent(
    profile_id: str, body: ConsentChange, _: WRITE, api: ConsentApi = API
) -> dict[str, Any]:
    statement = consent.given(body.channel, body.purpose, body.status, body.source)
    return api.state_after(profile_id, statement)


@router.post(
    "/profiles/{profile_id}/suppressions",
    tags=["consent"],
    summary="Suppress a channel",
    response_model=ConsentStateOut,
    responses=errors(400, 404),
)
def suppress(profile_id: str, body: Suppression, _: WRITE, api: ConsentApi = API) -> dict[str, Any]:
    return api.state_after(profile_id, consent.suppressed(body.channel, body.reason, body.source))


@router.delete(
    "/profiles/{profile_id}/suppressions/{channel}",
    tags=["consent"],
    summary="Lift a suppression",
    response_model=ConsentStateOut,
    responses=errors(404),
)
def unsuppress(
    profile_id: str, channel: Channel, _: WRITE, api: ConsentApi = API
) -> dict[str, Any]:
    return api.state_after(profile_id, consent.lifted(channel, "api"))
