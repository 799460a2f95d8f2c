"""The marketer API under `/api/v1`: profiles (look-up by any identifier, timeline, merge
history), consent and suppression, GDPR export and erasure, API keys, reports. Bearer secret
keys with scopes; the routes parse, authorise, call the core, answer."""

from __future__ import annotations

import time
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import redis
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from cdp import deadletters, report, streams
from cdp.asgi import ASGIApp, Receive, Send
from cdp.asgi import Scope as AsgiScope
from cdp.credentials import ApiKey, Scope, authenticate
from cdp.errors import BadRequest, CdpError, ErrorOut, Forbidden, NotFound, Unavailable
from cdp.profiles import history, privacy
from cdp.profiles.consent import Channel, Purpose, Status, SuppressionReason
from cdp.profiles.identity import InvalidIdentifier, Kind, normalise
from cdp.profiles.reader import Profile

if TYPE_CHECKING:
    from cdp.app import Runtime

ERROR_TEXT = {
    400: "A malformed identifier, cursor or parameter, or a body that is not JSON",
    401: "No API key, or an unknown one",
    403: "A write key, or a key whose scope is too low",
    404: "No such resource",
    422: "An invalid body or parameter, each problem named",
    503: "Storage unavailable, or earlier events still being processed: retry",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Error answers for the OpenAPI document: they all have one shape."""
    return {status: {"model": ErrorOut, "description": ERROR_TEXT[status]} for status in statuses}


# Every route checks a key, validates what it is given, and needs storage.
router = APIRouter(prefix="/api/v1", responses=errors(401, 403, 422, 503))


class JSONBytes(Response):
    """JSON made by orjson straight from the data (datetimes included), skipping the
    framework's generic encoder, which costs more than the look-up itself."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content)
        except orjson.JSONEncodeError:  # nested deeper than orjson writes: kept from before
            return orjson.dumps(clipped(content, CLIP_DEPTH))  # the edge refused such events


CLIP_DEPTH = 200  # levels shown of a stored value; orjson writes at most 254


def clipped(value: Any, levels: int) -> Any:
    """The value with what lies deeper than `levels` replaced by a note saying so."""
    if not isinstance(value, dict | list):
        return value
    if levels <= 0:
        return f"(nested deeper than {CLIP_DEPTH} levels: not shown)"
    if isinstance(value, dict):
        return {key: clipped(item, levels - 1) for key, item in value.items()}
    return [clipped(item, levels - 1) for item in value]


bearer = HTTPBearer(auto_error=False)


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


class ConsentStateOut(BaseModel):
    profile_id: str
    consent: dict[str, dict[str, ConsentOut]] = Field(description="channel → purpose → state")
    suppression: dict[str, dict[str, Any]]


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


class ExportOut(BaseModel):
    profile: ProfileOut
    merges: list[MergeOut]
    consent_log: list[ConsentLogOut]
    suppression_log: list[SuppressionLogOut]
    events: list[EventOut]


class ErasedOut(BaseModel):
    profile_id: str
    erased: bool
    removed: dict[str, int] = Field(
        description="What was removed where: Redis keys, rows per ClickHouse table, stream entries"
    )


class KeyOut(BaseModel):
    id: str = Field(description="Public: names the key, opens nothing")
    name: str
    scope: Scope
    created_at: str


class NewKeyOut(KeyOut):
    secret: str = Field(description="Shown only in this answer; kept only as a digest")


class RevokedOut(BaseModel):
    revoked: str


def documented(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """For answers sent as they are (JSONBytes): their shape in the OpenAPI document."""
    return {200: {"model": model}}


PROFILE = documented(ProfileOut)


def runtime_of(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


class CredentialsFirst:
    """ASGI layer in front of the marketer API: the API key is checked before anything reads
    the body, so an unauthenticated client cannot make the server read megabytes. The key
    found is kept in the request's state for the routes' scope check."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or not scope["path"].startswith(router.prefix + "/")
        ):
            await self.app(scope, receive, send)
            return
        runtime: Runtime = self.state.runtime
        header = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
        try:
            try:
                key = await run_in_threadpool(
                    authenticate, runtime.api_keys, runtime.credentials.write_keys, header
                )
            except redis.ConnectionError:
                raise Unavailable("storage unavailable, retry later") from None
        except CdpError as error:
            answer = JSONResponse(error.body(), status_code=error.status, headers=error.headers())
            await answer(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)


def require(scope: Scope) -> Any:
    def check(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> ApiKey:
        key: ApiKey | None = getattr(request.state, "api_key", None)
        if key is None:  # served without CredentialsFirst in front
            runtime = runtime_of(request)
            header = request.headers.get("authorization", "")
            key = authenticate(runtime.api_keys, runtime.credentials.write_keys, header)
        if not key.scope.includes(scope):
            raise Forbidden(f"this key has the {key.scope} scope; {scope} is required")
        return key

    return Depends(check)


READ, WRITE, ADMIN = require(Scope.READ), require(Scope.WRITE), require(Scope.ADMIN)


def profile_or_404(runtime: Runtime, profile_id: str) -> Profile:
    profile = runtime.profiles.read(profile_id)
    if profile is None:
        raise NotFound(f"no profile {profile_id}")
    return profile


# Profiles


@router.get(
    "/profiles",
    tags=["profiles"],
    summary="Find a profile by one of its identifiers",
    description="Give exactly one of `email`, `phone`, `user_id`, `anonymous_id` (else 400).",
    responses={**PROFILE, **errors(400, 404)},
)
def find_profile(
    request: Request,
    _: Annotated[ApiKey, READ],
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
    runtime = runtime_of(request)
    profile_id = runtime.profiles.find(kind.tag, value)
    if profile_id is None:
        raise NotFound(f"no profile with {kind.value} {value}")
    return JSONBytes(profile_or_404(runtime, profile_id).as_dict())


@router.get(
    "/profiles/{profile_id}",
    tags=["profiles"],
    summary="A profile: identities, traits, features, consent (a merged-away id finds it too)",
    responses={**PROFILE, **errors(404)},
)
def get_profile(request: Request, profile_id: str, _: Annotated[ApiKey, READ]) -> JSONBytes:
    return JSONBytes(profile_or_404(runtime_of(request), profile_id).as_dict())


@router.get(
    "/profiles/{profile_id}/events",
    tags=["profiles"],
    summary="The profile's event timeline, newest first, across all its identities",
    responses={**documented(TimelineOut), **errors(400, 404)},
)
def profile_events(
    request: Request,
    profile_id: str,
    _: Annotated[ApiKey, READ],
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page")] = None,
) -> JSONBytes:
    runtime = runtime_of(request)
    profile = profile_or_404(runtime, profile_id)
    before = None
    if cursor:
        ms, _sep, message_id = cursor.partition(":")
        if not ms.isdigit() or not message_id:
            raise BadRequest("cursor is not one this API gave")
        before = (int(ms), message_id)
    events = history.events_of(runtime.warehouse, profile, limit=limit + 1, before=before)
    page, more = events[:limit], len(events) > limit
    next_cursor = None
    if more:
        last = page[-1]
        next_cursor = f"{int(last['timestamp'].timestamp() * 1000)}:{last['message_id']}"
    return JSONBytes({"profile_id": profile.id, "events": page, "next_cursor": next_cursor})


@router.get(
    "/profiles/{profile_id}/merges",
    tags=["profiles"],
    summary="Why these identities are one person: every merge, with its cause and event",
    response_model=MergesOut,
    responses=errors(404),
)
def profile_merges(request: Request, profile_id: str, _: Annotated[ApiKey, READ]) -> dict[str, Any]:
    runtime = runtime_of(request)
    profile = profile_or_404(runtime, profile_id)
    return {
        "profile_id": profile.id,
        "identities": profile.identities,
        "merges": history.audit(runtime.warehouse, profile)["merges"],
    }


# Consent and suppression


class ConsentChange(BaseModel):
    channel: Channel
    purpose: Purpose = Purpose.MARKETING
    status: Status
    source: str = Field(default="api", max_length=64, description="Where the consent was given")


class Suppression(BaseModel):
    channel: Channel
    reason: SuppressionReason
    source: str = Field(default="api", max_length=64)


def _change(runtime: Runtime, profile_id: str, change: dict[str, Any]) -> dict[str, Any]:
    profile = profile_or_404(runtime, profile_id)
    change = {**change, "profile": profile.id, "t": int(time.time() * 1000)}
    if runtime.profiles.apply([change]).events == 0:  # erased or merged meanwhile
        raise NotFound(f"no profile {profile_id}")
    updated = profile_or_404(runtime, profile.id)
    return {
        "profile_id": updated.id,
        "consent": updated.consent,
        "suppression": updated.suppression,
    }


@router.put(
    "/profiles/{profile_id}/consent",
    tags=["consent"],
    summary="Grant, deny or revoke",
    response_model=ConsentStateOut,
    responses=errors(400, 404),
)
def set_consent(
    request: Request, profile_id: str, body: ConsentChange, _: Annotated[ApiKey, WRITE]
) -> dict[str, Any]:
    statement = [body.channel.value, body.purpose.value, body.status.value]
    return _change(
        runtime_of(request),
        profile_id,
        {"kind": "consent", "consent": statement, "source": body.source},
    )


@router.post(
    "/profiles/{profile_id}/suppressions",
    tags=["consent"],
    summary="Suppress a channel",
    response_model=ConsentStateOut,
    responses=errors(400, 404),
)
def suppress(
    request: Request, profile_id: str, body: Suppression, _: Annotated[ApiKey, WRITE]
) -> dict[str, Any]:
    change = {"kind": "suppress", "channel": body.channel.value, "reason": body.reason.value,
              "source": body.source}  # fmt: skip
    return _change(runtime_of(request), profile_id, change)


@router.delete(
    "/profiles/{profile_id}/suppressions/{channel}",
    tags=["consent"],
    summary="Lift a suppression",
    response_model=ConsentStateOut,
    responses=errors(404),
)
def unsuppress(
    request: Request, profile_id: str, channel: Channel, _: Annotated[ApiKey, WRITE]
) -> dict[str, Any]:
    change = {"kind": "unsuppress", "channel": channel.value, "source": "api"}
    return _change(runtime_of(request), profile_id, change)


# Privacy


@router.get(
    "/profiles/{profile_id}/export",
    tags=["privacy"],
    summary="Everything held on the person, as JSON (GDPR Art. 15 and 20)",
    responses={**documented(ExportOut), **errors(404)},
)
def export_profile(request: Request, profile_id: str, _: Annotated[ApiKey, ADMIN]) -> JSONBytes:
    runtime = runtime_of(request)
    return JSONBytes(privacy.export(runtime.warehouse, profile_or_404(runtime, profile_id)))


@router.delete(
    "/profiles/{profile_id}",
    tags=["privacy"],
    summary="Erase the person everywhere (GDPR Art. 17); answers what was removed",
    response_model=ErasedOut,
    responses=errors(404),
)
def erase_profile(request: Request, profile_id: str, _: Annotated[ApiKey, ADMIN]) -> dict[str, Any]:
    runtime = runtime_of(request)
    settings = runtime.settings
    profile_or_404(runtime, profile_id)
    names = [settings.events_stream, settings.records_stream]
    settled = streams.wait_until_settled(runtime.redis, names, settings.erase_wait_seconds)
    if settled is None:
        raise Unavailable("events received before this request are still being processed")
    profile = profile_or_404(runtime, profile_id)  # as it is now all is settled
    removed = privacy.erase(runtime.redis, runtime.warehouse, runtime.profiles, profile, settled,
                            settings.dead_letter_stream)  # fmt: skip
    return {"profile_id": profile.id, "erased": True, "removed": removed}


# API keys


class NewKey(BaseModel):
    scope: Scope
    name: str = Field(default="", max_length=100)


@router.post(
    "/keys",
    tags=["keys"],
    summary="Make an API key; its secret is shown only now",
    response_model=NewKeyOut,
    responses=errors(400),
)
def create_key(request: Request, body: NewKey, _: Annotated[ApiKey, ADMIN]) -> dict[str, Any]:
    secret, key = runtime_of(request).api_keys.create(body.scope, body.name)
    return {**asdict(key), "secret": secret}


@router.get(
    "/keys",
    tags=["keys"],
    summary="The API keys (never their secrets)",
    response_model=list[KeyOut],
)
def list_keys(request: Request, _: Annotated[ApiKey, ADMIN]) -> list[dict[str, Any]]:
    return [asdict(key) for key in runtime_of(request).api_keys.list()]


@router.delete(
    "/keys/{key_id}", tags=["keys"], summary="Revoke an API key", response_model=RevokedOut,
    responses=errors(404),
)
def revoke_key(request: Request, key_id: str, _: Annotated[ApiKey, ADMIN]) -> dict[str, Any]:
    if not runtime_of(request).api_keys.revoke(key_id):
        raise NotFound(f"no API key {key_id}")
    return {"revoked": key_id}


# Dead letters


class DeadLetterOut(BaseModel):
    id: str = Field(description="The dead letter's id; pass as `before` to page on")
    stream: str = Field(description="The stream the entry came from")
    group: str = Field(description="The worker that set it aside")
    entry_id: str
    error: str = Field(description="What failed, on the last try")
    tries: int
    at: int = Field(description="When it was set aside, epoch milliseconds")
    payload: dict[str, str] = Field(description="The entry's fields, as text")


class DeadLettersOut(BaseModel):
    total: int
    dead_letters: list[DeadLetterOut] = Field(description="Newest first")


@router.get(
    "/dead-letters",
    tags=["operations"],
    summary="Stream entries a worker could not process and set aside, with the error",
    response_model=DeadLettersOut,
)
def list_dead_letters(
    request: Request,
    _: Annotated[ApiKey, ADMIN],
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$")] = None,
) -> dict[str, Any]:
    runtime = runtime_of(request)
    stream = runtime.settings.dead_letter_stream
    letters = deadletters.listed(runtime.redis, stream, limit, before)
    return {"total": deadletters.count(runtime.redis, stream),
            "dead_letters": [asdict(letter) for letter in letters]}  # fmt: skip


# Reports

# What ClickHouse's DateTime64 holds.
EARLIEST, LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(2299, 12, 31, tzinfo=UTC)


@router.get(
    "/reports/overview",
    tags=["reports"],
    summary="Events by type, visitors, orders and revenue since a time; profiles",
    response_model=report.Overview,
    responses=errors(400),
)
def overview(
    request: Request,
    _: Annotated[ApiKey, READ],
    since: datetime = Query(
        default=datetime(1970, 1, 1, tzinfo=UTC), description="ISO 8601, from 1900 to 2299"
    ),
) -> dict[str, object]:
    if not EARLIEST <= (since if since.tzinfo else since.replace(tzinfo=UTC)) <= LATEST:
        raise BadRequest("since must lie between 1900-01-01 and 2299-12-31")
    runtime = runtime_of(request)
    streams = [runtime.settings.events_stream, runtime.settings.records_stream]
    return report.overview(runtime.warehouse, since, runtime.redis, streams).as_dict()
