"""Profiles: find one by any identifier, read it, its event timeline, why its identities are
one person."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import Query
from pydantic import BaseModel, Field

from cdp.api.common import READ, JSONBytes, documented, errors, provided, resource_router
from cdp.errors import BadRequest, NotFound
from cdp.profiles import history
from cdp.profiles.consent import Status
from cdp.profiles.identity import InvalidIdentifier, Kind, normalise
from cdp.profiles.reader import Profile, ProfileReader
from cdp.storage import Warehouse


@dataclass(frozen=True)
class ProfilesApi:
    reader: ProfileReader
    warehouse: Warehouse
    # The audiences a profile is in (the rules engine keeps them; the root hands this in).
    memberships: Callable[[str], list[str]] = lambda _: []

    def profile(self, profile_id: str) -> Profile:
        profile = self.reader.existing(profile_id)
        profile.audiences = self.memberships(profile.id)
        return profile


# The answers' shapes, for the OpenAPI document (profiles are sent as they are read).


class IdentityOut(BaseModel):
    kind: str = Field(description="anonymous_id, user_id, email or phone")
    value: str
    first_seen: str


class ConsentOut(BaseModel):
    status: Status
    at: str
    source: str


class FeaturesOut(BaseModel):
    events: int
    orders: int
    revenue: float
    last_order_at: str | None
    cart: list[dict[str, Any]]
    cart_updated_at: str | None
    last_viewed_products: list[dict[str, Any]]
    counts: dict[str, dict[str, Any]] = Field(
        description="Per window (1d, 7d, 30d, 90d): events by name, by name and category, "
        "by name and product"
    )


class ProfileOut(BaseModel):
    id: str
    identities: list[IdentityOut]
    traits: dict[str, Any]
    features: FeaturesOut
    consent: dict[str, dict[str, ConsentOut]] = Field(description="channel → purpose → state")
    suppression: dict[str, dict[str, Any]]
    timezone: str | None
    first_seen: str
    last_seen: str
    merged_profiles: list[str]
    log: list[dict[str, Any]] = Field(
        description="Warnings about the profile's events, newest first"
    )
    audiences: list[str]


class EventOut(BaseModel):
    message_id: str
    type: str
    event: str = Field(description="The track event's name; empty for other types")
    name: str = Field(description="The page or screen name")
    anonymous_id: str
    user_id: str
    timestamp: datetime
    received_at: datetime
    page_url: str
    properties: dict[str, Any]
    traits: dict[str, Any]
    context: dict[str, Any]


class TimelineOut(BaseModel):
    profile_id: str
    events: list[EventOut]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end"
    )


class MergeOut(BaseModel):
    survivor: str
    merged: str
    cause: str = Field(description="identify, alias, track…, earlier identifier …, or refused: why")
    message_id: str = Field(description="The event that caused it")
    event_at: datetime
    at: datetime


class MergesOut(BaseModel):
    profile_id: str
    identities: list[IdentityOut]
    merges: list[MergeOut]


PROFILE = documented(ProfileOut)
API = provided(ProfilesApi)
router = resource_router()


@router.get(
    "/profiles",
    tags=["profiles"],
    summary="Find a profile by one of its identifiers",
    description="Give exactly one of `email`, `phone`, `user_id`, `anonymous_id` (else 400).",
    responses={**PROFILE, **errors(400, 404)},
)
def find_profile(
    _: READ,
    api: ProfilesApi = API,
    email: str | None = None,
    phone: str | None = None,
    user_id: str | None = None,
    anonymous_id: str | None = None,
    region: Annotated[str | None, Query(description="Country of a phone without +code")] = None,
) -> JSONBytes:
    given = {Kind.EMAIL: email, Kind.PHONE: phone, Kind.USER_ID: user_id,
             Kind.ANONYMOUS_ID: anonymous_id}  # fmt: skip
    asked = [(kind, value) for kind, value in given.items() if value is not None]
    if len(asked) != 1:
        raise BadRequest("give exactly one of email, phone, user_id, anonymous_id")
    kind, value = asked[0]
    try:
        value = normalise(kind, value, region)
    except InvalidIdentifier as error:
        raise BadRequest(str(error)) from None
    profile_id = api.reader.find(kind.tag, value)
    if profile_id is None:
        raise NotFound(f"no profile with {kind.value} {value}")
    return JSONBytes(api.profile(profile_id).as_dict())


@router.get(
    "/profiles/{profile_id}",
    tags=["profiles"],
    summary="A profile: identities, traits, features, consent (a merged-away id finds it too)",
    responses={**PROFILE, **errors(404)},
)
def get_profile(profile_id: str, _: READ, api: ProfilesApi = API) -> JSONBytes:
    return JSONBytes(api.profile(profile_id).as_dict())


@router.get(
    "/profiles/{profile_id}/events",
    tags=["profiles"],
    summary="The profile's event timeline, newest first, across all its identities",
    responses={**documented(TimelineOut), **errors(400, 404)},
)
def profile_events(
    profile_id: str,
    _: READ,
    api: ProfilesApi = API,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> JSONBytes:
    profile = api.profile(profile_id)
    try:
        before = history.decode_cursor(cursor) if cursor else None
    except ValueError:
        raise BadRequest("cursor is not one this API gave") from None
    page, next_cursor = history.timeline(api.warehouse, profile, limit, before)
    return JSONBytes({"profile_id": profile.id, "events": page, "next_cursor": next_cursor})


@router.get(
    "/profiles/{profile_id}/merges",
    tags=["profiles"],
    summary="Why these identities are one person: every merge, with its cause and event",
    response_model=MergesOut,
    responses=errors(404),
)
def profile_merges(profile_id: str, _: READ, api: ProfilesApi = API) -> dict[str, Any]:
    profile = api.profile(profile_id)
    return {
        "profile_id": profile.id,
        "identities": profile.identities,
        "merges": history.audit(api.warehouse, profile, ("merges",))["merges"],
    }
