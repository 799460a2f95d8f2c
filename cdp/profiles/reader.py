"""Reading live profiles: the narrow interface the rules engine and activation use.

Times a `Profile` shows are ISO 8601 UTC; counts are summed over whole UTC days. An id that
was merged into another resolves to the survivor; an unknown id reads as None."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import redis

from cdp.errors import NotFound
from cdp.profiles.identity import untag
from cdp.profiles.keyspace import NOT_HASHES, PARTS, Keyspace
from cdp.storage import text

WINDOWS = (1, 7, 30, 90)
CONSENT_PARTS = ("consent", "consent_at", "consent_src")
SHOWN_PARTS = tuple(part for part in PARTS if part != "history")  # audiences read that


@dataclass
class Profile:
    """A profile as the API shows it; times are ISO 8601 UTC."""

    id: str
    identities: list[dict[str, Any]]
    traits: dict[str, Any]
    features: dict[str, Any]
    consent: dict[str, dict[str, Any]]
    suppression: dict[str, Any]
    timezone: str | None
    first_seen: str
    last_seen: str
    merged_profiles: list[str]
    log: list[dict[str, Any]]
    audiences: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Shallow: the fields hold plain JSON values already (asdict would deep-copy them)."""
        return dict(vars(self))

    def identifiers(self, kind: str) -> list[str]:
        return [i["value"] for i in self.identities if i["kind"] == kind]


def iso(ms: Any) -> str | None:
    if ms is None or ms == "":
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat(timespec="milliseconds")


def _text(mapping: dict[bytes, bytes]) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in mapping.items()}


@dataclass(slots=True)  # (made for every profile evaluated: not frozen, which costs twice)
class AudienceInputs:
    history: list[list[Any]]  # [at, message id, event, properties], in time order
    traits: dict[str, Any]
    granted: set[tuple[str, str]]  # (channel, purpose)
    time_zone: str | None = None  # the profile's (IANA), if an event told it
    orders: int = 0  # its `Order Completed` events, ever
    bot_only: bool = False  # only bots sent it events (`cdp/lua/profiles.lua`)


class ProfileReader:
    """The live profiles under one key prefix, read."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.keys = Keyspace(prefix)

    def key(self, profile_id: str, part: str | None = None) -> str:
        return self.keys.profile(profile_id, part)

    def live_id(self, profile_id: str) -> str | None:
        """The live profile an id names, following merges; None when there is none."""
        for _ in range(32):
            if self.client.exists(self.key(profile_id)):
                return profile_id
            merged_into = self.client.get(self.keys.merged(profile_id))
            if merged_into is None:
                return None
            profile_id = text(merged_into)
        return None

    def find(self, kind_tag: str, value: str) -> str | None:
        """The live profile an identifier belongs to, None when no profile has it. `value`
        in its normal form (`identity.normalise`: e-mail lower-cased, phone E.164)."""
        owner = self.client.get(self.keys.identity(f"{kind_tag}:{value}"))
        return text(owner) if owner else None

    def consent(self, profile_id: str) -> dict[str, dict[str, Any]] | None:
        """Consent now, channel → purpose → {status, at, source}; None for an unknown id. A
        channel absent, or a purpose absent under it, was never stated: no consent."""
        pid = self.live_id(profile_id)
        if pid is None:
            return None
        pipe = self.client.pipeline(transaction=True)
        for part in CONSENT_PARTS:  # only what consent is made of, not the whole profile
            pipe.hgetall(self.key(pid, part))
        return _consent(dict(zip(CONSENT_PARTS, pipe.execute(), strict=True)))

    def audience_inputs(self, profile_id: str, since: int) -> AudienceInputs | None:
        """What audiences read of a live profile (`profile_id` must be live: see
        `live_id`), in one round trip: its track events after `since` (epoch ms) in time
        order, its traits (JSON values), the (channel, purpose) pairs granted now. None when
        the profile does not exist."""
        reply = self.client.eval(READ_INPUTS, 4, *self.input_keys(profile_id), since)
        return audience_inputs_of(reply)

    def input_keys(self, profile_id: str) -> list[str]:
        """The keys `INPUTS_LUA`'s `audience_inputs` reads, in its order."""
        return [self.key(profile_id), self.key(profile_id, "history"),
                self.key(profile_id, "traits"), self.key(profile_id, "consent")]  # fmt: skip

    def granted(self, profile_ids: list[str], channel: str, purpose: str) -> set[str]:
        """Those of these live profiles that have consent for the channel and purpose now."""
        pipe = self.client.pipeline(transaction=False)
        for pid in profile_ids:
            pipe.hget(self.key(pid, "consent"), f"{channel}:{purpose}")
        return {pid for pid, status in zip(profile_ids, pipe.execute(), strict=True)
                if status == b"granted"}  # fmt: skip

    def profile_ids(self) -> set[str]:
        """Every live profile's id."""
        return {text(member) for member in self.client.smembers(self.keys.profiles)}

    def counts(self) -> tuple[int, int]:
        """Profiles in all, and those known by more than an anonymous id."""
        pipe = self.client.pipeline(transaction=False)
        pipe.scard(self.keys.profiles)
        pipe.scard(self.keys.known)
        total, known = pipe.execute()
        return int(total), int(known)

    def existing(self, profile_id: str) -> Profile:
        """`read`, for callers that answer an unknown id with NotFound (a 404)."""
        profile = self.read(profile_id)
        if profile is None:
            raise NotFound(f"no profile {profile_id}")
        return profile

    def read(self, profile_id: str, today: int | None = None) -> Profile | None:
        """The profile, or None for an unknown id; a merged-away id reads the survivor.
        `features.counts` are summed per window over whole UTC days up to `today` (days
        since the epoch; now by default)."""
        pid = self.live_id(profile_id)
        if pid is None:
            return None
        stored = self._parts(pid)
        if stored is None:
            return None
        meta, parts = stored
        today = today if today is not None else int(time.time() // 86400)
        features = {
            "events": int(meta.get("events", 0)),
            "orders": int(meta.get("orders", 0)),
            "revenue": int(meta.get("revenue", 0)) / 100,
            "last_order_at": iso(meta.get("last_order_at")),
            "cart": _cart(parts),
            "cart_updated_at": iso(meta.get("cart_at")),
            "last_viewed_products": _last_viewed(parts),
            "counts": windowed_counts(self._day_counts(pid, parts), today, WINDOWS),
        }
        return Profile(
            id=pid,
            identities=_identities(parts),
            traits={k: orjson.loads(v) for k, v in _text(parts["traits"]).items()},
            features=features,
            consent=_consent(parts),
            suppression=_suppression(parts),
            timezone=meta.get("tz"),
            first_seen=iso(meta["first_seen"]) or "",
            last_seen=iso(meta["last_seen"]) or "",
            merged_profiles=sorted(m.decode() for m in parts["absorbed"]),
            log=[orjson.loads(entry) for entry in parts["log"]],
        )

    def _parts(self, pid: str) -> tuple[dict[str, str], dict[str, Any]] | None:
        """The profile's fields and each of its parts, read in one transaction."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(self.key(pid))
        for part in SHOWN_PARTS:
            kind = NOT_HASHES.get(part)
            if kind == "zset":
                pipe.zrange(self.key(pid, part), 0, -1, withscores=True)
            elif kind == "list":
                pipe.lrange(self.key(pid, part), 0, -1)
            elif kind == "set":
                pipe.smembers(self.key(pid, part))
            else:
                pipe.hgetall(self.key(pid, part))
        meta_raw, *parts_raw = pipe.execute()
        if not meta_raw:
            return None
        return _text(meta_raw), dict(zip(SHOWN_PARTS, parts_raw, strict=True))

    def _day_counts(self, pid: str, parts: dict[str, Any]) -> dict[int, dict[str, str]]:
        days = [int(float(score)) for _, score in parts["days"]]
        pipe = self.client.pipeline(transaction=False)
        for day in days:
            pipe.hgetall(self.keys.day(pid, day))
        return dict(zip(days, (_text(c) for c in pipe.execute()), strict=True))


def _identities(parts: dict[str, Any]) -> list[dict[str, Any]]:
    """Oldest first, each with its kind and when it was first seen."""
    identities = []
    ids = _text(parts["ids"])
    for ident, first in sorted(ids.items(), key=lambda item: (int(item[1]), item[0])):
        kind, value = untag(ident)
        identities.append({"kind": kind.value, "value": value, "first_seen": iso(first)})
    return identities


def _cart(parts: dict[str, Any]) -> list[dict[str, Any]]:
    items = _text(parts["cart_items"])
    return [
        {**orjson.loads(items.get(product, "{}")), "product_id": product,
         "quantity": int(quantity), "added_at": iso(items.get(f"{product}:at"))}
        for product, quantity in sorted(_text(parts["cart"]).items())
    ]  # fmt: skip


def _last_viewed(parts: dict[str, Any]) -> list[dict[str, Any]]:
    items = _text(parts["viewed_items"])
    return [
        {**orjson.loads(items.get(product.decode(), "{}")),
         "product_id": product.decode(), "viewed_at": iso(int(score))}
        for product, score in reversed(parts["viewed"])
    ]  # fmt: skip


# What audiences read of a profile, as a Lua function for the scripts that read it (many
# profiles and what else they need of them in one call, as the audience worker does); its
# reply goes to `audience_inputs_of`. Arguments: `input_keys`, then the epoch ms after which
# history counts.
INPUTS_LUA = """
local function audience_inputs(profile, history, traits, consent, since)
  if redis.call('EXISTS', profile) == 0 then
    return {0}
  end
  local rows = redis.call('ZRANGE', history, '(' .. since, '+inf', 'BYSCORE', 'WITHSCORES')
  local events = {}
  for i = 1, #rows, 2 do  -- [time, id, name, properties]: the member is [id, name, properties]
    events[#events + 1] = '[' .. rows[i + 1] .. ',' .. string.sub(rows[i], 2)
  end
  return {1, '[' .. table.concat(events, ',') .. ']',
          redis.call('HGETALL', traits), redis.call('HGETALL', consent),
          redis.call('HMGET', profile, 'tz', 'orders', 'bot_only')}
end
"""
READ_INPUTS = INPUTS_LUA + "return audience_inputs(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])"


def audience_inputs_of(reply: list[Any]) -> AudienceInputs | None:
    """The inputs from `audience_inputs`' reply (None: no such profile)."""
    if not reply[0]:
        return None
    _, history, traits, consent, (time_zone, orders, bot_only) = reply
    return AudienceInputs(
        history=orjson.loads(history),  # one JSON text: the script wrote it of the members
        traits={text(traits[i]): orjson.loads(traits[i + 1]) for i in range(0, len(traits), 2)},
        granted={
            _pair(text(consent[i]))
            for i in range(0, len(consent), 2)
            if consent[i + 1] == b"granted"
        },  # fmt: skip
        time_zone=text(time_zone) if time_zone else None,
        orders=int(orders or 0),
        bot_only=bool(bot_only),
    )


def _pair(channel_purpose: str) -> tuple[str, str]:
    channel, _, purpose = channel_purpose.partition(":")
    return channel, purpose


def _consent(parts: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Channel → purpose → {status, at, source}."""
    at, source = _text(parts["consent_at"]), _text(parts["consent_src"])
    consent: dict[str, dict[str, Any]] = {}
    for pair, status in sorted(_text(parts["consent"]).items()):
        channel, _, purpose = pair.partition(":")
        consent.setdefault(channel, {})[purpose] = {
            "status": status, "at": iso(at.get(pair)), "source": source.get(pair),
        }  # fmt: skip
    return consent


def _suppression(parts: dict[str, Any]) -> dict[str, Any]:
    suppression = {}
    for channel, value in _text(parts["suppression"]).items():
        state = orjson.loads(value)
        suppression[channel] = {**state, "at": iso(state["at"])}
    return suppression


def windowed_counts(
    day_counts: dict[int, dict[str, str]], today: int, windows: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """Per window (`7d`), counts by event, by event and category, by event and product."""
    out: dict[str, dict[str, Any]] = {}
    for window in windows:
        events: dict[str, int] = {}
        categories: dict[str, dict[str, int]] = {}
        products: dict[str, dict[str, int]] = {}
        for day, counts in day_counts.items():
            if day <= today - window:
                continue
            for field_name, count in counts.items():
                tag, _, rest = field_name.partition(":")
                if tag == "e":
                    events[rest] = events.get(rest, 0) + int(count)
                    continue
                name, _, value = rest.partition("|")
                target = categories if tag == "ec" else products
                per_event = target.setdefault(name, {})
                per_event[value] = per_event.get(value, 0) + int(count)
        out[f"{window}d"] = {"events": events, "categories": categories, "products": products}
    return out
