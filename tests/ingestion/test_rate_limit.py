"""The limit per client on its own, on an injected clock: windows, what counts as one
client, the notation, and a table that stays bounded when very many clients come at once."""

from __future__ import annotations

import pydantic
import pytest

from cdp.errors import TooManyRequests
from cdp.settings import Settings, parse_rate
from ingestion import rate_limit
from ingestion.rate_limit import RateLimit, client_of


def test_the_notation() -> None:
    assert parse_rate("1000/minute") == (1000, 60)
    assert parse_rate(" 50 per second ") == (50, 1)
    assert parse_rate("2/Hours") == (2, 3600)
    assert parse_rate("") is None
    for wrong in ("fast", "0/minute", "10/fortnight", "-5/second"):
        with pytest.raises(ValueError, match="CDP_RATE_LIMIT reads like"):
            parse_rate(wrong)
    with pytest.raises(pydantic.ValidationError, match="CDP_RATE_LIMIT reads like"):
        Settings(rate_limit="lots")


def test_a_client_gets_its_limit_per_window_and_a_retry_time() -> None:
    now = [600.0]
    limit = RateLimit((10, 60), clock=lambda: now[0])
    limit.take("203.0.113.1", "wk", 6)
    limit.take("203.0.113.1", "wk", 4)
    with pytest.raises(TooManyRequests) as refused:
        limit.take("203.0.113.1", "wk", 1)
    assert refused.value.headers() == {"Retry-After": "60"}
    limit.take("203.0.113.2", "wk", 10)  # another client: its own count
    now[0] += 45
    with pytest.raises(TooManyRequests) as refused:
        limit.take("203.0.113.1", "wk", 1)
    assert refused.value.headers() == {"Retry-After": "15"}
    now[0] += 15  # the next window
    limit.take("203.0.113.1", "wk", 10)
    # More events in one request than the whole limit: counts as the limit, not refused for ever.
    now[0] += 60
    limit.take("203.0.113.1", "wk", 500)
    with pytest.raises(TooManyRequests):
        limit.take("203.0.113.1", "wk", 1)


def test_what_one_client_is() -> None:
    assert client_of("203.0.113.9") == "203.0.113.9"
    assert client_of("2001:db8:1:2::1") == client_of("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_of("::ffff:203.0.113.9") == "203.0.113.9"
    for shared in ("127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.1.1", "100.64.0.1", "::1",
                   "fd00::1", "fe80::1", "", "unix-socket"):  # fmt: skip
        assert client_of(shared) is None, shared


def test_the_table_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rate_limit, "CLIENTS_KEPT", 100)
    now = [0.0]
    limit = RateLimit((5, 60), clock=lambda: now[0])
    for n in range(100):
        limit.take(f"198.51.100.{n}", "wk", 5)
    now[0] += 60  # a new window: the old counts are forgotten as new clients come
    limit.take("203.0.113.1", "wk", 1)
    assert len(limit._counts) == 1
    for n in range(150):  # very many at once: the table is emptied, not grown
        limit.take(f"192.0.2.{n}", "wk", 1)
    assert len(limit._counts) <= 100
