"""Tracking routes compatible with the Segment HTTP Tracking API, and the snippet.

Write key as the HTTP Basic user name or `writeKey` in the body; JSON as
`application/json` or `text/plain` (what `sendBeacon` sends), optionally gzipped. Limits as
Segment's: 32 KB an event, 500 KB a batch. In a batch every event is judged on its own:
valid ones are kept even when a neighbour is refused.
"""

from __future__ import annotations

import base64
import binascii
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from cdp.errors import BadRequest, PayloadTooLarge, Unauthorized, UnsupportedMediaType
from cdp.keys import source_id
from ingestion.normalize import to_row
from ingestion.segment import BatchEnvelope, SegmentEvent, describe
from ingestion.stream import EventStream

router = APIRouter(tags=["tracking"])

JSON_TYPES = ("application/json", "text/plain")
SUCCESS = {"success": True}


@dataclass(frozen=True)
class TrackingConfig:
    write_keys: frozenset[str]
    max_event_bytes: int
    max_batch_bytes: int


def _config(request: Request) -> TrackingConfig:
    return request.app.state.tracking  # type: ignore[no-any-return]


def _stream(request: Request) -> EventStream:
    return request.app.state.event_stream  # type: ignore[no-any-return]


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, refusing what is not JSON, too large or not an
    object with a status that says which."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type not in JSON_TYPES:
        raise UnsupportedMediaType(
            f"content type must be application/json or text/plain, not {media_type or 'absent'}"
        )
    declared = request.headers.get("content-length")
    if declared and declared.isdigit():
        if int(declared) > limit:
            raise PayloadTooLarge(f"body is {declared} bytes, the limit is {limit}")
        body = await request.body()  # the server holds it to the declared length
    else:
        chunks = bytearray()
        async for chunk in request.stream():
            chunks += chunk
            if len(chunks) > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        body = bytes(chunks)
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
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


def authorise(request: Request, body: dict[str, Any], write_keys: frozenset[str]) -> str:
    """The write key from HTTP Basic (user name) or the body, if it is one of ours."""
    key = _basic_user(request.headers.get("authorization", ""))
    if key is None:
        candidate = body.get("writeKey")
        key = candidate if isinstance(candidate, str) else None
    if not key:
        raise Unauthorized("missing write key: send it as the HTTP Basic user name or writeKey")
    if key not in write_keys:
        raise Unauthorized("unknown write key")
    return key


def _basic_user(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise Unauthorized("Authorization header is not valid HTTP Basic") from None
    return decoded.partition(":")[0]


def _client_ip(request: Request) -> str:
    return request.client.host if request.client else ""


async def _accept_single(request: Request, event_type: str) -> Response:
    config = _config(request)
    body = await read_json(request, config.max_event_bytes)
    key = authorise(request, body, config.write_keys)
    body["type"] = event_type
    try:
        event = SegmentEvent.model_validate(body)
    except ValidationError as error:
        raise BadRequest("invalid event", describe(error, event_type)) from None
    row = to_row(
        event, received_at=datetime.now(UTC), source_id=source_id(key), ip=_client_ip(request)
    )
    await _stream(request).append([row])
    return JSONResponse(SUCCESS)


@router.post("/v1/batch", summary="Send many events in one request")
async def batch(request: Request) -> Response:
    config = _config(request)
    body = await read_json(request, config.max_batch_bytes)
    key = authorise(request, body, config.write_keys)
    try:
        envelope = BatchEnvelope.model_validate(body)
    except ValidationError as error:
        raise BadRequest("invalid batch", describe(error, "body")) from None
    received_at = datetime.now(UTC)
    source, ip = source_id(key), _client_ip(request)
    rows, errors = [], []
    for index, item in enumerate(envelope.batch):
        where = f"batch[{index}]"
        try:
            event = _batch_event(item, envelope, config.max_event_bytes)
        except ValidationError as error:
            errors.extend(describe(error, where))
            continue
        except BadRequest as error:
            errors.append(f"{where}: {error.message}")
            continue
        rows.append(to_row(event, received_at=received_at, source_id=source, ip=ip))
    await _stream(request).append(rows)
    if errors:
        return JSONResponse(
            {
                "success": False,
                "error": f"{len(envelope.batch) - len(rows)} of {len(envelope.batch)} events "
                "were refused; the others were accepted",
                "accepted": len(rows),
                "errors": errors,
            },
            status_code=400,
        )
    return JSONResponse(SUCCESS)


def _batch_event(item: Any, envelope: BatchEnvelope, max_bytes: int) -> SegmentEvent:
    if not isinstance(item, dict):
        raise BadRequest("must be a JSON object")
    size = len(orjson.dumps(item))
    if size > max_bytes:
        raise BadRequest(f"event is {size} bytes, the limit is {max_bytes}")
    if "sentAt" not in item and envelope.sent_at is not None:
        item = {**item, "sentAt": envelope.sent_at}
    if envelope.context and isinstance(item.get("context", {}), dict):
        item = {**item, "context": {**envelope.context, **(item.get("context") or {})}}
    return SegmentEvent.model_validate(item)


def _single(event_type: str, summary: str) -> None:
    async def endpoint(request: Request) -> Response:
        return await _accept_single(request, event_type)

    endpoint.__name__ = event_type
    router.add_api_route(f"/v1/{event_type}", endpoint, methods=["POST"], summary=summary)


_single("track", "Record an action a visitor took")
_single("identify", "Tie a visitor to a user id and traits")
_single("page", "Record a page view")
_single("screen", "Record a screen view in an app")
_single("group", "Associate a visitor with a group or account")
_single("alias", "Merge a previous id into a user id")


_SNIPPET = resources.files("ingestion").joinpath("static/cdp.js").read_bytes()


@router.get("/sdk/cdp.js", summary="The browser tracking snippet", include_in_schema=True)
async def snippet() -> Response:
    return Response(
        _SNIPPET,
        media_type="application/javascript",
        headers={"Cache-Control": "public, max-age=300"},
    )
