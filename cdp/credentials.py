"""Credentials: who may send events and who may use the marketer API.

- Write keys (`wk_…`, public: embedded in the shop's pages, they only send events) and the
  bootstrap admin API key: taken from settings, or generated once and kept in the data
  directory.
- Secret API keys (`sk_…`) for the marketer API, each with a scope: `read` < `write` <
  `admin`, a higher scope including the lower. The bootstrap admin key comes from settings
  (or the data directory); the others live in Redis as SHA-256 digests, so the CLI and the
  API can make them while servers run. A write key opens nothing there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
import redis

from cdp.errors import BearerRequired, Forbidden
from cdp.settings import Settings
from cdp.storage import text

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credentials:
    write_keys: frozenset[str]
    admin_key: str
    # Made just now, by this call: `cdp serve` shows them once, with the snippet to paste.
    generated: bool = field(default=False, compare=False)


@lru_cache(maxsize=1024)
def source_id(write_key: str) -> str:
    """A stable, non-secret id of the source a write key belongs to, stored with its events."""
    return hashlib.sha256(write_key.encode()).hexdigest()[:16]


def load_credentials(settings: Settings) -> Credentials:
    """Write keys and the admin key from settings; a missing kind is generated on first
    start and kept in the data directory. The catalog's write keys send events too."""
    catalog = frozenset(settings.catalog_write_keys)
    if settings.write_keys and settings.admin_key:
        return Credentials(frozenset(settings.write_keys) | catalog, settings.admin_key)
    path = settings.data_dir / "keys.json"
    stored = _read(path)
    generated = []
    if not stored.get("write_keys"):
        stored["write_keys"] = ["wk_" + secrets.token_urlsafe(18)]
        generated.append("a write key")
    if not stored.get("admin_key"):
        stored["admin_key"] = "sk_" + secrets.token_urlsafe(24)
        generated.append("the admin API key")
    if generated:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
        path.chmod(0o600)
        log.info("generated %s, kept in %s", " and ".join(generated), path)
    return Credentials(
        write_keys=frozenset(settings.write_keys or stored["write_keys"]) | catalog,
        admin_key=settings.admin_key or str(stored["admin_key"]),
        generated=bool(generated),
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {k: v for k, v in data.items() if k in ("write_keys", "admin_key")}


# Secret API keys for the marketer API


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"

    def includes(self, other: Scope) -> bool:
        order = list(Scope)
        return order.index(self) >= order.index(other)


@dataclass(frozen=True)
class ApiKey:
    id: str  # public: names the key in lists and logs, never opens anything
    name: str
    scope: Scope
    created_at: str


BOOTSTRAP = ApiKey(id="bootstrap", name="CDP_ADMIN_KEY", scope=Scope.ADMIN, created_at="")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    def __init__(self, client: redis.Redis, prefix: str, admin_key: str) -> None:
        self._client = client
        self._hash = f"{prefix}:api_keys"
        self._admin_digest = _digest(admin_key)

    def create(self, scope: Scope, name: str = "") -> tuple[str, ApiKey]:
        """A new key; its secret is returned once and kept only as a digest."""
        secret = "sk_" + secrets.token_urlsafe(24)
        digest = _digest(secret)
        key = ApiKey(
            id=digest[:12],
            name=name or f"{scope} key",
            scope=scope,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        self._client.hset(self._hash, digest, orjson.dumps(asdict(key)))
        return secret, key

    def verify(self, secret: str) -> ApiKey | None:
        digest = _digest(secret)
        if hmac.compare_digest(digest, self._admin_digest):
            return BOOTSTRAP
        stored = self._client.hget(self._hash, digest)
        return _load(text(stored)) if stored else None

    def list(self) -> list[ApiKey]:
        keys = [_load(text(value)) for value in self._client.hvals(self._hash)]
        return sorted(keys, key=lambda key: key.created_at)

    def revoke(self, key_id: str) -> bool:
        for digest in self._client.hkeys(self._hash):
            if text(digest).startswith(key_id) and len(key_id) == 12:
                return bool(self._client.hdel(self._hash, digest))
        return False


def _load(value: str) -> ApiKey:
    data = orjson.loads(value)
    return ApiKey(**{**data, "scope": Scope(data["scope"])})


def authenticate(api_keys: ApiKeys, write_keys: frozenset[str], authorization: str) -> ApiKey:
    """The API key an `Authorization: Bearer` header names; BearerRequired (401) when there
    is none or it is unknown, Forbidden (403) for a write key."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise BearerRequired("an API key is required: Authorization: Bearer sk_...")
    if token in write_keys:
        raise Forbidden("a write key only sends events; use a secret API key")
    key = api_keys.verify(token)
    if key is None:
        raise BearerRequired("unknown API key")
    return key


@dataclass(frozen=True)
class Authenticator:
    """Checks an `Authorization` header against the API keys (see `authenticate`)."""

    api_keys: ApiKeys
    write_keys: frozenset[str]

    def __call__(self, authorization: str) -> ApiKey:
        return authenticate(self.api_keys, self.write_keys, authorization)
