"""The marketer API under `/api/v1` (and the operations routes), one module per resource:
`profiles`, `consent`, `privacy`, `keys`, `reports`, `operations`, `catalog`. `common` holds
what they share: the key check, the error documentation, and `provided`, by which each
route receives the narrow object its module declares, built by the composition root."""

from fastapi import APIRouter

from cdp.api import catalog, consent, keys, operations, privacy, profiles, reports


def routers() -> list[APIRouter]:
    return [operations.router, profiles.router, consent.router, privacy.router, keys.router,
            operations.api_router, reports.router, catalog.router]  # fmt: skip
