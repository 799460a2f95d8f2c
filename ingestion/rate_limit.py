"""How much one client may send to the tracking endpoints: at most `CDP_RATE_LIMIT` events
(the `limits` library's notation: `1000/minute`, `50/second`; empty: no limit) from one
address, an IPv6 one by its /64 (what one host is given); a batch counts each of its events.
Past it, the request is answered 429 with `Retry-After` and nothing of it is stored: the
SDKs send it again later. One bot on the public write key can then no longer take the
workers from every other shopper.

Not limited: the shop's servers' write keys (`CDP_CATALOG_WRITE_KEYS`: one server sends for
many shoppers), and loopback, which is local tools or a proxy on the same host that does not
pass on the client's address (`X-Forwarded-For`, taken from the addresses in uvicorn's
`--forwarded-allow-ips`): limiting it would limit everyone behind that proxy together.
Counted per server process, in memory (a sliding window: two counters an address)."""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass, field

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from cdp.errors import TooManyRequests


def client_of(ip: str) -> str | None:
    """What one client is, by its address: an IPv6 address by its /64; None for loopback
    (and for no address: a test client or a Unix socket), which is not limited."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if address.is_loopback:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return client_of(str(address.ipv4_mapped))
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class RateLimit:
    """The tracking endpoints' limit per client."""

    limit: RateLimitItem | None  # None: no limit
    exempt: frozenset[str] = frozenset()  # write keys not limited
    _limiter: SlidingWindowCounterRateLimiter = field(
        default_factory=lambda: SlidingWindowCounterRateLimiter(MemoryStorage())
    )

    @classmethod
    def of(cls, notation: str, exempt: frozenset[str]) -> RateLimit:
        return cls(parse(notation) if notation.strip() else None, exempt)

    def take(self, ip: str, key: str, events: int) -> None:
        """Count the request's events against its client, or refuse it (TooManyRequests)."""
        client = client_of(ip)
        if self.limit is None or client is None or key in self.exempt:
            return
        # A request of more events than the whole limit counts as the whole limit: it would
        # otherwise be refused at every retry.
        if not self._limiter.hit(self.limit, client, cost=max(1, min(events, self.limit.amount))):
            stats = self._limiter.get_window_stats(self.limit, client)
            retry = max(1, math.ceil(stats.reset_time - time.time()))
            raise TooManyRequests(
                f"over {self.limit.amount} events per {self.limit.get_expiry()} s from one "
                f"client; nothing of this request was stored, send it again in {retry} s",
                retry,
            )
