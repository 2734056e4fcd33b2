"""Greylisting, rate limits and DNS lists through real `authmilter serve` processes: SQLite state
shared by two worker processes, Redis shared by two milters on different ports, a Redis outage
(fail open, logged once, recovery logged), DNS lists on the real DNS server with the RFC 5782
self-test taking a broken list out of service, and `check --explain` showing the same facts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer
from tests.integration.zones import example_org, reverse_dns
from tests.mailfactory import make_message, rsa_key, sign
from tests.milterclient import ROOT, MilterProcess, Outcome
from tests.redisserver import RedisSentinel, RedisServer, RedisUnavailable, ensure_installed

DELAY = 1.0  # greylisting delay in these tests, seconds: long enough to see "early", short to wait

POLICY = """
[[rules]]
name = "vouched"
when = { dnswl = ["wl"] }
action = "accept"

[[rules]]
name = "sbl"
when = { dnsbl = ["zen/sbl"] }
stage = "mail"
action = "reject"

[[rules]]
name = "greylist"
when = { rcpt_domain = ["example.com"] }
action = "greylist"

[[rules]]
name = "too-many"
when = { ratelimit = ["per-client"] }
stage = "rcpt"
action = "tempfail"
reply = "rate_limited"
"""

LISTS = """
[[dnslist]]
name = "zen"
zone = "zen.test"
codes = { "127.0.0.2" = "sbl", "127.0.0.4-127.0.0.7" = "xbl" }

[[dnslist]]
name = "wl"
zone = "wl.test"
allow = true

[[dnslist]]
name = "broken"
zone = "broken.test"
"""


def store_section(store: str) -> str:
    return f"""
[store]
{store}

[greylist]
delay = {DELAY}
retry_window = 3600
auto_allow_after = 0

[[ratelimit]]
name = "per-client"
key = "client_ip"
rate = 3
per = 3600
"""


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        for text in reverse_dns():
            server.add_zone(text)
        # RFC 5782 test points: zen and wl answer them, "broken" lists 127.0.0.1 too, as a parked,
        # wildcarded zone would.
        server.add_zone('$ORIGIN zen.test.\n@ 3600 IN SOA ns hostmaster 1 3600 600 86400 60\n'
                        '2.0.0.127 IN A 127.0.0.2\n66.100.51.198 IN A 127.0.0.2\n')
        server.add_zone('$ORIGIN wl.test.\n@ 3600 IN SOA ns hostmaster 1 3600 600 86400 60\n'
                        '2.0.0.127 IN A 127.0.10.2\n10.2.0.192 IN A 127.0.10.3\n')
        server.add_zone('$ORIGIN broken.test.\n@ 3600 IN SOA ns hostmaster 1 3600 600 86400 60\n'
                        '2.0.0.127 IN A 127.0.0.2\n1.0.0.127 IN A 127.0.0.2\n')
        yield server


def milter(workdir: Path, dns: DnsServer, store: str, *, workers: int = 1) -> MilterProcess:
    policy = workdir / "antispam.toml"
    policy.write_text(POLICY)
    extra = f'policy = ["{policy}"]\nworkers = {workers}\n' + store_section(store) + LISTS
    return MilterProcess(workdir, dns_port=dns.port, extra=extra).start()


def signed() -> bytes:
    return sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())


def send(m: MilterProcess, client_ip: str, rcpts: tuple[str, ...], qid: str,
         mail_from: str = "news@list.example") -> tuple[Outcome, list[tuple[str, str]]]:
    with m.session(client_ip=client_ip, helo="mail.list.example") as s:
        out = s.message(signed(), mail_from=mail_from, rcpts=rcpts, queue_id=qid)
        return out, list(s.refused)


def wait_for_log(m: MilterProcess, text: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in m.log():
            return m.log()
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {timeout} s:\n{m.log()[-3000:]}")


@pytest.fixture(scope="module")
def sqlite_milter(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer) -> Iterator[MilterProcess]:
    workdir = tmp_path_factory.mktemp("greylist-sqlite")
    m = milter(workdir, dns, f'path = "{workdir / "state.db"}"', workers=2)
    yield m
    m.stop()


def test_greylisting_on_sqlite_with_two_workers(sqlite_milter: MilterProcess) -> None:
    out, refused = send(sqlite_milter, "198.51.100.7", ("bob@example.com",), "GREY1")
    greylisted = "451 4.7.1 Greylisted, please try again later"
    assert (out.action, out.stage, out.reply) == ("tempfail", "rcpt", greylisted)
    assert refused == [("bob@example.com", greylisted)]
    out, _ = send(sqlite_milter, "198.51.100.7", ("bob@example.com",), "GREY2")
    assert out.action == "tempfail"  # too early
    time.sleep(DELAY + 0.2)
    # Retries on new connections: with two workers they need not land on the one that
    # recorded the first attempt; the SQLite file is shared.
    for n in range(4):  # from neighbours in the /24, each under its own rate limit
        out, refused = send(sqlite_milter, f"198.51.100.{99 - n}", ("bob@example.com",), f"GREY3{n}")
        assert out.action == "accept" and refused == [], (n, out)
    log = sqlite_milter.log()
    assert "greylist=new:bob@example.com" in log and "greylist=early:bob@example.com" in log
    assert "greylist=passed:bob@example.com" in log
    pids = {line.split("pid=")[1].split()[0] for line in log.splitlines()
            if "greylist=passed" in line and "pid=" in line}
    assert pids, "worker pids are in the log lines"
    # Not greylisted at all: a recipient domain the rule does not name.
    out, refused = send(sqlite_milter, "203.0.113.50", ("someone@other.example",), "GREY4")
    assert out.action == "accept" and refused == []


def test_rate_limit_per_client_counts_recipients(sqlite_milter: MilterProcess) -> None:
    rcpts = tuple(f"u{n}@other.example" for n in range(5))
    out, refused = send(sqlite_milter, "203.0.113.77", rcpts, "RATE1")
    assert out.action == "accept"
    assert [r for r, _ in refused] == ["u3@other.example", "u4@other.example"]
    limited = "450 4.7.1 Too much mail from you right now, please try again later"
    assert {reply for _, reply in refused} == {limited}
    out, refused = send(sqlite_milter, "203.0.113.77", ("late@other.example",), "RATE2")
    assert out.action == "tempfail" and out.stage == "rcpt"


def test_dns_lists_listed_allowed_and_self_test(sqlite_milter: MilterProcess) -> None:
    out, _ = send(sqlite_milter, "198.51.100.66", ("bob@example.com",), "LIST1")
    assert (out.action, out.stage) == ("reject", "mail")
    # On the allow list: accepted by the "vouched" rule before greylisting sees it.
    out, refused = send(sqlite_milter, "192.0.2.10", ("carol@example.com",), "LIST2",
                        mail_from="alice@example.org")
    assert out.action == "accept" and refused == []
    ours = [v for _, n, v in out.inserted if n == "Authentication-Results"]
    assert "dnswl=pass dns.zone=wl.test policy.ip=127.0.10.3" in ours[0]
    # The wildcarded list fails its self-test (127.0.0.1 listed) in each worker, once each.
    log = wait_for_log(sqlite_milter, "dnslist broken (broken.test): self-test failed")
    assert "127.0.0.1 is listed" in log
    assert "dnslist zen" not in log and "dnslist wl " not in log


def test_check_explain_shows_the_same_facts(sqlite_milter: MilterProcess, tmp_path: Path) -> None:
    msg = tmp_path / "m.eml"
    msg.write_bytes(signed())
    cmd = [sys.executable, "-m", "authmilter", "check", "-c", str(sqlite_milter.config),
           "--client-ip", "198.51.100.8", "--helo", "mail.list.example", "--mail-from", "news@list.example",
           "--rcpt", "dave@example.com", "--explain", str(msg)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert "action: tempfail 451 4.7.1 Greylisted, please try again later" in done.stdout
    assert "greylisting (a fresh, empty store" in done.stdout
    assert "dave@example.com: new, retry in 1 s" in done.stdout
    assert "zen (block, ip) 8.100.51.198.zen.test: not-listed" in done.stdout
    # Twice in a row: check used a scratch store, so the sender is still new.
    again = subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    data = json.loads(again.stdout[: again.stdout.index("\n}\n") + 2])
    assert data["greylist"][0]["state"] == "new"
    assert (data["action"], data["stage"]) == ("tempfail", "rcpt")


# --- Redis: two milters, one store, and an outage ---------------------------------------------------


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    try:
        ensure_installed(timeout=300.0)
    except RedisUnavailable as e:
        pytest.skip(f"redis-server unavailable: {e}")
    with RedisServer() as server:
        yield server


def decisions(milters: list[MilterProcess], tag: str) -> list[str]:
    """One sequence of attempts, spread round robin over `milters`: what each got."""
    got: list[str] = []
    steps = [("198.51.100.20", "eve@example.com", 0.0), ("198.51.100.20", "eve@example.com", 0.0),
             ("198.51.100.21", "eve@example.com", DELAY + 0.2), ("198.51.100.22", "frank@example.com", 0.0),
             ("198.51.100.22", "frank@example.com", DELAY + 0.2), ("198.51.100.23", "eve@example.com", 0.0)]
    for n, (ip, rcpt, pause) in enumerate(steps):
        time.sleep(pause)
        out, _ = send(milters[n % len(milters)], ip, (rcpt,), f"{tag}{n}")
        got.append(f"{out.action}:{out.stage}")
    return got


def test_two_milters_sharing_redis_decide_as_one_host(tmp_path: Path, dns: DnsServer, redis: RedisServer,
                                                      sqlite_milter: MilterProcess) -> None:
    store = f'backend = "redis"\nurl = "{redis.url}"\nprefix = "two-hosts:"'
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = milter(tmp_path / "a", dns, store)
    b = milter(tmp_path / "b", dns, store)
    assert a.port != b.port
    try:
        shared = decisions([a, b], "TWO")
    finally:
        a.stop()
        b.stop()
    one_host = decisions([sqlite_milter], "ONE")
    assert shared == one_host == ["tempfail:rcpt", "tempfail:rcpt", "accept:eom", "tempfail:rcpt",
                                  "accept:eom", "accept:eom"]
    assert b"two-hosts:grey:" in redis.command("--scan", "--pattern", "two-hosts:grey:*")


def test_two_milters_through_sentinel_decide_as_one_host(tmp_path: Path, dns: DnsServer,
                                                         redis: RedisServer) -> None:
    # MX hosts that find the Redis master through Sentinel (store.sentinels, store.service).
    try:
        ensure_installed(sentinel=True, timeout=300.0)
    except RedisUnavailable as e:
        pytest.skip(f"redis-sentinel unavailable: {e}")
    with RedisSentinel(redis) as sentinel:
        store = (f'backend = "redis"\nsentinels = ["127.0.0.1:{sentinel.port}"]\n'
                 f'service = "{sentinel.service}"\nprefix = "via-sentinel:"')
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        a = milter(tmp_path / "a", dns, store)
        b = milter(tmp_path / "b", dns, store)
        try:
            shared = decisions([a, b], "SEN")
        finally:
            a.stop()
            b.stop()
    # What one host decides for this sequence (test_two_milters_sharing_redis_decide_as_one_host).
    assert shared == ["tempfail:rcpt", "tempfail:rcpt", "accept:eom", "tempfail:rcpt", "accept:eom",
                      "accept:eom"]
    assert b"via-sentinel:grey:" in redis.command("--scan", "--pattern", "via-sentinel:grey:*")


def test_redis_outage_fails_open_logged_once_and_recovery_logged(tmp_path: Path, dns: DnsServer) -> None:
    try:
        ensure_installed(timeout=300.0)
    except RedisUnavailable as e:
        pytest.skip(f"redis-server unavailable: {e}")
    server = RedisServer().start()
    port = server.port
    m = milter(tmp_path, dns, f'backend = "redis"\nurl = "redis://127.0.0.1:{port}/0"\ntimeout = 0.5')
    try:
        out, _ = send(m, "198.51.100.30", ("gina@example.com",), "OUT0")
        assert out.action == "tempfail"  # store up: greylisted
        server.stop(keep_dir=True)
        for n in range(3):
            out, refused = send(m, "198.51.100.31", ("gina@example.com",), f"OUT{n + 1}")
            assert out.action == "accept" and refused == [], out  # fail open
        log = m.log()
        assert log.count("unavailable") == 1, log[-3000:]
        assert "greylist=error:gina@example.com" in log
        server.start(port=port)
        out, _ = send(m, "198.51.100.32", ("gina@example.com",), "OUT9")
        assert out.action == "tempfail"  # greylisting again
        log = wait_for_log(m, "is back after")
        assert "operations failed meanwhile" in log
    finally:
        m.stop()
        server.stop()
