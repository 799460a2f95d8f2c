"""Tracking routes compatible with the Segment HTTP Tracking API, and the snippet.

Write key as the HTTP Basic user name, `writeKey` in the body or in the query string (what
beacons send); JSON as `application/json` or `text/plain` (what `sendBeacon` sends),
optionally gzipped. Limits as Segment's: 32 KB an event, 500 KB a batch. In a batch every
event is judged on its own: valid ones are kept even when a neighbour is refused.

The official browser SDKs use more paths than the spec names: analytics.js and
`@segment/analytics-next` post to `/v1/t`, `/v1/p`, `/v1/i`, `/v1/s`, `/v1/g`, `/v1/a` and,
batching, `/v1/b`; `@rudderstack/analytics-js` beacons to `/beacon/v1/batch?writeKey=`. Both
also report their own telemetry (`/v1/m`, `/rsaMetrics`): accepted and dropped. The CORS
preflight allows the headers they send (RudderStack's `AnonymousId`, `SentAt`, `Rsa-*`,
Segment's `X-Retry-Count`).

`POST /v1/*` is the hottest path of the product, so it is served by a plain ASGI handler in
front of the framework's routing and middleware (about half the cost of a request there);
it answers CORS for its own paths. `openapi_paths` documents it for `/docs`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import logging
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

import orjson
import redis
from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import Counter
from pydantic import ValidationError

from cdp.asgi import ASGIApp, Receive, Scope, Send
from cdp.credentials import source_id
from cdp.errors import (
    BUFFER_DOWN,
    MAX_ERRORS,
    BadRequest,
    CdpError,
    ErrorOut,
    InternalError,
    PayloadTooLarge,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from ingestion.normalize import Row, to_row
from ingestion.rate_limit import RateLimit
from ingestion.segment import (
    EVENT_TYPES,
    MAX_DEPTH,
    BatchEnvelope,
    SegmentEvent,
    deeper_than,
    describe,
)
from ingestion.stream import EventStream

log = logging.getLogger(__name__)


REQUESTS = Counter(
    "cdp_tracking_requests", "Tracking requests answered, by route and status", ["route", "status"]
)
EVENTS = Counter("cdp_tracking_events", "Events received, by outcome", ["outcome"])
STORED, DUPLICATE, REFUSED, LIMITED = (
    EVENTS.labels(o) for o in ("stored", "duplicate", "refused", "rate_limited")
)

JSON_TYPES = ("application/json", "text/plain")
SUCCESS = b'{"success":true}'
SHORT_PATHS = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group",
               "a": "alias", "b": "batch"}  # fmt: skip
PATHS = {
    **{f"/v1/{name}": name for name in (*EVENT_TYPES, "batch")},
    **{f"/v1/{letter}": kind for letter, kind in SHORT_PATHS.items()},
    "/beacon/v1/batch": "batch",
    "/v1/m": "metrics",
    "/rsaMetrics": "metrics",
}
ALLOWED_HEADERS = (
    "authorization", "content-type", "content-encoding", "x-retry-count", "anonymousid",
    "sentat", "rsa-recovered", "rsa-retry-attempt", "rsa-retry-reason",
    "rsa-since-first-attempt", "rsa-since-last-attempt",
)  # fmt: skip
PREFLIGHT_HEADERS = [
    (b"access-control-allow-methods", b"POST, OPTIONS"),
    (b"access-control-allow-headers", ", ".join(ALLOWED_HEADERS).encode()),
    (b"access-control-max-age", b"86400"),
]


@dataclass(frozen=True)
class Tracking:
    """What the tracking routes need, made at start-up by the composition root."""

    write_keys: frozenset[str]
    stream: EventStream
    max_event_bytes: int
    max_batch_bytes: int
    cors_origins: frozenset[str]
    rate_limit: RateLimit = field(default_factory=lambda: RateLimit(None))


@dataclass
class Answer:
    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


class TrackingAPI:
    """ASGI middleware serving `/v1/{track,identify,page,screen,group,alias,batch}`; every
    other request goes to the wrapped app. `state.tracking` is set once storage is up."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = PATHS.get(scope["path"]) if scope["type"] == "http" else None
        if kind is None or scope["method"] not in ("POST", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        tracking: Tracking = self.state.tracking
        headers = _headers(scope)
        if scope["method"] == "OPTIONS":
            answer = _preflight(headers, tracking.cors_origins)
        else:
            if kind == "metrics":
                answer = await _telemetry(receive, headers, tracking)
            else:
                answer = await _answer(kind, scope, receive, headers, tracking)
            answer.headers += _allow_origin(headers.get(b"origin"), tracking.cors_origins)
            REQUESTS.labels(kind, answer.status).inc()
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(answer.body)).encode()),
                    *answer.headers,
                ],
            }
        )
        await send({"type": "http.response.body", "body": answer.body})


async def _answer(
    kind: str, scope: Scope, receive: Receive, headers: dict[bytes, bytes], tracking: Tracking
) -> Answer:
    try:
        limit = tracking.max_batch_bytes if kind == "batch" else tracking.max_event_bytes
        body = parse_json(await read_body(receive, headers, limit), headers, limit)
        key = authorise(
            headers.get(b"authorization", b""), body, tracking.write_keys, scope["query_string"]
        )
        scope.setdefault("state", {})["write_key_id"] = source_id(key)  # for the access log
        received = datetime.now(UTC)
        ip = scope["client"][0] if scope.get("client") else ""
        if kind == "batch":
            rows, errors, total = batch_rows(body, key, ip, received, tracking.max_event_bytes)
        else:
            rows, errors, total = [single_row(body, kind, key, ip, received)], [], 1
        try:
            tracking.rate_limit.take(ip, key, total)
        except TooManyRequests:
            _count(LIMITED, total)
            raise
        new = await tracking.stream.append(rows)
    except CdpError as error:
        return _error(error)
    except redis.ConnectionError as error:
        log.error("%s: %s", BUFFER_DOWN, error)
        return _error(Unavailable(BUFFER_DOWN))
    except Exception:
        log.exception("tracking request failed")
        return _error(InternalError("internal error; the request was not stored"))
    _count(STORED, new)
    _count(DUPLICATE, len(rows) - new)
    _count(REFUSED, total - len(rows))
    if errors:
        refused = {
            "success": False,
            "error": f"{total - len(rows)} of {total} events were refused; "
            "the others were accepted",
            "accepted": len(rows),
            "error_count": len(errors),
            "errors": errors[:MAX_ERRORS],
        }
        return Answer(400, orjson.dumps(refused), [])
    return Answer(200, SUCCESS, [])


async def _telemetry(receive: Receive, headers: dict[bytes, bytes], tracking: Tracking) -> Answer:
    """The SDKs' reports about themselves: read (bounded) and dropped, never an error, so an
    SDK has no reason to retry or complain."""
    with contextlib.suppress(CdpError):
        await read_body(receive, {**headers, b"content-type": b"text/plain"},
                        tracking.max_batch_bytes)  # fmt: skip
    return Answer(200, SUCCESS, [])


def _count(counter: Any, amount: int) -> None:
    if amount:  # an increment takes a lock: skip the ones that change nothing
        counter.inc(amount)


def _error(error: CdpError) -> Answer:
    headers = [(name.lower().encode(), value.encode()) for name, value in error.headers().items()]
    return Answer(error.status, orjson.dumps(error.body()), headers)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    # ASGI servers give header names in lower case.
    return dict(scope["headers"])


def _allow_origin(origin: bytes | None, allowed: frozenset[str]) -> list[tuple[bytes, bytes]]:
    if origin is None:
        return []
    if "*" in allowed:
        return [(b"access-control-allow-origin", b"*")]
    if origin.decode("latin-1") in allowed:
        return [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
    return []


def _preflight(headers: dict[bytes, bytes], allowed: frozenset[str]) -> Answer:
    origin = _allow_origin(headers.get(b"origin"), allowed)
    if not origin:
        message = {"success": False, "error": "origin not allowed"}
        return Answer(400, orjson.dumps(message), [])
    return Answer(200, b"{}", [*origin, *PREFLIGHT_HEADERS])


async def read_body(receive: Receive, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The raw body, refused early when its content type is wrong or it is too large (a body
    too slow to arrive is cut off by the server: `cdp.protocol`)."""
    media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode()
    if media_type not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"content type must be application/json or text/plain, not {media_type or 'absent'}"
        )
    declared = headers.get(b"content-length", b"")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"body is {declared.decode()} bytes, the limit is {limit}")
    chunks = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("client disconnected before sending the whole body")
        chunks += message.get("body", b"")
        if len(chunks) > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        if not message.get("more_body", False):
            return bytes(chunks)


def parse_json(body: bytes, headers: dict[bytes, bytes], limit: int) -> dict[str, Any]:
    """The body as a JSON object, inflated first if it came compressed."""
    encoding = headers.get(b"content-encoding", b"identity").strip().lower().decode()
    data = _decompress(body, encoding, limit)
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise BadRequest(f"malformed JSON: {error}") from None
    if not isinstance(parsed, dict):
        raise BadRequest("body must be a JSON object")
    return parsed


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise UnsupportedMediaType(f"content encoding {encoding} is not supported")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as error:
        raise BadRequest(f"body is not valid {encoding}: {error}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    return data


def authorise(
    authorization: bytes, body: dict[str, Any], write_keys: frozenset[str], query: bytes = b""
) -> str:
    """The write key from HTTP Basic (user name), the body or the query string, if it is one
    of ours."""
    key = _known_basic.get(authorization) if authorization else None
    if key is not None:
        return key
    key = _basic_user(authorization.decode("latin-1")) if authorization else None
    if key is None:
        candidate = body.get("writeKey")
        key = candidate if isinstance(candidate, str) else None
    if key is None and b"writeKey=" in query:
        key = parse_qs(query.decode("latin-1")).get("writeKey", [""])[0]
    if not key:
        raise Unauthorized(
            "missing write key: send it as the HTTP Basic user name, writeKey in the body "
            "or ?writeKey= in the URL"
        )
    if key not in write_keys:
        raise Unauthorized("unknown write key")
    if authorization and len(authorization) <= 256 and len(_known_basic) < 1024:
        _known_basic[authorization] = key  # bounded: short headers that name a real key
    return key


# Authorization headers that named one of our keys: a shop's clients send the same few over
# and over. Unknown headers are never kept, so no client can grow this.
_known_basic: dict[bytes, str] = {}


def _basic_user(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("Authorization header is not valid HTTP Basic") from None
    return decoded.partition(":")[0]


def single_row(body: dict[str, Any], kind: str, key: str, ip: str, received: datetime) -> Row:
    body["type"] = kind
    try:
        event = SegmentEvent.model_validate(body)
    except ValidationError as error:
        raise BadRequest("invalid event", describe(error, kind)) from None
    return to_row(event, received_at=received, source_id=source_id(key), ip=ip)


def batch_rows(
    body: dict[str, Any], key: str, ip: str, received: datetime, max_event_bytes: int
) -> tuple[list[Row], list[str], int]:
    """The rows of a batch's valid events, messages naming the invalid ones, and the count."""
    try:
        envelope = BatchEnvelope.model_validate(body)
    except ValidationError as error:
        raise BadRequest("invalid batch", describe(error, "body")) from None
    source = source_id(key)
    rows, errors = [], []
    for index, item in enumerate(envelope.batch):
        where = f"batch[{index}]"
        try:
            event = _batch_event(item, envelope, max_event_bytes)
        except ValidationError as error:
            errors.extend(describe(error, where))
            continue
        except BadRequest as error:
            errors.append(f"{where}: {error.message}")
            continue
        rows.append(to_row(event, received_at=received, source_id=source, ip=ip))
    return rows, errors, len(envelope.batch)


def _batch_event(item: Any, envelope: BatchEnvelope, max_bytes: int) -> SegmentEvent:
    if not isinstance(item, dict):
        raise BadRequest("must be a JSON object")
    if deeper_than(item, MAX_DEPTH):
        raise BadRequest(f"nested deeper than {MAX_DEPTH} levels")
    size = len(orjson.dumps(item))
    if size > max_bytes:
        raise BadRequest(f"event is {size} bytes, the limit is {max_bytes}")
    if "sentAt" not in item and envelope.sent_at is not None:
        item = {**item, "sentAt": envelope.sent_at}
    if envelope.context and isinstance(item.get("context", {}), dict):
        item = {**item, "context": {**envelope.context, **(item.get("context") or {})}}
    return SegmentEvent.model_validate(item)


SUMMARIES = {
    "track": "Record an action a visitor took",
    "identify": "Tie a visitor to a user id and traits",
    "page": "Record a page view",
    "screen": "Record a screen view in an app",
    "group": "Associate a visitor with a group or account",
    "alias": "Merge a previous id into a user id",
    "batch": "Send many events in one request",
    "metrics": "An SDK's telemetry about itself: accepted and dropped",
}
ANSWERS: dict[str, str] = {
    "200": 'Stored durably: `{"success": true}`',
    "400": "Malformed JSON or invalid events, each named (the first 100, and `error_count`); "
    "in a batch the valid ones are kept (`accepted`)",
    "401": "Missing or unknown write key",
    "408": "The body did not arrive in time",
    "413": "Over 32 KB an event or 500 KB a request",
    "415": "Not JSON (application/json or text/plain) or unknown encoding",
    "429": "Over `CDP_RATE_LIMIT` events from one client: nothing was stored, send it again "
    "after `Retry-After` seconds",
    "500": "Internal error: nothing was stored, retry",
    "503": "Event buffer unavailable: retry",
}


def openapi_paths(components: dict[str, Any]) -> dict[str, Any]:
    """OpenAPI operations for the tracking routes; their schemas go into `components`."""
    schemas = components.setdefault("schemas", {})
    for model in (SegmentEvent, BatchEnvelope):
        schema = model.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    # On /v1/track and its kin the path says the type: the body need not.
    single = {**schemas["SegmentEvent"], "title": "TrackingEvent"}
    single["required"] = [name for name in single.get("required", []) if name != "type"]
    schemas["TrackingEvent"] = single
    error = {"$ref": "#/components/schemas/ErrorOut"}
    schemas["ErrorOut"] = ErrorOut.model_json_schema()
    answers = {
        status: {"description": text, "content": {"application/json": {"schema": error}}}
        for status, text in ANSWERS.items()
        if status != "200"
    }
    answers["200"] = {"description": ANSWERS["200"]}
    paths: dict[str, Any] = {}
    for path, kind in PATHS.items():
        if kind == "metrics":
            paths[path] = {"post": {
                "tags": ["tracking"], "summary": SUMMARIES[kind],
                "operationId": "tracking_metrics" + path.replace("/", "_"),
                "requestBody": {"content": {"text/plain": {"schema": {"type": "string"}}}},
                "responses": {"200": {"description": "Accepted and dropped"}},
            }}  # fmt: skip
            continue
        body = {"$ref": "#/components/schemas/" + ("BatchEnvelope" if kind == "batch"
                                                    else "TrackingEvent")}  # fmt: skip
        alias = "" if path == f"/v1/{kind}" else f" (as the browser SDKs send it: `{path}`)"
        paths[path] = {
            "post": {
                "tags": ["tracking"],
                "summary": SUMMARIES[kind] + alias,
                "operationId": "tracking" + path.replace("/", "_"),
                "security": [{"writeKey": []}, {"writeKeyQuery": []}, {}],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": body},
                        "text/plain": {"schema": body},
                    },
                },
                "responses": answers,
            }
        }
    components.setdefault("securitySchemes", {}).update({
        "writeKey": {
            "type": "http",
            "scheme": "basic",
            "description": "The write key as user name, no password; or `writeKey` in the body",
        },
        "writeKeyQuery": {"type": "apiKey", "in": "query", "name": "writeKey",
                          "description": "What beacons send"},
    })  # fmt: skip
    return paths


router = APIRouter(tags=["tracking"])
_SNIPPET = resources.files("ingestion").joinpath("static/cdp.js").read_bytes()


@router.get(
    "/sdk/cdp.js",
    summary="The browser tracking snippet",
    response_class=Response,
    responses={200: {"content": {"application/javascript": {"schema": {"type": "string"}}}}},
)
async def snippet() -> Response:
    return Response(
        _SNIPPET,
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=300"},
    )
