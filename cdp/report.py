"""A short overview of what the warehouse holds: events by type, visitors, orders, revenue."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import redis

from cdp.storage import Warehouse
from cdp.streams import backlog


@dataclass
class Overview:
    events: int = 0
    events_by_type: dict[str, int] = field(default_factory=dict)
    top_events: dict[str, int] = field(default_factory=dict)
    visitors_by_source: dict[str, int] = field(default_factory=dict)
    visitors_by_device: dict[str, int] = field(default_factory=dict)
    visitors: int = 0
    known_users: int = 0
    bot_events: int = 0
    bot_profiles: int = 0  # of `profiles`: only bots ever sent them events (in no audience)
    orders: int = 0
    revenue: float = 0.0
    profiles: int = 0
    identified_profiles: int = 0
    anonymous_profiles: int = 0
    merges: int = 0
    refused_merges: int = 0
    backlog: int = 0  # stream entries some worker has still to settle

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def overview(
    warehouse: Warehouse, since: datetime, client: redis.Redis, streams: list[str]
) -> Overview:
    """What happened since `since`: events, visitors, orders, and the profiles those events
    belong to now (identified: known by more than an anonymous id), merges made."""
    params = {"since": since}
    where = "WHERE received_at >= {since:DateTime64(3)}"
    report = Overview()
    for event_type, count in warehouse.query_rows(
        f"SELECT type, count() FROM events {where} GROUP BY type ORDER BY count() DESC", params
    ):
        report.events_by_type[event_type] = count
    report.events = sum(report.events_by_type.values())
    for event, count in warehouse.query_rows(
        f"SELECT event, count() FROM events {where} AND type = 'track' "
        "GROUP BY event ORDER BY count() DESC, event LIMIT 10",
        params,
    ):
        report.top_events[event] = count
    for source, count in warehouse.query_rows(
        f"SELECT if(utm_source = '', '(direct)', utm_source) AS source, uniqExact(anonymous_id) "
        f"FROM events {where} AND type = 'page' GROUP BY source ORDER BY 2 DESC, source LIMIT 6",
        params,
    ):
        report.visitors_by_source[source] = count
    for device, count in warehouse.query_rows(
        f"SELECT if(device_type = '', '(unknown)', device_type) AS device, "
        f"uniqExact(anonymous_id) FROM events {where} GROUP BY device ORDER BY 2 DESC, device",
        params,
    ):
        report.visitors_by_device[device] = count
    [(visitors, known, bots, orders, revenue)] = warehouse.query_rows(
        f"""
        SELECT uniqExact(anonymous_id), uniqExactIf(user_id, user_id != ''), countIf(is_bot),
               countIf(event = 'Order Completed'),
               sumIf(toFloat64OrZero(toString(properties.revenue)), event = 'Order Completed')
        FROM events {where}
        """,
        params,
    )
    report.visitors, report.known_users, report.bot_events = visitors, known, bots
    report.orders, report.revenue = orders, round(float(revenue), 2)
    [(profiles, identified)] = warehouse.query_rows(
        f"""
        SELECT uniqExact(seen.profile_id), uniqExactIf(seen.profile_id, known.profile_id != '')
        FROM (SELECT DISTINCT profile_id FROM profile_events {where} AND profile_id != '') AS seen
        LEFT JOIN (
            SELECT DISTINCT profile_id FROM (
                SELECT argMax(profile_id, version) AS profile_id FROM identities
                WHERE kind != 'anonymous_id' GROUP BY kind, value
            )
        ) AS known ON known.profile_id = seen.profile_id
        """,
        params,
    )
    report.profiles, report.identified_profiles = int(profiles), int(identified)
    [(bot_profiles,)] = warehouse.query_rows(
        f"""
        SELECT countIf(persons = 0) FROM (
            SELECT countIf(NOT is_bot) AS persons FROM profile_events
            WHERE profile_id IN (SELECT profile_id FROM profile_events {where})
            AND profile_id != '' GROUP BY profile_id
        )
        """,
        params,
    )
    report.bot_profiles = int(bot_profiles)
    report.anonymous_profiles = report.profiles - report.identified_profiles
    [(merges, refused)] = warehouse.query_rows(
        "SELECT countIf(NOT startsWith(cause, 'refused')), countIf(startsWith(cause, 'refused')) "
        "FROM identity_merges WHERE at >= {since:DateTime64(3)}",
        params,
    )
    report.merges, report.refused_merges = int(merges), int(refused)
    report.backlog = backlog(client, streams)
    return report
