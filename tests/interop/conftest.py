"""Fixtures for interoperability tests.

    def test_x(opendkim):                       # an OpenDkimVerifier, started, for this module
        opendkim.publish_key("sig.example", "sel", key)   # served by opendkim.dns (a DnsServer)
        assert opendkim.verify(signed) == ["pass"]

`opendkim` and `interop_dns` are module-scoped: zones added in one test stay for the next tests
of the module, so give each test its own domain or selector (OpenDKIM caches nothing, so
replacing a key is seen at once). Without OpenDKIM installed and installable these tests FAIL.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import pytest

from tests.dnsserver import DnsServer
from tests.interop.opendkim import (
    INSTALL_TIMEOUT,
    OpenDkimError,
    OpenDkimUnavailable,
    OpenDkimVerifier,
    catch_all_zone,
    ensure_opendkim,
)


@pytest.fixture(scope="session")
def opendkim_installed() -> str:
    try:
        done = ensure_opendkim(INSTALL_TIMEOUT)
    except OpenDkimUnavailable as e:
        problem = str(e)
    else:
        if done != "already installed":
            warnings.warn(f"tests/interop: opendkim {done}", stacklevel=1)
        return done
    # Outside the except block, so that the report is apt's words and not a chained traceback.
    pytest.fail(f"OpenDKIM is needed for tests/interop and could not be installed: {problem}", pytrace=False)


@pytest.fixture(scope="module")
def interop_dns() -> Iterator[DnsServer]:
    """A started test DNS server on 127.0.0.1 that OpenDKIM resolves through. It holds only a
    catch-all root zone (so that misses are never cached, see `catch_all_zone`): add zones with
    add_zone(), not set_zone(), which would drop it."""
    with DnsServer() as server:
        server.add_zone(catch_all_zone())
        yield server


@pytest.fixture(scope="module")
def opendkim(opendkim_installed: str, interop_dns: DnsServer) -> Iterator[OpenDkimVerifier]:
    """A started OpenDKIM verifier (inet socket on 127.0.0.1) bound to `interop_dns`."""
    verifier = OpenDkimVerifier(interop_dns, transport="unix")  # 15x faster than TCP, no port race
    try:
        verifier.start()
    except OpenDkimError as e:
        verifier.stop()
        pytest.fail(f"OpenDKIM did not start: {e}", pytrace=False)
    try:
        yield verifier
    finally:
        verifier.stop()
