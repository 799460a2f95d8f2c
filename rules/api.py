"""Audiences over HTTP, under `/api/v1`: define, list, show, change, delete; preview a
definition before saving it; page through members; size over time; a profile's
memberships, and why a profile is or is not in an audience now, condition by condition.
Write keys change audiences, read keys read them."""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import orjson
import redis
from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cdp.api.common import READ, WRITE, errors, provided, resource_router
from cdp.errors import BadRequest, NotFound, Unprocessable
from cdp.profiles.reader import ProfileReader, iso
from cdp.storage import Warehouse, text
from cdp.streams import wait_until_settled
from rules.audiences import Audiences, Saved, problems_of
from rules.conditions import holds, next_change, product_of, read
from rules.definition import Definition, InvalidDefinition, Node, check_shape, references
from rules.evaluation import subject_of
from rules.hints import checked
from rules.keyspace import AudienceKeys, memberships
from rules.membership import Sources, audit, candidates_at, members_at

log = logging.getLogger(__name__)

SAMPLE = 10
HISTORY_SHOWN = 20  # transitions a "why" answer shows


class AudienceIn(BaseModel):
    """An audience as a marketer writes it. `root` is the definition's tree (see the README:
    `and`, `or`, `not`, `performed`, `not_followed_by`, `last_performed`, `aggregate`,
    `trait`, `cart`, `consent`, `out_of_stock`, `bucket`, `member_of`)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200)]
    description: str = Field(default="", max_length=2000)
    enabled: bool = True
    root: Node


class AudienceNew(AudienceIn):
    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$",
                             description="Lower case, digits and dashes")]  # fmt: skip


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    root: Node
    at: datetime | None = Field(default=None, description="The moment (default: now)")


class ComputingOut(BaseModel):
    since: str = Field(description="When the definition changed (or was created)")
    candidates: int = Field(description="Profiles the definition's SQL may hold for, and "
                            "the members then: each is decided again")  # fmt: skip
    waiting: int = Field(description="Profiles due for evaluation by the backfill's end and "
                         "not evaluated yet (its candidates among them)")  # fmt: skip


class AudienceOut(BaseModel):
    id: str
    name: str
    description: str
    enabled: bool
    root: dict[str, Any]
    predefined: bool
    size: int
    computing: ComputingOut | None = Field(
        description="Its members being decided after a change of the definition (the size "
        "grows or shrinks meanwhile); null when they are current"
    )
    created_at: str | None
    updated_at: str | None


class InvalidOut(BaseModel):
    id: str
    problem: str = Field(description="Why its stored definition is not valid")


class AudiencesOut(BaseModel):
    audiences: list[AudienceOut]
    invalid: list[InvalidOut] = Field(
        default_factory=list,
        description="Audiences whose stored definition is not valid (saved by an older "
        "version, whose checks were looser): not evaluated, their members kept as they are, "
        "until PUT anew or deleted",
    )


class HintOut(BaseModel):
    path: str = Field(description="The condition's field, as `root.and[0].performed.event`")
    hint: str


HINTS = ("What the warehouse says can never hold or count: an event never received, a "
         "property no such event carries, a text value none of them had, a trait (or trait "
         "value) no profile was given, a value of a type it never has, a cart with no "
         "`Product Added` or numeric price, a time zone no event told (a typo keeps an "
         "audience empty for ever); and a membership of a disabled audience. Not errors: the "
         "events may not have come yet.")  # fmt: skip


class HintsOut(BaseModel):
    audience: str
    hints: list[HintOut] = Field(description=HINTS)


class SavedOut(AudienceOut):
    hints: list[HintOut] = Field(description=HINTS)


class PreviewOut(BaseModel):
    size: int
    sample: list[str] = Field(description=f"Up to {SAMPLE} profile ids")
    at: str
    hints: list[HintOut] = Field(description=HINTS)


class MemberOut(BaseModel):
    profile_id: str
    since: str


class MembersOut(BaseModel):
    members: list[MemberOut]
    next_cursor: str | None


class SizeOut(BaseModel):
    at: str = Field(description="The start of the interval")
    entered: int
    exited: int
    size: int = Field(description="Members at the end of the interval")


class SizesOut(BaseModel):
    audience: str
    interval: str
    sizes: list[SizeOut]


class AuditOut(BaseModel):
    audience: str
    at: str = Field(description="The moment both sides were read at")
    agree: bool = Field(description="No profile is a member on one side only")
    live: int = Field(description="Members kept in real time")
    sql: int = Field(description="Members by the definition's SQL over the warehouse")
    differences: int = Field(description="Profiles a member on one side only")
    only_live: list[str] = Field(description=f"Up to {SAMPLE} of them kept live only")
    only_sql: list[str] = Field(description=f"Up to {SAMPLE} of them by the SQL only")
    pending: int = Field(
        description="Profiles on one side only whose evaluation was due (time "
        "passed, not yet run): not counted as differences"
    )
    settled: bool = Field(
        description="What was received before the audit was processed "
        "(else events on their way may show as differences)"
    )


class MembershipOut(BaseModel):
    audience: str
    since: str


class MembershipsOut(BaseModel):
    profile_id: str
    audiences: list[MembershipOut]


class ConditionOut(BaseModel):
    path: str
    condition: str
    value: Any
    threshold: str
    holds: bool


class TransitionOut(BaseModel):
    change: Literal["enter", "exit"]
    at: str
    cause: str = Field(description="`event`, `time`, `definition` or `merge`")
    profile_id: str = Field(description="The profile then (one merged into this one, maybe)")
    reason: list[ConditionOut] = Field(description="Each condition at that moment")


class WhyOut(BaseModel):
    profile_id: str
    audience: str
    member: bool = Field(description="Kept as a member now")
    since: str | None
    holds: bool = Field(description="The definition holds now, read afresh")
    bot_only: bool = Field(
        False,
        description="Only bots (by their user agent) sent this profile events: it belongs to "
        "no audience, whatever its conditions read, until a person's event comes to it",
    )
    conditions: list[ConditionOut]
    unchanged_until: str | None = Field(
        description="With no new event, the conditions read as they do now until this moment "
        "(a window slides, a wait ends): the answer may change then, as the audience worker "
        "sees it at that moment. Null: only an event can change it"
    )
    history: list[TransitionOut] = Field(
        description=f"Its recorded enters and exits of the audience, newest first (up to "
        f"{HISTORY_SHOWN}), each with its reason then: why it entered when it did"
    )


@dataclass(frozen=True)
class AudiencesApi:
    audiences: Audiences
    reader: ProfileReader
    redis: redis.Redis
    warehouse: Warehouse
    sources: Sources
    # What the tracking API took before a backfill is stored first (the SQL reads ClickHouse:
    # the events, and the identities that tie them to profiles, which come as records),
    # waiting for these streams' consumers at most `settle_seconds`.
    events_stream: str = ""
    changes_stream: str = ""  # the audience worker's: settled before an audit
    records_stream: str = ""
    settle_seconds: float = 10.0
    # The pace at which a backfill asks for its profiles (`CDP_BACKFILL_RATE`): the moments
    # of time-based transitions that come meanwhile are not held behind it.
    backfill_rate: int = 1000

    @property
    def stored_streams(self) -> list[str]:
        """What feeds ClickHouse, in order (the records come of the events)."""
        return [s for s in (self.events_stream, self.records_stream) if s]

    @property
    def keys(self) -> AudienceKeys:
        return self.audiences.keys

    def out(self, saved: Saved) -> dict[str, Any]:
        return self.out_all([saved])[0]

    def out_all(self, saved: list[Saved]) -> list[dict[str, Any]]:
        """The audiences as the API shows them, their sizes and backfills read in one round
        trip."""
        pipe = self.redis.pipeline(transaction=False)
        for one in saved:
            pipe.zcard(self.keys.members(one.id))
            pipe.hget(self.keys.backfills, one.id)
        found = pipe.execute()
        documents = []
        for one, size, backfill in zip(saved, found[::2], found[1::2], strict=True):
            document = one.as_dict()
            document["size"] = int(size)
            document["computing"] = computing(self.redis, self.keys, one.id, backfill)
            document["created_at"] = iso(one.created_at)
            document["updated_at"] = iso(one.updated_at)
            documents.append(document)
        return documents

    def save(self, definition: Definition, create: bool) -> dict[str, Any]:
        try:
            saved = self.audiences.save(definition, create=create)
        except InvalidDefinition as error:
            raise Unprocessable(
                "invalid definition", ["body." + p for p in error.problems]
            ) from None
        self.backfill(definition)
        return {**self.out(saved), "hints": self.hints(definition.root, int(time.time() * 1000))}

    def hints(self, root: Node, now: int) -> list[dict[str, str]]:
        disabled: frozenset[str] = frozenset()
        if referenced := references(root):  # the definitions are read only for these
            found, _ = self.audiences.read()
            disabled = frozenset(i for i in referenced
                                 if i in found and not found[i].definition.enabled)  # fmt: skip
        return checked(self.warehouse, root, self.audiences.history_days, now, disabled)

    def backfill(self, definition: Definition, settle: bool = True) -> int:
        """Have the real-time path decide everyone the definition may hold for, now or later
        with no new event, and everyone in the audience now, at `backfill_rate` a second
        (`settle`: first wait until what the tracking API took is in ClickHouse)."""
        if settle and self.stored_streams and wait_until_settled(
            self.redis, self.stored_streams, self.settle_seconds
        ) is None:  # fmt: skip
            log.warning("backfill of %s: events not stored in ClickHouse after %ss; a profile "
                        "only they bring in enters with its next event", definition.id,
                        self.settle_seconds)  # fmt: skip
        now = int(time.time() * 1000)
        candidates = candidates_at(self.sources, definition.root, now) if definition.enabled else []
        current = [text(m) for m in self.redis.zrange(self.keys.members(definition.id), 0, -1)]
        asked = sorted({*candidates, *current})
        until = paced(now, len(asked), self.backfill_rate)
        self.redis.hset(self.keys.backfills, definition.id, orjson.dumps(
            {"at": now, "until": until, "candidates": len(asked)}))  # fmt: skip
        return schedule(self.redis, self.keys, asked, now, self.backfill_rate)

    def adopt_shipped(self) -> list[str]:
        """The predefined audiences a new version or setting changed, backfilled as a save
        would (`Audiences.adopt_shipped`): at start, before the shop's traffic needs them."""
        changed = self.audiences.adopt_shipped()
        for definition in changed:
            log.info("predefined audience %s changed with this version or its settings: "
                     "deciding its members anew", definition.id)  # fmt: skip
            # No wait for the events on their way: the generation moved on, so each profile
            # they change is decided in full when they come.
            self.backfill(definition, settle=False)
        return [d.id for d in changed]

    def delete(self, audience_id: str) -> None:
        self.audiences.delete(audience_id)
        self.redis.hdel(self.keys.backfills, audience_id)
        current = [text(m) for m in self.redis.zrange(self.keys.members(audience_id), 0, -1)]
        schedule(self.redis, self.keys, current, int(time.time() * 1000), self.backfill_rate)

    def preview(self, root: Node, at: int) -> dict[str, Any]:
        try:
            problems = problems_for_preview(self.audiences, root)
        except InvalidDefinition as error:
            problems = error.problems
        if problems:
            raise Unprocessable("invalid definition", ["body." + p for p in problems])
        members = members_at(self.sources, root, at)
        return {"size": len(members), "sample": members[:SAMPLE], "at": iso(at),
                "hints": self.hints(root, at)}  # fmt: skip

    def audit(self, audience_id: str) -> dict[str, Any]:
        """Once what was received is processed (up to `settle_seconds`), the members kept in
        real time against the definition's SQL at one moment."""
        definition = self.audiences.get(audience_id).definition
        streams = [*self.stored_streams, *([self.changes_stream] if self.changes_stream else [])]
        settled = wait_until_settled(self.redis, streams, self.settle_seconds) is not None
        now = int(time.time() * 1000)
        found = audit(self.sources, definition, now)
        only_live, only_sql = found.only_live, found.only_sql
        return {"audience": audience_id, "at": iso(now), "agree": not only_live and not only_sql,
                "live": len(found.live), "sql": len(found.sql),
                "differences": len(only_live) + len(only_sql), "only_live": only_live[:SAMPLE],
                "only_sql": only_sql[:SAMPLE], "pending": found.pending,
                "settled": settled}  # fmt: skip

    def members(self, audience_id: str, cursor: str | None, limit: int) -> dict[str, Any]:
        """A page of members by (since, profile id), after the cursor's. Many members can
        share one `since` (a backfill decides them at one moment): those up to the cursor
        are passed over in chunks, so no page is cut short."""
        self.audiences.require(audience_id)
        after = decode(cursor) if cursor else None
        low: Any = after[0] if after else "-inf"
        key = self.keys.members(audience_id)
        page: list[tuple[str, int]] = []
        offset = 0
        while len(page) <= limit:  # one more than a page: is there a next one?
            rows: Any = self.redis.zrange(key, low, "+inf", byscore=True, withscores=True,
                                          offset=offset, num=limit + 200)  # fmt: skip
            if not rows:
                break
            offset += len(rows)
            found = [(text(m), int(s)) for m, s in rows]
            page += [(m, s) for m, s in found if after is None or (s, m) > (after[0], after[1])]
        more = len(page) > limit
        page = page[:limit]
        next_cursor = encode(page[-1][1], page[-1][0]) if more else None
        return {"members": [{"profile_id": m, "since": iso(s)} for m, s in page],
                "next_cursor": next_cursor}  # fmt: skip

    def sizes(self, audience_id: str, interval: Literal["hour", "day"]) -> dict[str, Any]:
        self.audiences.require(audience_id)
        start = "toStartOfHour" if interval == "hour" else "toStartOfDay"
        rows = self.warehouse.query_rows(
            f"SELECT toUnixTimestamp64Milli(toDateTime64({start}(at), 3, 'UTC')) AS bucket, "
            "countIf(change = 'enter'), countIf(change = 'exit') FROM audience_log "
            "WHERE audience_id = {audience:String} GROUP BY bucket ORDER BY bucket",
            {"audience": audience_id},
        )
        size, sizes = 0, []
        for bucket, entered, exited in rows:
            size += int(entered) - int(exited)
            sizes.append({"at": iso(bucket), "entered": int(entered), "exited": int(exited),
                          "size": size})  # fmt: skip
        return {"audience": audience_id, "interval": interval, "sizes": sizes}

    def memberships(self, profile_id: str) -> dict[str, Any]:
        profile = self.reader.existing(profile_id)
        found = sorted(self.stored(profile.id).items())
        return {"profile_id": profile.id,
                "audiences": [{"audience": a, "since": iso(s)} for a, s in found]}  # fmt: skip

    def stored(self, profile_id: str) -> dict[str, int]:
        """The profile's memberships as the worker keeps them: audience → since (ms)."""
        return memberships(self.redis.hgetall(self.keys.of(profile_id)))

    def why(self, profile_id: str, audience_id: str) -> dict[str, Any]:
        profile = self.reader.existing(profile_id)
        definition = self.audiences.get(audience_id).definition
        now = int(time.time() * 1000)
        stored = self.stored(profile.id)
        subject = subject_of(self.reader, profile.id, set(stored), now,
                             self.audiences.history_days)  # fmt: skip
        if subject is None:
            raise NotFound(f"no profile {profile_id}")
        products = {p for h in subject.history if (p := product_of(h.properties))}
        subject.out_of_stock = frozenset(self.sources.catalog.out_of_stock(sorted(products)))
        readings = read(definition.root, subject, now)
        judged = definition.enabled and not subject.bot_only
        return {
            "profile_id": profile.id, "audience": audience_id,
            "member": audience_id in stored, "since": iso(stored.get(audience_id)),
            "holds": judged and holds(definition.root, {r.path: r for r in readings}),
            "bot_only": subject.bot_only,
            "conditions": [r.as_dict() for r in readings],
            "unchanged_until": iso(next_change(readings, now)) if judged else None,
            "history": self.transitions([profile.id, *profile.merged_profiles], audience_id),
        }  # fmt: skip

    def transitions(self, profile_ids: list[str], audience_id: str) -> list[dict[str, Any]]:
        """The recorded enters and exits of these profiles in the audience, newest first."""
        rows = self.warehouse.query_rows(
            "SELECT change, toUnixTimestamp64Milli(at), cause, profile_id, reason "
            "FROM audience_log WHERE profile_id IN {ids:Array(String)} "
            "AND audience_id = {audience:String} ORDER BY at DESC, change DESC "
            f"LIMIT {HISTORY_SHOWN}",
            {"ids": profile_ids, "audience": audience_id},
        )
        return [{"change": change, "at": iso(at), "cause": cause, "profile_id": pid,
                 "reason": orjson.loads(reason)}
                for change, at, cause, pid, reason in rows]  # fmt: skip


def problems_for_preview(audiences: Audiences, root: Node) -> list[str]:
    check_shape(root)
    found, invalid = audiences.read()
    others = {i: s.definition for i, s in found.items()}
    return problems_of(root, others, "(preview)", audiences.history_days, invalid)


def computing(
    client: redis.Redis, keys: AudienceKeys, audience_id: str, raw: bytes | None
) -> dict[str, Any] | None:
    """The audience's last backfill (`raw`, as stored) while the profiles due by its end
    (its candidates among them) wait for the audience worker; None once they are all
    evaluated."""
    if raw is None:
        return None
    backfill = orjson.loads(raw)
    waiting = int(client.zcount(keys.due, "-inf", backfill["until"]))
    if not waiting:
        # Done: forgotten, unless a newer backfill took its place meanwhile.
        client.eval(FORGET, 1, keys.backfills, audience_id, raw)
        return None
    return {"since": iso(backfill["at"]), "candidates": backfill["candidates"],
            "waiting": waiting}  # fmt: skip


FORGET = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
"""


def schedule(
    client: redis.Redis, keys: AudienceKeys, profile_ids: list[str], at: int, rate: int = 0
) -> int:
    """Ask the audience worker to evaluate these profiles at `at` (sooner if already due);
    with a `rate`, that many a second from `at` on (`paced`)."""
    scheduled = 0
    for start in range(0, len(profile_ids), 1000):
        chunk = {pid: paced(at, start + i, rate)
                 for i, pid in enumerate(profile_ids[start : start + 1000])}  # fmt: skip
        scheduled += int(client.zadd(keys.due, chunk, lt=True))  # type: ignore[arg-type]
    return scheduled


def paced(at: int, place: int, rate: int) -> int:
    """The moment of the profile at this place of a schedule of `rate` a second from `at`."""
    return at + place * 1000 // rate if rate else at


def encode(since: int, profile_id: str) -> str:
    return base64.urlsafe_b64encode(f"{since}:{profile_id}".encode()).decode().rstrip("=")


def decode(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        since, _, profile_id = raw.partition(":")
        return int(since), profile_id
    except ValueError:
        raise BadRequest(f"cursor {cursor!r} was not given by this API") from None


API = provided(AudiencesApi)
router = resource_router()
AUDIENCE_ERRORS = errors(404)


def _definition(audience_id: str, body: AudienceIn) -> Definition:
    try:
        return Definition.model_validate({"id": audience_id, **body.model_dump(by_alias=True)})
    except ValidationError:  # the body was valid: the id in the path cannot be an audience's
        raise NotFound(f"no audience {audience_id}") from None


@router.get("/audiences", tags=["audiences"], summary="Every audience, predefined ones first",
            response_model=AudiencesOut)  # fmt: skip
def list_audiences(_: READ, api: AudiencesApi = API) -> dict[str, Any]:
    found, invalid = api.audiences.read()
    ordered = sorted(found.values(), key=lambda s: (not s.predefined, s.id))
    return {"audiences": api.out_all(ordered),
            "invalid": [{"id": k, "problem": v} for k, v in sorted(invalid.items())]}  # fmt: skip


@router.post("/audiences", tags=["audiences"], summary="Define an audience (kept live at once)",
             status_code=201, response_model=SavedOut, responses=errors(400, 409))  # fmt: skip
def create_audience(body: AudienceNew, _: WRITE, api: AudiencesApi = API) -> dict[str, Any]:
    fields = body.model_dump(by_alias=True, exclude={"id"})
    return api.save(_definition(body.id, AudienceIn.model_validate(fields)), create=True)


@router.post("/audiences/preview", tags=["audiences"],
             summary="How many a definition holds for now, and some of them, before saving",
             response_model=PreviewOut, responses=errors(400))  # fmt: skip
def preview_audience(body: PreviewIn, _: READ, api: AudiencesApi = API) -> dict[str, Any]:
    at = int(body.at.timestamp() * 1000) if body.at else int(time.time() * 1000)
    return api.preview(body.root, at)


@router.get("/audiences/{audience_id}", tags=["audiences"], summary="One audience",
            response_model=AudienceOut, responses=AUDIENCE_ERRORS)  # fmt: skip
def show_audience(audience_id: str, _: READ, api: AudiencesApi = API) -> dict[str, Any]:
    return api.out(api.audiences.get(audience_id))


@router.put("/audiences/{audience_id}", tags=["audiences"],
            summary="Change an audience (members are decided again at once)",
            response_model=SavedOut, responses=errors(400, 404))  # fmt: skip
def update_audience(audience_id: str, body: AudienceIn, _: WRITE,
                    api: AudiencesApi = API) -> dict[str, Any]:  # fmt: skip
    return api.save(_definition(audience_id, body), create=False)


class DeletedOut(BaseModel):
    id: str
    deleted: bool


@router.delete("/audiences/{audience_id}", tags=["audiences"], response_model=DeletedOut,
               summary="Delete an audience (a predefined one can only be disabled); its "
                       "members leave it", responses=errors(404, 409))  # fmt: skip
def delete_audience(audience_id: str, _: WRITE, api: AudiencesApi = API) -> dict[str, Any]:
    api.delete(audience_id)
    return {"id": audience_id, "deleted": True}


@router.get("/audiences/{audience_id}/members", tags=["audiences"],
            summary="Members, longest first, a page at a time", response_model=MembersOut,
            responses=errors(400, 404))  # fmt: skip
def audience_members(
    audience_id: str, _: READ, api: AudiencesApi = API,
    cursor: Annotated[str | None, Query(max_length=400)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:  # fmt: skip
    return api.members(audience_id, cursor, limit)


@router.get("/audiences/{audience_id}/sizes", tags=["audiences"],
            summary="Size over time, from the recorded enters and exits",
            response_model=SizesOut, responses=AUDIENCE_ERRORS)  # fmt: skip
def audience_sizes(
    audience_id: str, _: READ, api: AudiencesApi = API,
    interval: Literal["hour", "day"] = "day",
) -> dict[str, Any]:  # fmt: skip
    return api.sizes(audience_id, interval)


@router.get("/audiences/{audience_id}/hints", tags=["audiences"],
            summary="What the kept history says can never hold in a saved audience",
            response_model=HintsOut, responses=AUDIENCE_ERRORS)  # fmt: skip
def audience_hints(audience_id: str, _: READ, api: AudiencesApi = API) -> dict[str, Any]:
    definition = api.audiences.get(audience_id).definition
    return {"audience": audience_id,
            "hints": api.hints(definition.root, int(time.time() * 1000))}  # fmt: skip


@router.get("/audiences/{audience_id}/audit", tags=["audiences"],
            summary="Do the members kept in real time agree with the definition's SQL now?",
            response_model=AuditOut, responses=AUDIENCE_ERRORS)  # fmt: skip
def audit_audience(audience_id: str, _: READ, api: AudiencesApi = API) -> dict[str, Any]:
    return api.audit(audience_id)


@router.get("/profiles/{profile_id}/audiences", tags=["audiences"],
            summary="The audiences a profile is in, and since when",
            response_model=MembershipsOut, responses=AUDIENCE_ERRORS)  # fmt: skip
def profile_audiences(profile_id: str, _: READ, api: AudiencesApi = API) -> dict[str, Any]:
    return api.memberships(profile_id)


@router.get("/profiles/{profile_id}/audiences/{audience_id}", tags=["audiences"],
            summary="Why a profile is or is not in an audience now, condition by condition",
            response_model=WhyOut, responses=AUDIENCE_ERRORS)  # fmt: skip
def profile_audience_why(profile_id: str, audience_id: str, _: READ,
                         api: AudiencesApi = API) -> dict[str, Any]:  # fmt: skip
    return api.why(profile_id, audience_id)
