"""`cdp demo`: a simulated shop (`shop`) whose traffic is sent over HTTP to a server and
reported on (`traffic`)."""

from cdp.demo.traffic import run

__all__ = ["run"]
