"""Write keys (public, embedded in the shop's pages, they only send events) and the bootstrap
admin API key (secret): taken from settings, or generated once and kept in the data
directory. Further API keys are made through `cdp.auth`."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from cdp.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Keys:
    write_keys: frozenset[str]
    admin_key: str
    # Made just now, by this call: `cdp serve` shows them once, with the snippet to paste.
    generated: bool = field(default=False, compare=False)


@lru_cache(maxsize=1024)
def source_id(write_key: str) -> str:
    """A stable, non-secret id of the source a write key belongs to, stored with its events."""
    return hashlib.sha256(write_key.encode()).hexdigest()[:16]


def load_keys(settings: Settings) -> Keys:
    """Keys from settings; a missing kind is generated on first start and kept in the data dir."""
    if settings.write_keys and settings.admin_key:
        return Keys(frozenset(settings.write_keys), settings.admin_key)
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
    return Keys(
        write_keys=frozenset(settings.write_keys or stored["write_keys"]),
        admin_key=settings.admin_key or str(stored["admin_key"]),
        generated=bool(generated),
    )


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    return {k: v for k, v in data.items() if k in ("write_keys", "admin_key")}
