"""Operations: health, Prometheus metrics, the dead letters."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any

import redis
from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge
from pydantic import BaseModel, Field

from cdp import deadletters
from cdp.api.common import ADMIN, provided, resource_router
from cdp.health import Health
from cdp.metrics import exposition

STREAM_ENTRIES = Gauge("cdp_stream_entries", "Entries in the events stream not yet trimmed")
DEAD_LETTERS = Gauge("cdp_dead_letters_waiting", "Entries set aside, kept for an operator")
WORKER_WAITING = Gauge(
    "cdp_worker_waiting_entries", "Stream entries a worker has not acknowledged yet", ["worker"]
)
SCHEDULE_DUE = Gauge(
    "cdp_audience_schedule_due", "Profiles whose moment has come and no audience worker took"
)
SCHEDULE_LAG = Gauge(
    "cdp_audience_schedule_lag_seconds", "How far past its moment the oldest due profile is"
)
WORKER_LAG = Gauge(
    "cdp_worker_lag_seconds", "Age of the oldest entry a worker has not acknowledged", ["worker"]
)


@dataclass(frozen=True)
class OperationsApi:
    redis: redis.Redis
    dead_letter_stream: str
    health: Callable[[], Health]
    writer: bool  # this process runs the warehouse writers
    profile_worker: Callable[[], dict[str, object] | None]  # its process's state, if ours
    worker_metrics: Path | None = None  # where our worker processes write their metrics
    # The audience worker processes' states (those this process runs)
    audience_workers: Callable[[], list[dict[str, object]]] = list


class WorkerOut(BaseModel):
    waiting: int = Field(description="Stream entries not acknowledged yet")
    oldest_seconds: float = Field(description="Age of the oldest of them")


class ScheduleOut(BaseModel):
    due: int = Field(description="Profiles whose moment has come and no audience worker took")
    oldest_seconds: float = Field(description="How far past its moment the oldest of them is")


class HealthOut(BaseModel):
    status: str = Field(description="ok or unhealthy")
    problems: list[str]
    workers: dict[str, WorkerOut] = Field(description="stream/consumer group → backlog")
    buffered_entries: int = Field(description="Entries in the events stream not trimmed yet")
    dead_letters: int = Field(description="Entries set aside: GET /api/v1/dead-letters")
    schedule: ScheduleOut = Field(description="The audience schedule: time-based transitions")
    writer: bool = Field(description="This process runs the warehouse writers")
    profile_worker: dict[str, Any] | None = Field(description="The profile worker process")
    audience_workers: list[dict[str, Any]] = Field(
        description="The audience worker processes (the rules engine) this server runs: "
        "running, pid, restarts"
    )


class DeadLetterOut(BaseModel):
    id: str = Field(description="The dead letter's id; pass as `before` to page on")
    stream: str = Field(description="The stream the entry came from")
    group: str = Field(description="The worker that set it aside")
    entry_id: str = Field(
        description="The entry set aside; empty for a profile the audience "
        "worker set aside (the payload names it)"
    )
    error: str = Field(description="What failed, on the last try")
    tries: int
    at: int = Field(description="When it was set aside, epoch milliseconds")
    payload: dict[str, str] = Field(
        description="The entry's fields, as text (for a profile: "
        "profile, cause, now, changed, retry_at)"
    )


class DeadLettersOut(BaseModel):
    total: int
    dead_letters: list[DeadLetterOut] = Field(description="Newest first")


API = provided(OperationsApi)
router = APIRouter(tags=["operations"])  # health and metrics: no key, as probes expect
api_router = resource_router()


@router.get(
    "/healthz",
    summary="Storage, workers' backlog, dead letters; 503 when something is wrong",
    response_model=HealthOut,
    responses={503: {"model": HealthOut, "description": "Unhealthy: see `problems`"}},
)
def healthz(api: OperationsApi = API) -> JSONResponse:
    found = api.health()
    body = {**asdict(found), "writer": api.writer, "profile_worker": api.profile_worker(),
            "audience_workers": api.audience_workers()}  # fmt: skip
    return JSONResponse(body, status_code=found.http_status)


@router.get(
    "/metrics",
    summary="Prometheus metrics: requests, tracking, workers, backlogs, dead letters",
    response_class=PlainTextResponse,
)
def metrics(api: OperationsApi = API) -> PlainTextResponse:
    found = api.health()
    STREAM_ENTRIES.set(found.buffered_entries)
    DEAD_LETTERS.set(found.dead_letters)
    SCHEDULE_DUE.set(found.schedule["due"])
    SCHEDULE_LAG.set(found.schedule["oldest_seconds"])
    for name, state in found.workers.items():
        WORKER_WAITING.labels(name).set(state["waiting"])
        WORKER_LAG.labels(name).set(state["oldest_seconds"])
    return PlainTextResponse(exposition(api.worker_metrics), media_type=CONTENT_TYPE_LATEST)


@api_router.get(
    "/dead-letters",
    tags=["operations"],
    summary="Entries (and profiles) a worker could not process and set aside, with the error",
    response_model=DeadLettersOut,
)
def list_dead_letters(
    _: ADMIN,
    api: OperationsApi = API,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(pattern=r"^[0-9]{1,20}-[0-9]{1,20}$")] = None,
) -> dict[str, Any]:
    letters = deadletters.listed(api.redis, api.dead_letter_stream, limit, before)
    return {"total": deadletters.count(api.redis, api.dead_letter_stream),
            "dead_letters": [asdict(letter) for letter in letters]}  # fmt: skip
