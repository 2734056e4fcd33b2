"""DnsResolver.query_many against a real DNS server (tests.dnsserver) that answers late."""

from __future__ import annotations

import os
import pickle
import select
import signal
import socket
import threading
import time
from collections.abc import Iterable

import pytest

from authmilter.core import dnsapi
from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from authmilter.dns import DnsCache, DnsResolver
from tests.dnsserver import DnsServer
from tests.zoneresolver import ZoneResolver, zone_text

DELAY = 0.2  # every answer this late, so asking one after another shows in the wall time
WAIT = 5.0  # the most any test here waits for anything

ZONE = zone_text(
    "example.com",
    {
        "@": ["MX 10 mx", 'TXT "v=spf1 " "-all"', 'TXT "other"'],
        "mx": ["A 192.0.2.1", "AAAA 2001:db8::1"],
        "www": "CNAME mx",
        "mail": ["A 192.0.2.2", "A 192.0.2.3"],
    },
    negative_ttl=60,
)
REVERSE = zone_text("2.0.192.in-addr.arpa", {"1": "PTR mx.example.com."})

# Eight different lookups, one of each kind of outcome and then some.
PAIRS = [
    ("mx.example.com", "A"),
    ("example.com", "TXT"),
    ("1.2.0.192.in-addr.arpa", "PTR"),
    ("nope.example.com", "A"),  # NXDOMAIN
    ("mx.example.com", "TXT"),  # NODATA
    ("www.example.com", "A"),  # through a CNAME
    ("mail.example.com", "A"),  # two records
    ("example.com", "MX"),
]
EXPECTED_STATUS = {
    ("nope.example.com", "A"): DnsStatus.NXDOMAIN,
    ("mx.example.com", "TXT"): DnsStatus.NODATA,
}


@pytest.fixture
def server(dns_server: DnsServer) -> DnsServer:
    dns_server.add_zone(ZONE)
    dns_server.add_zone(REVERSE)
    return dns_server


def resolver(server: DnsServer, cache: DnsCache | None = None, **kwargs: int) -> DnsResolver:
    # A 2 s lifetime gives each try 1 s, far more than DELAY: no lookup here is asked twice.
    return DnsResolver(["127.0.0.1"], port=server.port, timeout=2.0, cache=cache, **kwargs)


class Recording(DnsResolver):
    """A DnsResolver that notes which thread asked each lookup and how many ran at once.

    With `pooled`, without the direct path: a batch then goes to the thread pool, which otherwise
    serves only what the direct path could not answer (silence, a failure with another server to
    try, nameservers given by name)."""

    def __init__(self, server: DnsServer, cache: DnsCache | None = None, *, pooled: bool = False,
                 **kwargs: int) -> None:
        super().__init__(["127.0.0.1"], port=server.port, timeout=2.0, cache=cache, **kwargs)
        if pooled:
            self._fast = ()
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.running = self.most_running = 0

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        with self.lock:
            self.threads.append(threading.current_thread())
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            return super().query(name, rdtype)
        finally:
            with self.lock:
                self.running -= 1


def view(answer: DnsAnswer) -> tuple[DnsStatus, list[str], int, str]:
    """An answer with its records in a fixed order: the order of an RRset carries no meaning."""
    return answer.status, sorted(repr(r) for r in answer.records), answer.ttl, answer.error


def timed(r: DnsResolver, pairs: Iterable[tuple[str, str]]) -> tuple[dict[tuple[str, str], DnsAnswer], float]:
    started = time.monotonic()
    answers = r.query_many(pairs)
    return answers, time.monotonic() - started


# -- at once, not one after another ------------------------------------------------------------


def test_query_many_waits_for_the_slowest_not_the_sum(server: DnsServer) -> None:
    server.set_delay_all(DELAY)
    r = resolver(server, DnsCache())
    answers, elapsed = timed(r, PAIRS)
    assert elapsed < 0.6, f"{len(PAIRS)} lookups {DELAY} s late each took {elapsed:.2f} s"
    assert set(answers) == set(PAIRS)
    assert all(server.query_count(name, rdtype) == 1 for name, rdtype in PAIRS)

    server.set_delay_all(None)
    reference = resolver(server)
    for pair in PAIRS:
        assert view(answers[pair]) == view(reference.query(*pair)), pair
        assert answers[pair].status is EXPECTED_STATUS.get(pair, DnsStatus.OK), pair
    r.close()


def test_the_same_lookups_one_after_another_take_the_sum(server: DnsServer) -> None:
    # What makes the test above meaningful: the server's delay is real.
    server.set_delay_all(DELAY)
    r = resolver(server, DnsCache())
    started = time.monotonic()
    for pair in PAIRS:
        r.query(*pair)
    assert time.monotonic() - started >= len(PAIRS) * DELAY


def test_at_most_max_parallel_lookups_of_one_call_at_once(server: DnsServer) -> None:
    server.set_delay_all(0.1)
    r = Recording(server, pooled=True, max_parallel=3)
    answers, elapsed = timed(r, PAIRS)
    assert len(answers) == len(PAIRS)
    assert r.most_running == 3
    assert elapsed >= 0.3  # ceil(8 / 3) rounds of 0.1 s
    r.close()


def test_the_pool_is_bounded_and_shared_by_callers(server: DnsServer) -> None:
    server.set_delay_all(0.1)
    r = Recording(server, pooled=True, pool_threads=2)
    results: list[dict[tuple[str, str], DnsAnswer]] = []

    def caller(pairs: list[tuple[str, str]]) -> None:
        results.append(r.query_many(pairs))

    callers = [threading.Thread(target=caller, args=(PAIRS[i::2],)) for i in range(2)]
    for thread in callers:
        thread.start()
    for thread in callers:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in callers)
    assert sorted(pair for result in results for pair in result) == sorted(PAIRS)
    workers = {thread for thread in r.threads if thread not in callers}
    assert len(workers) == 2 and r.most_running == 2
    r.close()


# -- the direct path: a batch from the calling thread ------------------------------------------


def test_a_batch_is_asked_from_the_calling_thread_without_the_pool(server: DnsServer) -> None:
    server.set_delay_all(DELAY)
    seen: list[tuple[str, DnsStatus]] = []
    cache = DnsCache()
    r = DnsResolver(["127.0.0.1"], port=server.port, timeout=2.0, cache=cache,
                    observer=lambda rdtype, seconds, status: seen.append((rdtype, status)))
    answers, elapsed = timed(r, PAIRS)
    assert elapsed < 0.6
    assert r._pool is None  # no thread was started for it
    expected = [(rdtype, answers[(name, rdtype)].status) for name, rdtype in PAIRS]
    assert sorted(seen, key=repr) == sorted(expected, key=repr)
    assert all(cache.contains(name, rdtype) for name, rdtype in PAIRS)


def test_the_direct_batch_asks_at_most_max_parallel_at_once(server: DnsServer) -> None:
    server.set_delay_all(0.1)
    r = resolver(server, max_parallel=3)
    answers, elapsed = timed(r, PAIRS)
    assert all(answers[pair].status is EXPECTED_STATUS.get(pair, DnsStatus.OK) for pair in PAIRS)
    assert 0.3 <= elapsed < 0.8  # ceil(8 / 3) rounds of 0.1 s, not 8


def test_a_silent_name_in_a_batch_goes_on_to_the_resolver_and_holds_up_no_other(server: DnsServer) -> None:
    server.set_fault("mx.example.com", "stall")  # never answered
    r = resolver(server)
    answers, elapsed = timed(r, PAIRS)
    assert elapsed < 2.6  # the 2 s lifetime, and dnspython's back-off at most
    assert answers[("mx.example.com", "A")] == DnsAnswer(DnsStatus.TEMPERROR, error="timeout")
    # Asked by the direct path, then again by the Resolver in what was left of the lifetime.
    assert server.query_count("mx.example.com", "A") >= 2
    for pair in PAIRS:
        if pair[0] != "mx.example.com":
            assert answers[pair].status is EXPECTED_STATUS.get(pair, DnsStatus.OK), pair


def test_a_truncated_reply_in_a_batch_is_asked_again_over_tcp(server: DnsServer) -> None:
    server.set_fault("mail.example.com", "truncate")
    answers = resolver(server).query_many(PAIRS)
    assert sorted(answers[("mail.example.com", "A")].records) == ["192.0.2.2", "192.0.2.3"]
    assert answers[("mx.example.com", "A")].records == ("192.0.2.1",)


def test_a_garbage_reply_in_a_batch_is_a_temperror_of_its_own(server: DnsServer) -> None:
    server.set_fault("mail.example.com", "garbage")
    answers = resolver(server).query_many(PAIRS)
    assert answers[("mail.example.com", "A")].status is DnsStatus.TEMPERROR
    assert answers[("mx.example.com", "A")].records == ("192.0.2.1",)


def test_nobody_listening_fails_a_whole_batch_at_once() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # free once closed: nothing listens there
    r = DnsResolver(["127.0.0.1"], port=port, timeout=5.0)
    answers, elapsed = timed(r, PAIRS[:4])
    assert elapsed < 1.0
    assert {answer.error for answer in answers.values()} == {
        f"127.0.0.1: connection refused (nothing listening on port {port})"}


def test_a_batch_moves_past_refusing_nameservers_to_one_that_answers(server: DnsServer) -> None:
    # Nothing listens on 127.0.0.2 or 127.0.0.3 at the server's port.
    r = DnsResolver(["127.0.0.2", "127.0.0.3", "127.0.0.1"], port=server.port, timeout=5.0)
    answers, elapsed = timed(r, PAIRS[:4])
    assert elapsed < 1.0
    assert answers[("mx.example.com", "A")].records == ("192.0.2.1",)
    assert all(a.status is not DnsStatus.TEMPERROR for a in answers.values())


# -- what is asked -----------------------------------------------------------------------------


def test_duplicates_are_asked_once(server: DnsServer) -> None:
    r = resolver(server)  # no cache: only query_many itself can spare the second ask
    pairs = [
        ("mx.example.com", "A"),
        ("example.com", "TXT"),
        ("mx.example.com", "A"),
        ("MX.Example.COM.", "a"),  # the same lookup, spelled otherwise
        ("example.com", "TXT"),
    ]
    answers = r.query_many(pairs)
    assert set(answers) == set(pairs)  # keyed as given, every spelling
    assert answers[("MX.Example.COM.", "a")] == answers[("mx.example.com", "A")]
    assert answers[("mx.example.com", "A")].records == ("192.0.2.1",)
    assert server.query_count("mx.example.com", "A") == 1
    assert server.query_count("example.com", "TXT") == 1
    assert server.total_queries() == 2
    r.close()


def test_a_temperror_does_not_affect_the_others(server: DnsServer) -> None:
    server.set_delay_all(DELAY)
    server.set_fault("mx.example.com", "servfail")  # mx.example.com A and TXT
    r = resolver(server, DnsCache())
    answers, elapsed = timed(r, PAIRS)
    assert elapsed < 0.6
    for pair, answer in answers.items():
        if pair[0] == "mx.example.com":
            assert answer.status is DnsStatus.TEMPERROR, pair
            assert "SERVFAIL" in answer.error
        else:
            assert answer.status is EXPECTED_STATUS.get(pair, DnsStatus.OK), pair
    assert answers[("www.example.com", "A")].records == ("192.0.2.1",)  # the CNAME's target
    r.close()


def test_invalid_names_are_answered_without_asking(server: DnsServer) -> None:
    r = Recording(server)
    answers = r.query_many([("bad..name", "A"), ("-" * 64 + ".example.com", "A"), ("mx.example.com", "A")])
    assert answers[("bad..name", "A")].status is DnsStatus.NXDOMAIN
    assert answers[("-" * 64 + ".example.com", "A")].status is DnsStatus.NXDOMAIN
    assert answers[("mx.example.com", "A")].ok
    assert server.total_queries() == 1


# -- in the calling thread ---------------------------------------------------------------------


def test_an_empty_list_answers_nothing(server: DnsServer) -> None:
    r = Recording(server)
    assert r.query_many([]) == {}
    assert r.query_many(iter(())) == {}
    assert r.threads == []


def test_one_query_is_asked_in_the_calling_thread(server: DnsServer) -> None:
    r = Recording(server)
    answers = r.query_many([("mx.example.com", "A"), ("mx.example.com", "A")])
    assert answers == {("mx.example.com", "A"): DnsAnswer(DnsStatus.OK, ("192.0.2.1",), ttl=300)}
    assert set(r.threads) == {threading.current_thread()}


def test_cache_hits_are_answered_in_the_calling_thread(server: DnsServer) -> None:
    server.set_delay_all(DELAY)
    r = Recording(server, DnsCache())
    first = r.query_many(PAIRS)
    asked = server.total_queries()
    r.threads.clear()
    second, elapsed = timed(r, PAIRS)
    assert elapsed < DELAY / 2
    assert set(r.threads) == {threading.current_thread()}
    assert server.total_queries() == asked
    assert {p: view(a)[:2] for p, a in second.items()} == {p: view(a)[:2] for p, a in first.items()}
    r.close()


def test_close_is_idempotent_and_later_calls_ask_in_the_calling_thread(server: DnsServer) -> None:
    r = Recording(server, pooled=True)
    assert len(r.query_many(PAIRS[:3])) == 3
    r.close()
    r.close()
    r.threads.clear()
    answers = r.query_many(PAIRS[3:6])
    assert [answers[p].status for p in PAIRS[3:6]] == [DnsStatus.NXDOMAIN, DnsStatus.NODATA, DnsStatus.OK]
    assert set(r.threads) == {threading.current_thread()}


# -- after fork() ------------------------------------------------------------------------------


def _read_all(fd: int, deadline: float) -> bytes:
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"no end of output from the child within {WAIT} s")


def _reap(pid: int, deadline: float) -> int:
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} still running after {WAIT} s; killed")


@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_query_many_in_a_forked_child(server: DnsServer) -> None:
    # The parent's pool as full as it gets: a pool inherited over fork() would then start no
    # threads of its own in the child, and the parent's are not there.
    r = resolver(server, pool_threads=len(PAIRS))
    server.set_delay_all(DELAY)
    r.query_many(PAIRS)
    server.set_delay_all(None)
    expected = {pair: view(r.query(*pair)) for pair in PAIRS}
    server.set_delay_all(DELAY)
    reading, writing = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never back into pytest
        code = 1
        try:
            os.close(reading)
            answers, elapsed = timed(r, PAIRS)
            with os.fdopen(writing, "wb") as out:
                out.write(pickle.dumps(({p: view(a) for p, a in answers.items()}, elapsed)))
            code = 0
        finally:
            os._exit(code)
    os.close(writing)
    deadline = time.monotonic() + WAIT
    try:
        data = _read_all(reading, deadline)
    finally:
        os.close(reading)
        assert _reap(pid, deadline + 1.0) == 0
    answers, elapsed = pickle.loads(data)
    assert answers == expected
    assert elapsed < 0.6  # at once in the child too, on a pool of its own
    server.set_delay_all(None)
    after = r.query_many(PAIRS[4:])  # the parent's pool still works
    assert {p: view(a) for p, a in after.items()} == {p: expected[p] for p in PAIRS[4:]}
    r.close()


# -- the core's function -----------------------------------------------------------------------


class OnlyQuery:
    """A `Resolver` with nothing but `query`, as the core's in-memory test resolvers are."""

    def __init__(self, answers: ZoneResolver) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        self.asked.append((name, rdtype))
        return self.answers.query(name, rdtype)


def test_core_query_many_asks_a_plain_resolver_one_after_another() -> None:
    zones = ZoneResolver([ZONE, REVERSE])
    plain = OnlyQuery(zones)
    pairs = [*PAIRS, PAIRS[0], PAIRS[3]]
    answers = dnsapi.query_many(plain, pairs)
    assert plain.asked == PAIRS  # in order, each once
    assert {p: view(a) for p, a in answers.items()} == {p: view(zones.query(*p)) for p in PAIRS}
    assert dnsapi.query_many(plain, []) == {}


def test_core_query_many_leaves_it_to_a_resolver_that_can(server: DnsServer) -> None:
    server.set_delay_all(DELAY)
    r = resolver(server)
    started = time.monotonic()
    answers = dnsapi.query_many(r, PAIRS)
    assert time.monotonic() - started < 0.6
    assert sorted(answers) == sorted(PAIRS)
    r.close()
