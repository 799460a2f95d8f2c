"""Expected failures, each with its HTTP status and answer; every route answers them alike."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ErrorOut(BaseModel):
    """Every error answer's shape, whatever the route and status."""

    success: bool = Field(default=False, description="Always false")
    error: str = Field(description="What was wrong")
    errors: list[str] | None = Field(
        default=None, description="Each problem, naming where: `batch[3].event: ...`"
    )
    error_count: int | None = Field(default=None, description="Problems in all (batch)")
    accepted: int | None = Field(default=None, description="Events of the batch kept")


class CdpError(Exception):
    status = 400

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []

    def body(self) -> dict[str, object]:
        body: dict[str, object] = {"success": False, "error": self.message}
        if self.errors:
            body["errors"] = self.errors
        return body

    def headers(self) -> dict[str, str]:
        return {}


class BadRequest(CdpError):
    status = 400


class Unauthorized(CdpError):
    status = 401
    scheme = "Basic"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": self.scheme}


class BearerRequired(Unauthorized):
    scheme = "Bearer"


class Forbidden(CdpError):
    status = 403


class NotFound(CdpError):
    status = 404


class Conflict(CdpError):
    status = 409


class PayloadTooLarge(CdpError):
    status = 413


class UnsupportedMediaType(CdpError):
    status = 415


class Unprocessable(CdpError):
    status = 422


class TooManyRequests(CdpError):
    status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class HeadersTooLarge(CdpError):
    status = 431


class InternalError(CdpError):
    status = 500


class Unavailable(CdpError):
    status = 503

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


BUFFER_DOWN = "event buffer unavailable, retry later"
MAX_ERRORS = 100  # problems listed in one answer; a count says how many there were
