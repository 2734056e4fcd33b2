"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from authmilter.dns import DnsResolver
from tests.dnsserver import DnsServer
from tests.zoneresolver import ZoneResolver, zone_text


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    """A started DNS server on 127.0.0.1 with no zones yet; use set_zone/add_zone/set_fault."""
    with DnsServer() as server:
        yield server


@pytest.fixture
def dns_resolver(dns_server: DnsServer) -> DnsResolver:
    """The product resolver pointed at `dns_server`, uncached, with a short timeout."""
    return DnsResolver(["127.0.0.1"], port=dns_server.port, timeout=1.0)


@pytest.fixture
def zone_resolver() -> ZoneResolver:
    """An empty in-memory resolver; add zones with add_zone(text)."""
    return ZoneResolver()


@pytest.fixture
def make_zone() -> Callable[..., str]:
    """`tests.zoneresolver.zone_text`: master-file text for an origin from a dict or lines."""
    return zone_text
