"""Secret API keys for the marketer API, each with a scope: `read` < `write` < `admin`, a
higher scope including the lower. The bootstrap admin key comes from settings (or the data
directory); the others live in Redis, stored as SHA-256 digests, so the CLI and the API can
make them while servers run. A write key only sends events and opens nothing here."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from enum import StrEnum

import orjson
import redis

from cdp.errors import BearerRequired, Forbidden
from cdp.storage import text


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
