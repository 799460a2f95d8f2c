"""How much one client may send to the tracking endpoints: at most `CDP_RATE_LIMIT` events
(`1000/minute`, `50/second`, `100000/hour`: `cdp.settings.parse_rate`; empty: no limit)
from one address, an IPv6 one
by its /64 (what one host is given); a batch counts each of its events. Past it, the request
is answered 429 with `Retry-After` and nothing of it is stored: the SDKs send it again
later. One bot on the public write key can then no longer take the workers from every other
shopper.

Not limited: the shop's servers' write keys (`CDP_CATALOG_WRITE_KEYS`: one server sends for
many shoppers), and addresses of loopback and private networks (`SHARED`): a proxy, a load
balancer or Docker's port forwarding that does not pass on the client's address
(`X-Forwarded-For` is taken from the addresses in uvicorn's `FORWARDED_ALLOW_IPS`,
loopback by default), a carrier's NAT, or the shop's own machines. Limiting such an address
would limit everyone behind it together: a limiter that cannot tell clients apart lets them
through rather than drop a shop's traffic.

Counted per server process, in memory, in fixed windows: one counter an address, the
windows past forgotten when the table grows (a client may get up to twice the limit across a
window's end). Not the `limits` library: its in-memory storage starts a timer thread every
10 ms under traffic that scans every key (measured: 11.7 µs of CPU a request with 50,000
clients, against ~1 µs here), on the server's hottest path."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from cdp.errors import TooManyRequests
from cdp.settings import parse_rate

# Addresses many clients may stand behind (not limited): loopback, private networks
# (RFC 1918, IPv6 unique local), link-local, and carrier-grade NAT (RFC 6598).
SHARED = tuple(ipaddress.ip_network(network) for network in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
    "100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10",
))  # fmt: skip
CLIENTS_KEPT = 100_000  # counters before the windows past are forgotten


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

    limit: tuple[int, int] | None  # (events, seconds); None: no limit
    exempt: frozenset[str] = frozenset()  # write keys not limited
    clock: Callable[[], float] = time.time
    _counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # client -> (window, n)

    @classmethod
    def of(cls, notation: str, exempt: frozenset[str]) -> RateLimit:
        return cls(parse_rate(notation), exempt)

    def take(self, ip: str, key: str, events: int) -> None:
        """Count the request's events against its client, or refuse it (TooManyRequests)."""
        if self.limit is None or key in self.exempt:
            return
        client = client_of(ip)
        if client is None:
            return
        most, seconds = self.limit
        now = self.clock()
        window = int(now // seconds)
        counted, n = self._counts.get(client, (window, 0))
        if counted != window:
            n = 0
        # A request of more events than the whole limit counts as the whole limit: it would
        # otherwise be refused at every retry.
        cost = max(1, min(events, most))
        if n + cost > most:
            retry = max(1, math.ceil((window + 1) * seconds - now))
            raise TooManyRequests(
                f"over {most} events per {seconds} s from one client; nothing of this "
                f"request was stored, send it again in {retry} s",
                retry,
            )
        if client not in self._counts and len(self._counts) >= CLIENTS_KEPT:
            self._forget(window)
        self._counts[client] = (window, n + cost)

    def _forget(self, window: int) -> None:
        """The counters of windows past; all of them if the table is still full (so many
        clients at once: fail open for the rest of the window rather than grow)."""
        self._counts = {c: wn for c, wn in self._counts.items() if wn[0] == window}
        if len(self._counts) >= CLIENTS_KEPT:
            self._counts.clear()
