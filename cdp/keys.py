"""Write keys (public, embedded in the shop's pages) and API keys (secret, for the marketer
API): taken from settings, or generated once and kept in the data directory."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cdp.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Keys:
    write_keys: frozenset[str]
    api_keys: frozenset[str]


@lru_cache(maxsize=1024)
def source_id(write_key: str) -> str:
    """A stable, non-secret id of the source a write key belongs to, stored with its events."""
    return hashlib.sha256(write_key.encode()).hexdigest()[:16]


def load_keys(settings: Settings) -> Keys:
    """Keys from settings; a missing kind is generated on first start and kept in the data dir."""
    if settings.write_keys and settings.api_keys:
        return Keys(frozenset(settings.write_keys), frozenset(settings.api_keys))
    path = settings.data_dir / "keys.json"
    stored = _read(path)
    changed = False
    for kind, prefix in (("write_keys", "wk_"), ("api_keys", "sk_")):
        if not stored.get(kind):
            stored[kind] = [prefix + secrets.token_urlsafe(18)]
            changed = True
    if changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored, indent=2))
        path.chmod(0o600)
        log.warning(
            "generated keys in %s: write key %s, API key %s",
            path,
            stored["write_keys"][0],
            stored["api_keys"][0],
        )
    return Keys(
        write_keys=frozenset(settings.write_keys or stored["write_keys"]),
        api_keys=frozenset(settings.api_keys or stored["api_keys"]),
    )


def _read(path: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {k: list(v) for k, v in data.items() if k in ("write_keys", "api_keys")}
