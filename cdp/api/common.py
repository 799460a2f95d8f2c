"""What every route of the marketer API shares: the error answers' documentation, the key
check (before any body is read, then the scope per route), the JSON answer made by orjson,
and `provided`, by which a route module receives the narrow object it needs.

A route module declares that object (a small dataclass: `ProfilesApi`, `ReportsApi`, ...);
the composition root builds each once and registers it (`app.state.services`); routes ask
for it with `provided(Kind)`. Routes parse, authorise, call the domain, answer."""

from __future__ import annotations

import logging
from typing import Annotated, Any, TypeVar

import orjson
import redis
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from cdp.asgi import ASGIApp, Receive, Send
from cdp.asgi import Scope as AsgiScope
from cdp.credentials import ApiKey, Authenticator, Scope
from cdp.errors import BUFFER_DOWN, MAX_ERRORS, CdpError, ErrorOut, Forbidden, Unavailable

log = logging.getLogger(__name__)
T = TypeVar("T")
PREFIX = "/api/v1"

ERROR_TEXT = {
    400: "A malformed identifier, cursor or parameter, or a body that is not JSON",
    401: "No API key, or an unknown one",
    403: "A write key, or a key whose scope is too low",
    404: "No such resource",
    409: "In conflict with what exists: an id taken, a predefined or referenced audience",
    422: "An invalid body or parameter, each problem named",
    503: "Storage unavailable, or earlier events still being processed: retry",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Error answers for the OpenAPI document: they all have one shape."""
    return {status: {"model": ErrorOut, "description": ERROR_TEXT[status]} for status in statuses}


def documented(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    """For answers sent as they are (JSONBytes): their shape in the OpenAPI document."""
    return {200: {"model": model}}


def resource_router() -> APIRouter:
    """A resource's routes: each checks a key, validates what it is given, needs storage."""
    return APIRouter(prefix=PREFIX, responses=errors(401, 403, 422, 503))


def provided(kind: type[T]) -> Any:
    """The object of this kind the composition root registered, as a route dependency."""

    async def get(request: Request) -> T:  # async: no hop to a worker thread for a look-up
        return request.app.state.services[kind]  # type: ignore[no-any-return]

    return Depends(get)


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


class CredentialsFirst:
    """ASGI layer in front of the marketer API: for a request with a body, the API key is
    checked before anything reads it, so an unauthenticated client cannot make the server
    read megabytes; the key found is kept in the request's state for the route's scope
    check. A request without a body goes straight on: its route checks the key (one hop to
    a worker thread less for every look-up)."""

    def __init__(self, app: ASGIApp, state: Any) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: AsgiScope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] == "OPTIONS"
            or not scope["path"].startswith(PREFIX + "/")
        ):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        if not _has_body(headers):  # nothing to read: the route checks the key itself
            await self.app(scope, receive, send)
            return
        authenticator: Authenticator = self.state.services[Authenticator]
        header = headers.get(b"authorization", b"").decode("latin-1")
        try:
            try:
                key = await run_in_threadpool(authenticator, header)
            except redis.ConnectionError:
                raise Unavailable("storage unavailable, retry later") from None
        except CdpError as error:
            answer = JSONResponse(error.body(), status_code=error.status, headers=error.headers())
            await answer(scope, receive, send)
            return
        scope.setdefault("state", {})["api_key"] = key
        await self.app(scope, receive, send)


def _has_body(headers: dict[bytes, bytes]) -> bool:
    length = headers.get(b"content-length", b"0")
    return b"transfer-encoding" in headers or length.strip() not in (b"", b"0")


def require(scope: Scope) -> Any:
    def check(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
    ) -> ApiKey:
        key: ApiKey | None = getattr(request.state, "api_key", None)
        if key is None:  # served without CredentialsFirst in front
            authenticator: Authenticator = request.app.state.services[Authenticator]
            key = authenticator(request.headers.get("authorization", ""))
        if not key.scope.includes(scope):
            raise Forbidden(f"this key has the {key.scope} scope; {scope} is required")
        return key

    return Depends(check)


READ = Annotated[ApiKey, require(Scope.READ)]
WRITE = Annotated[ApiKey, require(Scope.WRITE)]
ADMIN = Annotated[ApiKey, require(Scope.ADMIN)]


def answer_errors(app: FastAPI) -> None:
    """Every error answer in one shape, `{"success": false, "error": ..., "errors": [...]}`,
    whatever raised it: our own failures, the framework's, a validation, the unexpected."""

    @app.exception_handler(CdpError)
    async def _cdp_error(request: Request, error: CdpError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers())

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else str(error.detail)
        if error.status_code == 404 and message == "Not Found":
            message = f"no route {request.url.path}"
        return JSONResponse(
            {"success": False, "error": message},
            status_code=error.status_code,
            headers=dict(error.headers or {}),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_problem(item) for item in error.errors()]
        body = {"success": False, "error": "invalid request", "errors": problems[:MAX_ERRORS]}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse({"success": False, "error": "internal error"}, status_code=500)

    @app.exception_handler(redis.ConnectionError)
    async def _buffer_down(request: Request, error: redis.ConnectionError) -> JSONResponse:
        log.error("%s: %s", BUFFER_DOWN, error)
        return await _cdp_error(request, Unavailable(BUFFER_DOWN))


def _problem(item: Any) -> str:
    """`body.scope: Input should be 'read', 'write' or 'admin'`: where, then what. A list
    index reads `[2]`; a union's tag (a part followed by the field of the same name) is
    left out: `body.root.and[1].performed.within`."""
    location = list(item.get("loc", ()))
    where = ""
    for i, part in enumerate(location):
        if isinstance(part, int):
            where += f"[{part}]"
        elif i + 1 < len(location) and location[i + 1] == part:
            continue
        else:
            where += f".{part}" if where else str(part)
    message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message
