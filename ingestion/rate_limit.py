"""How much one client may send to the tracking endpoints: at most `CDP_RATE_LIMIT` events
(the `limits` library's notation: `1000/minute`, `50/second`; empty: no limit) from one
address, an IPv6 one by its /64 (what one host is given); a batch counts each of its events.
Past it, the request is answered 429 with `Retry-After` and nothing of it is stored: the
SDKs send it again later. One bot on the public write key can then no longer take the
workers from every other shopper.

Not limited: the shop's servers' write keys (`CDP_CATALOG_WRITE_KEYS`: one server sends for
many shoppers), and addresses of loopback and private networks (`SHARED`): a proxy, a load
balancer or Docker's port forwarding that does not pass on the client's address
(`X-Forwarded-For` is taken from the addresses in uvicorn's `FORWARDED_ALLOW_IPS`,
loopback by default), a carrier's NAT, or the shop's own machines. Limiting such an address
would limit everyone behind it together: a limiter that cannot tell clients apart lets them
through rather than drop a shop's traffic. Counted per server process, in memory, in fixed
windows (one counter an address: the cheapest of the library's strategies, about 3 µs a
request; a client may get up to twice the limit across a window's end)."""

from __future__ import annotations

import ipaddress
import math
import time
from dataclasses import dataclass, field
from functools import lru_cache

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter

from cdp.errors import TooManyRequests

# Addresses many clients may stand behind (not limited): loopback, private networks
# (RFC 1918, IPv6 unique local), link-local, and carrier-grade NAT (RFC 6598).
SHARED = tuple(ipaddress.ip_network(network) for network in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
    "100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10",
))  # fmt: skip


@lru_cache(maxsize=65_536)
def client_of(ip: str) -> str | None:
    """What one client is, by its address: an IPv6 address by its /64; None for an address
    many may stand behind (`SHARED`), or none (a Unix socket), which is not limited."""
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address in network for network in SHARED):
        return None
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass
class RateLimit:
    """The tracking endpoints' limit per client."""

    limit: RateLimitItem | None  # None: no limit
    exempt: frozenset[str] = frozenset()  # write keys not limited
    _limiter: FixedWindowRateLimiter = field(
        default_factory=lambda: FixedWindowRateLimiter(MemoryStorage())
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
