"""Typed configuration read from `CDP_*` environment variables, with defaults that need
nothing installed beyond the Python packages (embedded ClickHouse and Valkey)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

RATE_UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}
RATE = re.compile(r"^\s*(\d+)\s*(?:/|per)\s*(second|minute|hour|day)s?\s*$")


def parse_rate(notation: str) -> tuple[int, int] | None:
    """(events, seconds) of a rate as `CDP_RATE_LIMIT` writes it (`1000/minute`,
    `50 per second`); None for none (empty). ValueError for anything else."""
    if not notation.strip():
        return None
    found = RATE.match(notation.lower())
    if not found or int(found.group(1)) < 1:
        raise ValueError(
            f"{notation!r}: CDP_RATE_LIMIT reads like 1000/minute or 50/second (empty: no limit)"
        )
    return int(found.group(1)), RATE_UNITS[found.group(2)]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CDP_", extra="ignore")

    data_dir: Path = Path(".cdp")
    # Empty: the embedded engine at <data_dir>/chdb. Else http(s)://user:pass@host:8123.
    clickhouse_url: str = ""
    clickhouse_database: str = "cdp"
    # Empty: an embedded Valkey server persisting to <data_dir>/valkey. Else redis://...
    redis_url: str = ""
    redis_prefix: str = "cdp"
    # Comma-separated. Empty: one key is generated on first start and kept in the data dir.
    write_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Write keys of the shop's servers: their `Product Updated` track events update the
    # catalog (never list the public key the browser snippet uses).
    catalog_write_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The first admin API key. Empty: generated on first start and kept in the data dir.
    admin_key: str = ""

    run_writer: bool = True
    run_profile_worker: bool = True
    run_audience_worker: bool = True
    # Audience worker processes `cdp serve` runs: each takes its share of the profile changes
    # and of the schedule (one a core to spare).
    audience_workers: int = Field(default=1, ge=1, le=32)
    profile_batch_size: int = Field(default=100, ge=1)  # stream entries a read
    # Identifiers one profile may hold; at least the five one event can name.
    identity_cap: int = Field(default=50, ge=5)
    profile_days: int = Field(default=90, ge=1)  # daily counts kept
    # Each profile's track events as audiences read them (windows reach back this far).
    history_days: int = Field(default=400, ge=1, le=3660)
    # About this many of them per profile, the newest (trimmed at each profile-script call):
    # an endless sender's profile (a bot) would make each evaluation read all it ever sent.
    history_events: int = Field(default=10_000, ge=100, le=1_000_000)
    vip_revenue: float = Field(default=500.0, ge=0)  # the `vip` audience's 90-day revenue
    # Profiles a second an audience's backfill asks the audience workers to decide: the
    # time-based transitions that come meanwhile are not held behind a big one.
    backfill_rate: int = Field(default=1000, ge=1)
    # The newest entries `stream:audience_changes` keeps (trimmed approximately, at each
    # write): the stream is the hand-over to activation, not a store (ClickHouse's
    # `audience_log` keeps every transition); with no consumer yet, it would grow for ever.
    audience_changes_kept: int = Field(default=100_000, ge=1_000)
    erase_wait_seconds: float = Field(default=30.0, gt=0)
    writer_batch_size: int = Field(default=200, ge=1)  # stream entries a read
    writer_block_ms: int = Field(default=200, ge=1)
    writer_min_events: int = Field(default=10_000, ge=1)
    writer_max_wait_ms: int = Field(default=500, ge=1)
    dedup_window_hours: int = Field(default=168, ge=1)
    max_event_bytes: int = 32 * 1024
    max_batch_bytes: int = 500 * 1024
    # One line per request on stderr; `json` writes every log line as a JSON object.
    access_log: bool = True
    log_format: Literal["text", "json"] = "text"
    # Request line and headers: at most this many bytes (431), within this time (408).
    max_header_bytes: int = Field(default=16 * 1024, ge=1024)
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    body_timeout_seconds: float = Field(default=30.0, gt=0)  # a whole body, else 408
    # /healthz answers 503 when a worker's oldest waiting entry is older than this.
    health_max_lag_seconds: float = Field(default=60.0, gt=0)
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["*"])
    # Events one client address may send the tracking endpoints (`parse_rate`; empty: no
    # limit). The catalog write keys (the shop's servers) and the addresses of loopback
    # and private networks (a proxy many stand behind) are not limited (ingestion/rate_limit.py).
    rate_limit: str = "10000/minute"

    @field_validator("write_keys", "catalog_write_keys", "cors_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("rate_limit")
    @classmethod
    def _rate_notation(cls, value: str) -> str:
        parse_rate(value)
        return value

    @field_validator("clickhouse_url")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://", "chdb:")):
            raise ValueError("CDP_CLICKHOUSE_URL must start with http://, https:// or chdb:")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("CDP_REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    def as_env(self) -> dict[str, str]:
        """These settings as the `CDP_*` variables that give them to another process."""
        env = {}
        for name, value in self.model_dump().items():
            if isinstance(value, list):
                text = ",".join(str(item) for item in value)
            elif isinstance(value, bool):
                text = str(value).lower()
            else:
                text = str(value)
            env[f"CDP_{name.upper()}"] = text
        return env

    @property
    def embedded_clickhouse(self) -> bool:
        return not self.clickhouse_url or self.clickhouse_url.startswith("chdb:")

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def events_stream(self) -> str:
        return f"{self.redis_prefix}:stream:events"

    @property
    def dead_letter_stream(self) -> str:
        """Entries a worker set aside after failing every try (`cdp.deadletters`)."""
        return f"{self.redis_prefix}:stream:dead_letters"

    @property
    def streams(self) -> list[str]:
        """The streams whose backlog says what is still under way, each fed by the workers
        of the ones before it: events, then profile changes, then records."""
        return [self.events_stream, self.profile_changes_stream, self.records_stream]

    @property
    def profile_changes_stream(self) -> str:
        """The profiles each script call changed, for the audience worker (`rules/`)."""
        return f"{self.redis_prefix}:stream:profile_changes"

    @property
    def records_stream(self) -> str:
        """Rows bound for ClickHouse that Redis-side changes produce (merges, consent, ...)."""
        return f"{self.redis_prefix}:stream:records"
