"""Reports: events, visitors, orders, revenue, profiles and merges since a time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from fastapi import Query

from cdp import report
from cdp.api.common import READ, errors, provided, resource_router
from cdp.errors import BadRequest
from cdp.storage import Warehouse

# What ClickHouse's DateTime64 holds.
EARLIEST, LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(2299, 12, 31, tzinfo=UTC)


@dataclass(frozen=True)
class ReportsApi:
    warehouse: Warehouse
    redis: redis.Redis
    streams: list[str]  # whose backlog the report counts


API = provided(ReportsApi)
router = resource_router()


@router.get(
    "/reports/overview",
    tags=["reports"],
    summary="Events by type, visitors, orders and revenue since a time; profiles",
    response_model=report.Overview,
    responses=errors(400),
)
def overview(
    _: READ,
    api: ReportsApi = API,
    since: datetime = Query(
        default=datetime(1970, 1, 1, tzinfo=UTC), description="ISO 8601, from 1900 to 2299"
    ),
) -> dict[str, object]:
    if not EARLIEST <= (since if since.tzinfo else since.replace(tzinfo=UTC)) <= LATEST:
        raise BadRequest("since must lie between 1900-01-01 and 2299-12-31")
    return report.overview(api.warehouse, since, api.redis, api.streams).as_dict()
