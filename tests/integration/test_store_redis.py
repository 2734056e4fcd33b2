"""The Redis state store against a real redis-server: the behaviour every store has (the same
`StoreBehaviour` as SQLite), two clients on one server, a stopped or full server, and Sentinel."""

from __future__ import annotations

import time
import uuid
import warnings
from collections.abc import Iterator

import pytest

from authmilter.store.base import GREY_REFRESH, GreyState, StateStore, StoreError
from authmilter.store.redis import RedisStore
from tests.redisserver import RedisSentinel, RedisServer, RedisUnavailable, ensure_installed
from tests.unit.test_store_sqlite import DELAY, LIFE, T0, WINDOW, StoreBehaviour

INSTALL_TIMEOUT = 300.0


def _install(sentinel: bool) -> str | None:
    """None when installed, else why not (the tests that need it are skipped with it)."""
    try:
        done = ensure_installed(sentinel=sentinel, timeout=INSTALL_TIMEOUT)
    except RedisUnavailable as e:
        return str(e)
    if done != "already installed":
        warnings.warn(f"tests/integration: redis {done}", stacklevel=1)
    return None


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    problem = _install(sentinel=False)
    if problem:
        pytest.skip(f"redis-server unavailable: {problem}")
    with RedisServer() as s:
        yield s


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"  # a fresh key space per test on the shared server


class TestRedisBehaviour(StoreBehaviour):
    @pytest.fixture
    def store(self, server: RedisServer, prefix: str) -> Iterator[RedisStore]:
        store = RedisStore(server.url, prefix=prefix)
        yield store
        store.close()


def test_is_a_state_store(server: RedisServer) -> None:
    store: StateStore = RedisStore(server.url)
    store.close()


def test_two_clients_share_state(server: RedisServer, prefix: str) -> None:
    a, b = RedisStore(server.url, prefix=prefix), RedisStore(server.url, prefix=prefix)
    assert a.greylist("t", T0, DELAY, WINDOW, LIFE).state == "new"
    assert b.greylist("t", T0 + 1, DELAY, WINDOW, LIFE) == GreyState("early", T0, 0)
    assert a.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE) == GreyState("passed", T0, 1)
    assert b.greylist("t", T0 + DELAY + 1, DELAY, WINDOW, LIFE) == GreyState("passed", T0, 1)
    assert b.greylist("t", T0 + DELAY + GREY_REFRESH, DELAY, WINDOW, LIFE) == GreyState("passed", T0, 2)
    assert [s.take_tokens("r", T0, 1e-6, 3.0).allowed for s in (a, b, a, b)] == [True, True, True, False]
    other = RedisStore(server.url, prefix=prefix + "other:")  # a prefix is a separate key space
    assert other.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE).state == "new"
    for s in (a, b, other):
        s.close()


def test_keys_have_prefix_and_ttl(server: RedisServer, prefix: str) -> None:
    store = RedisStore(server.url, prefix=prefix)
    store.greylist("t", time.time(), DELAY, WINDOW, LIFE)
    store.take_tokens("r", time.time(), 1.0, 10.0, cost=4.0)
    grey_ttl = int(server.command("TTL", f"{prefix}grey:t"))
    rate_ttl = int(server.command("PTTL", f"{prefix}rate:r"))
    assert LIFE - 10 <= grey_ttl <= LIFE
    assert 3000 <= rate_ttl <= 4000  # until the bucket is full again
    store.close()


def test_full_server_raises_store_error(server: RedisServer, prefix: str) -> None:
    store = RedisStore(server.url, prefix=prefix)
    store.greylist("before", T0, DELAY, WINDOW, LIFE)  # the script is loaded while there is room
    server.command("CONFIG", "SET", "maxmemory", "1")
    try:
        with pytest.raises(StoreError, match=r"OOM|maxmemory"):
            store.greylist("t", T0, DELAY, WINDOW, LIFE)
    finally:
        server.command("CONFIG", "SET", "maxmemory", "0")
    assert store.greylist("t", T0, DELAY, WINDOW, LIFE).state == "new"
    store.close()


def test_script_flushed_from_server_is_loaded_again(server: RedisServer, prefix: str) -> None:
    store = RedisStore(server.url, prefix=prefix)
    store.greylist("t", T0, DELAY, WINDOW, LIFE)
    server.command("SCRIPT", "FLUSH")
    assert store.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE).state == "passed"
    store.close()


def test_stopped_server_raises_store_error() -> None:
    problem = _install(sentinel=False)
    if problem:
        pytest.skip(f"redis-server unavailable: {problem}")
    with RedisServer() as own:
        store = RedisStore(own.url, timeout=0.5)
        assert store.greylist("t", T0, DELAY, WINDOW, LIFE).state == "new"
        own.stop()
        started = time.monotonic()
        with pytest.raises(StoreError, match="ConnectionError"):
            store.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE)
        with pytest.raises(StoreError):
            store.take_tokens("r", T0, 1.0, 1.0)
        assert time.monotonic() - started < 5.0
        store.close()


def test_nothing_listening_raises_store_error() -> None:
    from tests.redisserver import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)  # lazy: no error yet
    with pytest.raises(StoreError):
        store.take_tokens("r", T0, 1.0, 1.0)


def test_bad_configuration() -> None:
    with pytest.raises(ValueError):
        RedisStore()
    with pytest.raises(ValueError):
        RedisStore("redis://127.0.0.1:1/0", sentinels=[("127.0.0.1", 2)], service="x")
    with pytest.raises(ValueError):
        RedisStore(sentinels=[("127.0.0.1", 2)])
    with pytest.raises(StoreError):
        RedisStore("nonsense://x")


# --- Sentinel ---

@pytest.fixture(scope="module")
def sentinel(server: RedisServer) -> Iterator[RedisSentinel]:
    problem = _install(sentinel=True)
    if problem:
        pytest.skip(f"redis-sentinel unavailable (Debian package redis-sentinel): {problem}")
    with RedisSentinel(server) as s:
        yield s


def test_sentinel_finds_the_master(sentinel: RedisSentinel, server: RedisServer, prefix: str) -> None:
    via_sentinel = RedisStore(sentinels=[("127.0.0.1", sentinel.port)], service=sentinel.service,
                              prefix=prefix)
    direct = RedisStore(server.url, prefix=prefix)
    assert via_sentinel.greylist("t", T0, DELAY, WINDOW, LIFE).state == "new"
    assert direct.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE) == GreyState("passed", T0, 1)
    assert via_sentinel.take_tokens("r", T0, 1.0, 1.0).allowed
    via_sentinel.close()
    direct.close()


def test_sentinel_unknown_service_raises_store_error(sentinel: RedisSentinel) -> None:
    store = RedisStore(sentinels=[("127.0.0.1", sentinel.port)], service="no-such-master", timeout=0.5)
    with pytest.raises(StoreError, match="MasterNotFound"):
        store.greylist("t", T0, DELAY, WINDOW, LIFE)


def test_concurrent_clients_count_consistently(server: RedisServer, prefix: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    import authmilter.store.base as base

    monkeypatch.setattr(base, "GREY_REFRESH", 0.0)  # every pass written

    RedisStore(server.url, prefix=prefix).greylist("t", T0, DELAY, WINDOW, LIFE)
    allowed: list[bool] = []

    def work() -> None:
        store = RedisStore(server.url, prefix=prefix)  # one client (connection pool) per "host"
        for _ in range(100):
            allowed.append(store.take_tokens("r", T0, 1e-9, 150.0).allowed)
            store.greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE)
        store.close()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sum(allowed) == 150
    last = RedisStore(server.url, prefix=prefix).greylist("t", T0 + DELAY, DELAY, WINDOW, LIFE)
    assert last == GreyState("passed", T0, 401)
