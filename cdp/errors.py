"""Expected failures, each with its HTTP status; mapped to answers in one place (cdp.app)."""

from __future__ import annotations


class CdpError(Exception):
    status = 400

    def __init__(self, message: str, errors: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or []


class BadRequest(CdpError):
    status = 400


class Unauthorized(CdpError):
    status = 401


class PayloadTooLarge(CdpError):
    status = 413


class UnsupportedMediaType(CdpError):
    status = 415


class Unavailable(CdpError):
    status = 503
