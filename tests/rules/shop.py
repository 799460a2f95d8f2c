"""The real pipeline, driven step by step on an injected clock: events go through the
events stream to the warehouse writer and the profile worker, the records writer moves
identities to ClickHouse, and the audience worker evaluates; time moves only when a test
says so. Both membership paths read what this built: the real-time one (Redis, the
engine) and the SQL one (ClickHouse)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import redis

from cdp.catalog import Catalog
from cdp.consumer import StreamConsumer
from cdp.profiles.store import ProfileStore
from cdp.profiles.worker import ProfileWorker
from cdp.records import RecordsWriter
from cdp.schema import migrate
from cdp.settings import Settings
from cdp.storage import Warehouse, text
from ingestion.normalize import to_row
from ingestion.segment import SegmentEvent
from ingestion.writer import WarehouseWriter
from rules.api import AudiencesApi
from rules.audiences import DAY_MS, Audiences
from rules.definition import Definition
from rules.evaluation import DISAGREEMENTS
from rules.keyspace import AudienceKeys
from rules.membership import Sources, members_at
from rules.worker import AudienceWorker
from tests.streams import append

HOUR_MS = 3_600_000
START = (1_790_000_000_000 // HOUR_MS) * HOUR_MS  # a fixed hour in 2026
# Google's renderer, which runs a page's scripts (the snippet among them).
CRAWLER = (
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Googlebot/2.1; "
    "+http://www.google.com/bot.html) Chrome/131.0.0.0 Safari/537.36"
)


class Shop:
    def __init__(self, settings: Settings, client: redis.Redis, warehouse: Warehouse) -> None:
        migrate(warehouse)
        self.disagreements = disagreements()
        self.settings = settings
        self.client = client
        self.warehouse = warehouse
        self.now = START
        self.pending: list[Any] = []
        self.store = ProfileStore.from_settings(client, settings)
        self.catalog = Catalog(client, settings.redis_prefix, settings.profile_changes_stream,
                               settings.events_stream)  # fmt: skip
        self.audiences = Audiences(client, settings.redis_prefix, settings.history_days,
                                   settings.vip_revenue)  # fmt: skip
        self.keys = AudienceKeys(settings.redis_prefix)
        self.writer = WarehouseWriter(client, warehouse, settings.events_stream, block_ms=10)
        self.profiles = ProfileWorker(client, self.store, settings.events_stream, block_ms=10)
        self.records = RecordsWriter(client, warehouse, settings.records_stream, block_ms=10,
                                     gather_wait_ms=settings.writer_max_wait_ms)  # fmt: skip
        self.worker = self.audience_worker()
        self.more_workers: list[AudienceWorker] = []  # beside `worker`, sharing its work
        for consumer in (self.writer, self.profiles, self.records, self.worker):
            consumer.ensure_group()
        self.sources = Sources(warehouse, client, self.store, self.catalog, self.keys,
                               settings.history_days, settings.history_events)  # fmt: skip

    def __enter__(self) -> Shop:
        return self

    def __exit__(self, *exc: object) -> None:
        self.store.close()
        self.profiles._settler.shutdown()

    def audience_worker(
        self, kind: type[AudienceWorker] = AudienceWorker, **options: Any
    ) -> AudienceWorker:
        """An audience worker (or one of a subclass) on this shop's clock."""
        return kind(
            self.client, self.settings.profile_changes_stream, self.store, self.audiences,
            self.catalog, self.settings.records_stream, self.settings.history_days,
            clock=lambda: self.now, block_ms=10,
            **{"changes_kept": self.settings.audience_changes_kept, **options},
        )  # fmt: skip

    def define(self, audience_id: str, root: dict[str, Any]) -> Definition:
        definition = Definition.model_validate({"id": audience_id, "name": audience_id,
                                                "root": root})  # fmt: skip
        self.audiences.save(definition, create=True)
        return definition

    def track(self, who: str, event: str, at: int | None = None, user: str = "",
              time_zone: str | None = None, bot: bool = False,
              **properties: Any) -> dict[str, Any]:  # fmt: skip
        """A track event; `bot`: sent by a crawler that renders pages (its user agent)."""
        context = {**({"timezone": time_zone} if time_zone else {}),
                   **({"userAgent": CRAWLER} if bot else {})}  # fmt: skip
        return self.send({"type": "track", "event": event, "anonymousId": who,
                          **({"userId": user} if user else {}),
                          **({"context": context} if context else {}),
                          "properties": properties}, at)  # fmt: skip

    def identify(self, who: str, user: str, at: int | None = None, **traits: Any) -> dict[str, Any]:
        return self.send({"type": "identify", "anonymousId": who, "userId": user,
                          "traits": traits}, at)  # fmt: skip

    def send(
        self, payload: dict[str, Any], at: int | None = None, source: str = "server"
    ) -> dict[str, Any]:
        happened = at if at is not None else self.now
        event = {**payload, "messageId": uuid.uuid4().hex,
                 "timestamp": datetime.fromtimestamp(happened / 1000, UTC).isoformat()}  # fmt: skip
        row = to_row(SegmentEvent.model_validate(event),
                     received_at=datetime.fromtimestamp(self.now / 1000, UTC),
                     source_id=source, ip="127.0.0.1")  # fmt: skip
        self.pending.append(row)
        return event

    def settle(self) -> None:
        """Everything sent is stored, applied, recorded and evaluated (at `now`)."""
        for _ in range(50):
            moved = self.apply()
            moved += sum(worker.run_due() + step(worker) for worker in self.audience_workers)
            moved += step(self.records)
            if not moved:
                self.agreed()
                return
        raise AssertionError("the pipeline did not settle")

    def agreed(self) -> None:
        """durable_rules and the tree's own answer agreed on every profile evaluated."""
        assert disagreements() == self.disagreements, "the engine and the tree disagreed"

    def apply(self) -> int:
        """What was sent is stored and applied to profiles (their changes announced, not
        evaluated yet); how many entries moved."""
        if self.pending:
            append(self.settings, self.pending)
            self.pending = []
        moved = step(self.writer) + step(self.profiles)
        self.profiles.wait()
        return moved + step(self.records)

    def advance(self, ms: int) -> None:
        """Time passes with no event: the schedule runs, each profile at its moment."""
        self.now += ms
        while sum(worker.run_due() for worker in self.audience_workers):
            pass
        step(self.records)
        self.agreed()

    @property
    def audience_workers(self) -> list[AudienceWorker]:
        return [self.worker, *self.more_workers]

    def profile_of(self, who: str) -> str:
        found = self.store.find("a", who)
        assert found, who
        return found

    def members(self, audience: str) -> set[str]:
        """Real time: the members the worker keeps."""
        return {text(m) for m in self.client.zrange(self.keys.members(audience), 0, -1)}

    def sql_members(self, audience: str, at: int | None = None) -> set[str]:
        definition = self.audiences.get(audience).definition
        return set(members_at(self.sources, definition.root, self.now if at is None else at))

    def why(self, profile_id: str, audience: str) -> dict[str, Any]:
        """The API's answer: why the profile is or is not in the audience (at the real now)."""
        api = AudiencesApi(self.audiences, self.store, self.client, self.warehouse, self.sources)
        return api.why(profile_id, audience)

    def changes(self) -> list[dict[str, str]]:
        return [{k.decode(): v.decode() for k, v in fields.items()}
                for _, fields in self.client.xrange(self.keys.changes)]  # fmt: skip


def disagreements() -> float:
    """`cdp_audience_engine_disagreements` of this process."""
    return DISAGREEMENTS._value.get()  # type: ignore[attr-defined,no-any-return]


def step(consumer: StreamConsumer) -> int:
    """Handle what the consumer's stream holds now, without waiting."""
    entries = consumer.read_new(None)
    return consumer.handle(entries, recovered=False) if entries else 0


def days(n: float) -> int:
    return int(n * DAY_MS)
