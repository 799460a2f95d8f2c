"""Versioned ClickHouse schema. Migrations are applied in order at start-up; each runs once,
recorded in `schema_migrations`, and is written to be harmless if run again."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from cdp.events import column_definitions
from cdp.records import audit_table_columns
from cdp.storage import Warehouse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "events table",
        (
            """
            CREATE TABLE IF NOT EXISTS events (
            """
            + column_definitions()
            + """,
                INDEX idx_anonymous_id anonymous_id TYPE bloom_filter GRANULARITY 4,
                INDEX idx_user_id user_id TYPE bloom_filter GRANULARITY 4,
                INDEX idx_message_id message_id TYPE bloom_filter GRANULARITY 4
            )
            ENGINE = MergeTree
            PARTITION BY toYYYYMM(timestamp)
            ORDER BY (type, event, anonymous_id, timestamp)
            """,
        ),
    ),
    Migration(
        2,
        "rejected events, kept for inspection",
        (
            """
            CREATE TABLE IF NOT EXISTS rejected_events (
                received_at DateTime64(3, 'UTC'),
                source_id LowCardinality(String),
                stage LowCardinality(String),
                reason String,
                payload String
            )
            ENGINE = MergeTree
            PARTITION BY toYYYYMM(received_at)
            ORDER BY received_at
            TTL toDateTime(received_at) + INTERVAL 30 DAY
            """,
        ),
    ),
    Migration(
        3,
        "identity graph history, consent and suppression audit logs, events by profile",
        (
            # The current profile of each identifier: the row with the highest version.
            """
            CREATE TABLE IF NOT EXISTS identities (
            """
            + audit_table_columns("identities")
            + """
            )
            ENGINE = ReplacingMergeTree(version)
            ORDER BY (kind, value)
            """,
            """
            CREATE TABLE IF NOT EXISTS identity_merges (
            """
            + audit_table_columns("identity_merges")
            + """,
                INDEX idx_merged merged TYPE bloom_filter GRANULARITY 4
            )
            ENGINE = MergeTree
            ORDER BY (survivor, at)
            """,
            """
            CREATE TABLE IF NOT EXISTS consent_log (
            """
            + audit_table_columns("consent_log")
            + """
            )
            ENGINE = MergeTree
            ORDER BY (profile_id, at)
            """,
            """
            CREATE TABLE IF NOT EXISTS suppression_log (
            """
            + audit_table_columns("suppression_log")
            + """
            )
            ENGINE = MergeTree
            ORDER BY (profile_id, at)
            """,
            # Every event with the profile it belongs to now, merges included.
            """
            CREATE VIEW IF NOT EXISTS profile_events AS
            SELECT if(u.profile_id != '', u.profile_id, a.profile_id) AS profile_id, e.*
            FROM events AS e
            LEFT JOIN (
                SELECT value, argMax(profile_id, version) AS profile_id
                FROM identities WHERE kind = 'user_id' GROUP BY value
            ) AS u ON u.value = e.user_id
            LEFT JOIN (
                SELECT value, argMax(profile_id, version) AS profile_id
                FROM identities WHERE kind = 'anonymous_id' GROUP BY value
            ) AS a ON a.value = e.anonymous_id
            """,
        ),
    ),
    Migration(
        4,
        "audience transitions",
        (
            """
            CREATE TABLE IF NOT EXISTS audience_log (
            """
            + audit_table_columns("audience_log")
            + """,
                INDEX idx_profile profile_id TYPE bloom_filter GRANULARITY 4
            )
            ENGINE = MergeTree
            ORDER BY (audience_id, at)
            """,
        ),
    ),
)


def migrate(warehouse: Warehouse) -> list[int]:
    """Apply the migrations not yet applied; returns their versions."""
    warehouse.command(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version UInt32,
            description String,
            applied_at DateTime64(3, 'UTC') DEFAULT now64(3)
        ) ENGINE = MergeTree ORDER BY version
        """
    )
    done = {row[0] for row in warehouse.query_rows("SELECT version FROM schema_migrations")}
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            warehouse.command(statement)
        warehouse.command(
            "INSERT INTO schema_migrations (version, description) VALUES ({v:UInt32}, {d:String})",
            parameters={"v": migration.version, "d": migration.description},
        )
        log.info("applied migration %d: %s", migration.version, migration.description)
        applied.append(migration.version)
    return applied
