"""The composition root: builds storage clients from settings, applies the schema, starts
the warehouse writer, and wires the packages' routes into one FastAPI app."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import redis
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

import cdp
from cdp import api
from cdp.access import AccessLog
from cdp.api.common import CredentialsFirst, answer_errors
from cdp.api.consent import ConsentApi
from cdp.api.operations import OperationsApi
from cdp.api.profiles import ProfilesApi
from cdp.api.reports import ReportsApi
from cdp.catalog import Catalog
from cdp.consumer import StreamConsumer
from cdp.credentials import ApiKeys, Authenticator, Credentials, load_credentials
from cdp.health import Health
from cdp.health import check as check_health
from cdp.metrics import reset_worker_metrics, worker_metrics_dir
from cdp.profiles.privacy import Erasure
from cdp.profiles.store import ProfileStore
from cdp.records import RecordsWriter
from cdp.redis_server import EmbeddedRedis, redis_for
from cdp.schema import migrate
from cdp.settings import Settings
from cdp.storage import Warehouse, connect_async_redis, connect_redis, connect_warehouse
from cdp.supervisor import WorkerProcess
from ingestion.normalize import load_user_agent_rules
from ingestion.rate_limit import RateLimit
from ingestion.routes import PATHS as TRACKING_PATHS
from ingestion.routes import Tracking, TrackingAPI, openapi_paths
from ingestion.routes import router as snippet_router
from ingestion.stream import EventStream
from ingestion.writer import WarehouseWriter
from rules import privacy as audience_privacy
from rules.api import AudiencesApi
from rules.api import router as audiences_router
from rules.audiences import Audiences
from rules.keyspace import memberships
from rules.membership import Sources

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a running instance holds open, closed in reverse order."""

    settings: Settings
    credentials: Credentials
    warehouse: Warehouse
    redis_url: str
    redis: redis.Redis
    profiles: ProfileStore
    api_keys: ApiKeys
    catalog: Catalog
    audiences: Audiences
    embedded_redis: EmbeddedRedis | None = None
    writer: WarehouseWriter | None = None
    workers: list[StreamConsumer] = field(default_factory=list)
    profile_process: WorkerProcess | None = None
    audience_processes: list[WorkerProcess] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    @classmethod
    def start(cls, settings: Settings) -> Runtime:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        embedded, redis_url = redis_for(settings)
        warehouse = connect_warehouse(settings)
        migrate(warehouse)
        client = connect_redis(redis_url)
        credentials = load_credentials(settings)
        runtime = cls(
            settings=settings,
            credentials=credentials,
            warehouse=warehouse,
            redis_url=redis_url,
            redis=client,
            profiles=ProfileStore.from_settings(client, settings),
            api_keys=ApiKeys(client, settings.redis_prefix, credentials.admin_key),
            catalog=Catalog(
                client,
                settings.redis_prefix,
                settings.profile_changes_stream,
                settings.events_stream,
            ),
            audiences=Audiences(
                client, settings.redis_prefix, settings.history_days, settings.vip_revenue
            ),
            embedded_redis=embedded,
        )
        if settings.run_writer:
            runtime.start_writer()
        reset_worker_metrics(settings)  # before any worker process writes its own
        if settings.run_profile_worker:
            runtime.profile_process = runtime.start_process("profile worker", "profile-worker")
        if settings.run_audience_worker:
            runtime.audience_processes = [
                runtime.start_process(
                    "audience worker" + (f" {n + 1}" if settings.audience_workers > 1 else ""),
                    "audience-worker", "--index", str(n),
                )
                for n in range(settings.audience_workers)
            ]  # fmt: skip
        return runtime

    def start_writer(self) -> None:
        """The warehouse writer and the records writer: they own the ClickHouse inserts."""
        settings = self.settings
        self.writer = WarehouseWriter(
            connect_redis(self.redis_url),
            self.warehouse,
            settings.events_stream,
            batch_size=settings.writer_batch_size,
            block_ms=settings.writer_block_ms,
            gather=settings.writer_min_events,
            gather_wait_ms=settings.writer_max_wait_ms,
        )
        self._run(self.writer, "warehouse-writer")
        records = RecordsWriter(
            connect_redis(self.redis_url),
            self.warehouse,
            settings.records_stream,
            block_ms=settings.writer_block_ms,
            gather_wait_ms=settings.writer_max_wait_ms,
        )
        self._run(records, "records-writer")

    @property
    def audience_process(self) -> WorkerProcess | None:
        """The first audience worker process, if any."""
        return self.audience_processes[0] if self.audience_processes else None

    def start_process(self, name: str, command: str, *options: str) -> WorkerProcess:
        """A worker in a process of its own: it needs only Redis, the edge keeps its
        interpreter, and a crash of the engine inside (durable_rules is C) takes only it."""
        process = WorkerProcess(name, [command, *options, "--log-level", "warning"],
                                self.settings, self.redis_url)  # fmt: skip
        process.start()
        return process

    def _run(self, worker: StreamConsumer, name: str) -> None:
        thread = threading.Thread(target=worker.run, args=(self._stop,), name=name, daemon=True)
        thread.start()
        self.workers.append(worker)
        self._threads.append(thread)

    def services(self) -> dict[type, Any]:
        """What each route module needs, made once, by kind (`cdp.api.common.provided`)."""
        settings = self.settings
        streams = [settings.events_stream, settings.records_stream]
        profile_process, audience_processes = self.profile_process, self.audience_processes
        return {
            Authenticator: Authenticator(self.api_keys, self.credentials.write_keys),
            ApiKeys: self.api_keys,
            ProfilesApi: ProfilesApi(self.profiles, self.warehouse, self.memberships),
            ConsentApi: ConsentApi(self.profiles),
            Erasure: Erasure(self.redis, self.warehouse, self.profiles, streams,
                             [settings.dead_letter_stream, settings.profile_changes_stream],
                             settings.erase_wait_seconds, [self.erase_audiences],
                             [settings.profile_changes_stream, settings.records_stream]),
            Catalog: self.catalog,
            AudiencesApi: AudiencesApi(self.audiences, self.profiles, self.redis, self.warehouse,
                                       Sources(self.warehouse, self.redis, self.profiles,
                                               self.catalog, self.audiences.keys,
                                               settings.history_days,
                                               settings.history_events),
                                       settings.events_stream,
                                       settings.profile_changes_stream,
                                       settings.records_stream,
                                       backfill_rate=settings.backfill_rate),
            ReportsApi: ReportsApi(self.warehouse, self.redis, settings.streams),
            OperationsApi: OperationsApi(
                self.redis,
                settings.dead_letter_stream,
                self.health,
                self.writer is not None,
                lambda: profile_process.state() if profile_process is not None else None,
                worker_metrics_dir(settings),
                lambda: [process.state() for process in audience_processes],
            ),
        }  # fmt: skip

    def adopt_shipped(self, audiences: AudiencesApi) -> None:
        """Predefined audiences this version or its settings changed are decided anew, in a
        thread of their own (on a big shop their SQL takes seconds; the server answers
        meanwhile)."""

        def adopt() -> None:
            try:
                audiences.adopt_shipped()
            except Exception:
                log.exception("predefined audiences: the changed ones were not decided anew")

        threading.Thread(target=adopt, name="adopt-shipped-audiences", daemon=True).start()

    def memberships(self, profile_id: str) -> list[str]:
        return sorted(memberships(self.redis.hgetall(self.audiences.keys.of(profile_id))))

    def erase_audiences(self, profile_ids: list[str]) -> dict[str, int]:
        return audience_privacy.erase(self.redis, self.warehouse, self.audiences, profile_ids)

    def health(self) -> Health:
        settings = self.settings
        running = {thread.name: thread.is_alive() for thread in self._threads}
        for process in (self.profile_process, *self.audience_processes):
            if process is not None:
                running[process.name] = bool(process.state()["running"])
        return check_health(
            self.redis,
            self.warehouse,
            {
                "events": settings.events_stream,
                "records": settings.records_stream,
                "profile changes": settings.profile_changes_stream,
            },
            settings.dead_letter_stream,
            running,
            settings.health_max_lag_seconds,
            self.audiences.keys.due,
            self.audiences.invalid,
        )

    def stop_workers(self) -> None:
        """Stop the worker threads, then store what is left in the streams (the profile
        worker has stopped by now, so the records writer sees its last records)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        for thread, worker in zip(self._threads, self.workers, strict=True):
            if not thread.is_alive():
                try:
                    worker.finish()
                except Exception as error:  # storage away: it stays for the next start
                    log.warning("%s could not finish: %s", worker.group, error)
            worker.client.close()
        self._threads, self.workers = [], []

    def close(self) -> None:
        for process in (*self.audience_processes, self.profile_process):
            if process is not None:
                process.stop()
        self.stop_workers()
        self.redis.close()
        self.warehouse.close()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()


def _add_layers(app: FastAPI, settings: Settings) -> None:
    # Each added layer wraps the ones before: the last added sees a request first.
    app.add_middleware(CredentialsFirst, state=app.state)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Content-Encoding"],
        max_age=86400,
    )
    # Tracking requests skip the framework's routing and CORS.
    app.add_middleware(TrackingAPI, state=app.state)
    app.add_middleware(
        AccessLog,
        enabled=settings.access_log,
        known_paths=frozenset(TRACKING_PATHS),
        json_lines=settings.log_format == "json",
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = Runtime.start(settings)
        load_user_agent_rules()
        async_redis = connect_async_redis(runtime.redis_url)
        app.state.runtime = runtime
        app.state.services = runtime.services()
        runtime.adopt_shipped(app.state.services[AudiencesApi])
        app.state.tracking = Tracking(
            write_keys=runtime.credentials.write_keys,
            stream=EventStream(
                async_redis,
                settings.events_stream,
                settings.redis_prefix,
                settings.dedup_window_hours * 3600,
            ),
            max_event_bytes=settings.max_event_bytes,
            max_batch_bytes=settings.max_batch_bytes,
            cors_origins=frozenset(settings.cors_origins),
            rate_limit=RateLimit.of(settings.rate_limit, frozenset(settings.catalog_write_keys)),
        )
        try:
            yield
        finally:
            await async_redis.aclose()
            runtime.close()

    # Docs with their assets served from the fastapi-offline package: no CDN.
    app = FastAPIOffline(
        title="CDP",
        version=cdp.__version__,
        summary="Customer data platform for web shops: tracking, profiles, audiences, campaigns",
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would be built from the client's Host header
    )
    _add_layers(app, settings)
    answer_errors(app)
    app.include_router(snippet_router)

    def openapi() -> dict[str, Any]:
        schema = app.openapi_schema
        if schema is None:
            schema = FastAPI.openapi(app)  # kept in app.openapi_schema, completed here
            components = schema.setdefault("components", {})
            schema["paths"] = {**openapi_paths(components), **schema["paths"]}
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    for router in [*api.routers(), audiences_router]:
        app.include_router(router)

    return app
