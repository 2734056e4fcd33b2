"""The product's one DNS layer: dnspython's stub resolver behind the core's `Resolver` contract.

Everything that touches the network for DNS lives here, outside `core/`, so the core stays pure.
Two pieces:

* `DnsResolver` asks the configured (or system) recursive resolvers and maps every outcome to a
  `DnsAnswer`; it never raises. A plain question goes out as one UDP datagram (`dnswire`); its
  reply is read by `dnswire.read_simple` when it has the simple shape most replies have, else by
  dnspython's parser. Anything more (truncation, silence, odd replies, a second server) is the
  Resolver's. `query_many` sends a batch of independent lookups at once from the calling thread
  and waits for their replies with one poll(); what that does not answer goes to a small thread
  pool shared by every milter thread.
* `DnsCache` is our own TTL cache of finished `DnsAnswer`s, shared by every milter thread.
  dnspython's cache is switched off: it gives SOA-less negative answers a default TTL (we keep
  none), has no TTL cap, and runs on wall-clock time that tests cannot move.
"""

from __future__ import annotations

import functools
import ipaddress
import math
import os
import re
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rdtypes.ANY.MX
import dns.rdtypes.ANY.PTR
import dns.rdtypes.ANY.SOA
import dns.rdtypes.ANY.TXT
import dns.rdtypes.IN.A
import dns.rdtypes.IN.AAAA
import dns.resolver

from authmilter.core.dnsapi import DnsAnswer, DnsStatus
from authmilter.dnswire import EDNS_PAYLOAD, Outcome, Question, exchange_many, read_simple

# A name that cannot exist in the DNS is reported as "no such domain", not as a failure to ask:
# RFC 7208 4.3 treats a malformed domain as a "none" result (not temperror), and DKIM/DMARC can
# only conclude "no key"/"no policy" for it. Retrying such a name later can never succeed.
INVALID_NAME = DnsAnswer(DnsStatus.NXDOMAIN, error="invalid name")

# A CNAME chain that comes back on itself, in a NOERROR answer, is a definite answer: no record of
# the type asked for can be reached from the name, and asking again cannot change that before the
# zone is fixed. RFC 7208 section 4.4 keeps temperror for timeouts and RCODEs other than 0 and 3,
# and section 5.5 skips a PTR target whose address lookup fails; pyspf, when it sees the loop
# itself, also answers "no data". A resolver that turns the loop into SERVFAIL stays temperror:
# that SERVFAIL cannot be told from any other. Not cached (TTL 0): such answers carry no SOA.
CNAME_LOOP = DnsAnswer(DnsStatus.NODATA, error="CNAME loop")

# Full stops that IDNA (RFC 3490 3.1) treats as label separators alongside ".".
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
_MAX_ERROR = 200
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*\.?\Z")

# Guards the lazy creation of every resolver's thread pool. Replaced in a forked child: a thread
# of the parent may have held it at fork() time, and that thread does not exist in the child.
_pool_lock = threading.Lock()


def _new_pool_lock() -> None:
    global _pool_lock
    _pool_lock = threading.Lock()


os.register_at_fork(after_in_child=_new_pool_lock)


def dns_name(name: str) -> dns.name.Name | None:
    """`name` as an absolute, lower-case DNS name, or None when it cannot be one.

    Labels are taken literally rather than through `dns.name.from_text`, because names come from
    untrusted mail and master-file backslash escapes in them must not change what we ask for.
    U-labels are IDNA-encoded. dnspython enforces the limits: no empty label, labels of at most
    63 octets, at most 255 octets on the wire (253 characters of text).
    """
    text = name.translate(_DOTS)
    text = text.removesuffix(".")
    if not text:
        return None
    try:
        labels = [_label(part) for part in text.split(".")]
        return dns.name.Name([*labels, b""])
    except (dns.exception.DNSException, UnicodeError):
        return None


def _label(text: str) -> bytes:
    if text.isascii():
        return text.lower().encode("ascii")
    return dns.name.IDNA_2003_Practical.encode(text)


def _host(name: dns.name.Name) -> str:
    # The root alone is the null MX of RFC 7505; "" reads as "no host" where "." would not.
    return "" if name == dns.name.root else name.to_text(omit_final_dot=True)


def record_from_rdata(rdata: dns.rdata.Rdata) -> Any:
    """One record in the shape `authmilter.core.dnsapi` documents for its type."""
    if isinstance(rdata, dns.rdtypes.ANY.TXT.TXT):
        return tuple(rdata.strings)
    if isinstance(rdata, dns.rdtypes.IN.A.A | dns.rdtypes.IN.AAAA.AAAA):
        return rdata.address
    if isinstance(rdata, dns.rdtypes.ANY.MX.MX):
        return (rdata.preference, _host(rdata.exchange))
    if isinstance(rdata, dns.rdtypes.ANY.PTR.PTR):
        return _host(rdata.target)
    return rdata.to_text()


def negative_ttl(response: dns.message.Message | None) -> int:
    """How long a NXDOMAIN/NODATA `response` may be cached (RFC 2308 section 5).

    min(SOA TTL, SOA MINIMUM) from the authority section, and no longer than any CNAME that led
    there. Without an SOA the answer carries no negative TTL, so it gets 0 and is not cached.
    """
    if response is None:
        return 0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA and len(rrset) > 0:
            soa = rrset[0]
            assert isinstance(soa, dns.rdtypes.ANY.SOA.SOA)
            return min([rrset.ttl, soa.minimum, *(chain.ttl for chain in response.answer)])
    return 0


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    evictions: int  # entries dropped to stay within max_entries while still live


class DnsCache:
    """A TTL cache of `DnsAnswer`s keyed by (lower-case name, record type); thread-safe.

    `put` decides what is cacheable: TEMPERROR never (the next message deserves a fresh try), and
    nothing whose TTL is 0. A cached answer comes back with the TTL it has left.
    """

    def __init__(
        self,
        max_entries: int = 10000,
        max_ttl: int = 86400,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.max_ttl = max_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, str], tuple[DnsAnswer, float]] = OrderedDict()
        # A lower bound on every expiry time, so a full cache scans for expired entries only
        # when one can actually have expired.
        self._next_expiry = math.inf
        self._hits = self._misses = self._evictions = 0

    @staticmethod
    def key(name: str, rdtype: str) -> tuple[str, str]:
        return (name.lower().removesuffix("."), rdtype.upper())

    def get(self, name: str, rdtype: str) -> DnsAnswer | None:
        key = self.key(name, rdtype)
        with self._lock:
            now = self._clock()
            entry = self._entries.get(key)
            if entry is not None and entry[1] <= now:
                del self._entries[key]
                entry = None
            if entry is None:
                self._misses += 1
                return None
            self._hits += 1
            answer, expires = entry
        return DnsAnswer(answer.status, answer.records, math.ceil(expires - now), answer.error)

    def contains(self, name: str, rdtype: str) -> bool:
        """Whether `get` would answer now; counts neither a hit nor a miss."""
        key = self.key(name, rdtype)
        with self._lock:
            entry = self._entries.get(key)
            return entry is not None and entry[1] > self._clock()

    def put(self, name: str, rdtype: str, answer: DnsAnswer) -> bool:
        """Remember `answer` for min(answer.ttl, max_ttl) seconds; False when it is not cacheable."""
        lifetime = min(answer.ttl, self.max_ttl)
        if answer.status is DnsStatus.TEMPERROR or lifetime <= 0:
            return False
        key = self.key(name, rdtype)
        with self._lock:
            now = self._clock()
            if key not in self._entries and len(self._entries) >= self.max_entries:
                self._make_room(now)
            expires = now + lifetime
            self._entries[key] = (answer, expires)
            self._entries.move_to_end(key)
            self._next_expiry = min(self._next_expiry, expires)
        return True

    def _make_room(self, now: float) -> None:
        # Expired entries go first; only then the oldest live ones.
        if now >= self._next_expiry:
            for key in [k for k, (_, expires) in self._entries.items() if expires <= now]:
                del self._entries[key]
            self._next_expiry = min((e for _, e in self._entries.values()), default=math.inf)
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._next_expiry = math.inf

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self._hits, self._misses, len(self._entries), self._evictions)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def cname_loops(qname: dns.name.Name, answer: Sequence[Any]) -> bool:
    """Whether the CNAMEs in an answer section, followed from `qname`, come back to a name passed."""
    targets: dict[dns.name.Name, dns.name.Name] = {}
    for rrset in answer:
        if rrset.rdtype == dns.rdatatype.CNAME and len(rrset) > 0:
            rdata = rrset[0]
            assert isinstance(rdata, dns.rdtypes.ANY.CNAME.CNAME)
            targets[rrset.name] = rdata.target
    seen: set[dns.name.Name] = set()
    name = qname
    while name in targets:  # dns.name.Name compares case-insensitively, as DNS does
        if name in seen:
            return True
        seen.add(name)
        name = targets[name]
    return False


def _is_cname_loop(qname: dns.name.Name, exc: dns.resolver.NoNameservers) -> bool:
    # dnspython follows a looping chain until its hop limit and then drops the server with
    # ChainTooLong; the response it kept shows whether the chain loops or is merely long (then
    # the data may exist further on, and the failure stays a temporary one).
    errors = exc.kwargs.get("errors") or []
    return bool(errors) and all(
        isinstance(err[3], dns.message.ChainTooLong)
        and isinstance(err[4], dns.message.Message)
        and cname_loops(qname, err[4].answer)
        for err in errors
    )


# The direct path: one UDP question to the first nameserver (authmilter.dnswire), the reply read
# by `dnswire.read_simple` when it has the simple shape most replies have, else by dnspython's
# parser and chaining rules. dnspython's Resolver costs about 0.35 ms of CPU per lookup (a fresh
# epoll object per query, the question built and re-encoded, the answer searched several times);
# most of a milter's lookups get one answer from one server. What needs more (silence, a reply
# that is not an answer to our question, a failure with another server to try) goes on to the
# Resolver as before, within what is left of the lifetime.
_RDTYPES: dict[str, int] = {}


def _fast_servers(nameservers: Sequence[Any], port: int) -> tuple[tuple[int, str, int], ...]:
    """(family, address, port) of every nameserver when all are plain IP addresses, else ().

    The direct path asks the first; how many there are decides whether its failure is final."""
    servers = []
    for server in nameservers:
        if not isinstance(server, str):
            return ()
        try:
            address = ipaddress.ip_address(server)
        except ValueError:
            return ()
        servers.append((socket.AF_INET6 if address.version == 6 else socket.AF_INET, str(address), port))
    return tuple(servers)


def _question(qname: dns.name.Name, rdtype: str) -> Question | None:
    """The question for the direct path; None for a type only the Resolver knows how to report."""
    rdt = _RDTYPES.get(rdtype)
    if rdt is None:
        try:
            rdt = _RDTYPES.setdefault(rdtype, int(dns.rdatatype.from_text(rdtype)))
        except dns.exception.DNSException:
            return None  # the Resolver reports an unknown type as it always has
    return Question(qname, rdt)


def _ask_direct(servers: tuple[tuple[int, str, int], ...], question: Question,
                timeout: float) -> DnsAnswer | None:
    """The answer of one exchange with the first server, or None when the Resolver must take over."""
    family, address, port = servers[0]
    deadline = time.monotonic() + timeout
    [(data, _)] = exchange_many(family, address, port, [question], deadline)
    return _reply_to_answer(data, servers, question, deadline)


def _reply_to_answer(data: Outcome, servers: tuple[tuple[int, str, int], ...], question: Question,
                     deadline: float) -> DnsAnswer | None:
    """What one UDP exchange with the first server says: an answer, or None for the Resolver."""
    refused: list[str] = []
    while isinstance(data, ConnectionRefusedError):
        # An ICMP port unreachable: nothing listens there, and waiting cannot change that.
        # dnspython's unconnected sockets never see it and would wait out the whole lifetime,
        # so the next server is asked here at once, and when all refuse, that is the answer.
        _, address, port = servers[0]
        refused.append(address)
        if len(servers) == 1:
            return _temperror(f"{', '.join(refused)}: connection refused (nothing listening on port {port})")
        servers = servers[1:]
        family, address, port = servers[0]
        [(data, _)] = exchange_many(family, address, port, [question], deadline)
    _, address, port = servers[0]
    only = len(servers) == 1
    if data is None or isinstance(data, OSError):  # silence, an unreachable network: the Resolver retries
        return None
    simple = read_simple(data, question)
    if simple is not None:
        return simple
    qname, rdt = question.qname, question.rdtype
    try:
        response = dns.message.from_wire(data)
    except Exception:
        return None
    if response.flags & dns.flags.TC and _answers(response, qname, rdt):
        # Too large for UDP: the same question over TCP, to the same server (RFC 7766).
        try:
            query = dns.message.make_query(qname, dns.rdatatype.RdataType(rdt), use_edns=0,
                                           payload=EDNS_PAYLOAD)
            response = dns.query.tcp(query, address, timeout=max(0.001, deadline - time.monotonic()),
                                     port=port)
        except Exception:
            return None
    if response.flags & dns.flags.TC or not _answers(response, qname, rdt):
        return None
    if not isinstance(response, dns.message.QueryMessage):  # what from_wire gives for a QUERY
        return None
    return _read_answer(response, qname, address, only)


def _read_answer(response: dns.message.QueryMessage, qname: dns.name.Name, address: str,
                 only: bool) -> DnsAnswer | None:
    """A reply to our question as a `DnsAnswer`, by dnspython's chaining rules; None for the
    cases the Resolver decides (another server to try, a long chain, NXDOMAIN with an answer)."""
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        if only:  # the Resolver would ask the same server and say the same
            return _temperror(f"{address}: {dns.rcode.to_text(rcode)}")
        return None
    if rcode == dns.rcode.NXDOMAIN and not response.answer:
        # No CNAME to follow (most list lookups end here): the chaining rules have nothing to do.
        return DnsAnswer(DnsStatus.NXDOMAIN, ttl=negative_ttl(response))
    try:
        chain = response.resolve_chaining()
    except dns.message.ChainTooLong:
        return CNAME_LOOP if cname_loops(qname, response.answer) else None
    except Exception:  # AnswerForNXDOMAIN and anything unforeseen: the Resolver's verdict
        return None
    if rcode == dns.rcode.NXDOMAIN:
        return DnsAnswer(DnsStatus.NXDOMAIN, ttl=negative_ttl(response))
    if chain.answer is None:
        return DnsAnswer(DnsStatus.NODATA, ttl=negative_ttl(response))
    records = tuple(record_from_rdata(rdata) for rdata in chain.answer)
    return DnsAnswer(DnsStatus.OK, records, ttl=chain.minimum_ttl)


def _answers(response: dns.message.Message, qname: dns.name.Name, rdt: int) -> bool:
    """Whether `response` is a reply to our one question (a forged or stray one is not)."""
    if not response.flags & dns.flags.QR or response.opcode() != dns.opcode.QUERY:
        return False
    if len(response.question) != 1:
        return False
    question = response.question[0]
    return question.name == qname and question.rdtype == rdt and question.rdclass == dns.rdataclass.IN


def _cache_key(name: str) -> tuple[str, dns.name.Name | None] | None:
    """The name as `DnsResolver` caches it, and its dnspython Name if that was needed to find
    out; None when the name cannot be one."""
    if _PLAIN_NAME.match(name):
        # The common case, checked cheaply: for letters, digits, "-" and "_" between single dots
        # the cache key is the name itself, lower-cased, so a hit needs no dnspython Name.
        return name.lower().removesuffix("."), None
    qname = dns_name(name)
    if qname is None:
        return None
    return qname.to_text(omit_final_dot=True), qname


def _submit(
    pool: ThreadPoolExecutor | None, query: Callable[[str, str], DnsAnswer], pair: tuple[str, str]
) -> Future[DnsAnswer] | None:
    """`query(*pair)` on `pool`; None when the caller must ask it itself."""
    if pool is None:
        return None
    try:
        return pool.submit(query, *pair)
    except Exception:  # shut down meanwhile (close(), interpreter exit), or no thread to start
        return None


def _temperror(error: str) -> DnsAnswer:
    return DnsAnswer(DnsStatus.TEMPERROR, error=error[:_MAX_ERROR])


def _failure_text(exc: dns.resolver.NoNameservers) -> str:
    # dnspython records (server, tcp, port, error, response) per failed try; the rcode or
    # exception is what an operator needs, e.g. "127.0.0.1: SERVFAIL".
    errors = exc.kwargs.get("errors") or []
    reasons = dict.fromkeys(f"{err[0]}: {err[3]}" for err in errors)
    return "; ".join(reasons) or "no nameservers"


class DnsResolver:
    """`Resolver` over UDP (TCP when truncated) to recursive resolvers, with an optional cache.

    Thread-safe: the dnspython resolver is configured once here and never changed afterwards, and
    its `resolve` keeps all per-query state in a fresh object, so every milter thread can share it.
    Concurrent misses on one name each ask the network; correctness does not need them merged.

    `query_many` asks a batch of independent lookups at once, so the batch takes as long as its
    slowest lookup. With nameservers given as addresses the calling thread sends them all and
    polls for the replies (`dnswire.exchange_many`); the lookups that this does not settle, and
    every lookup of a batch without the direct path, run on one thread pool per resolver, made on
    first use and shared by every caller. A process forked from this one makes its own on first
    use. `close()` shuts the pool down.
    """

    def __init__(
        self,
        nameservers: Sequence[str] = (),
        port: int = 53,
        timeout: float = 5.0,
        cache: DnsCache | None = None,
        observer: Callable[[str, float, DnsStatus], None] | None = None,
        *,
        max_parallel: int = 16,
        pool_threads: int = 32,
    ) -> None:
        """`nameservers`: IP addresses; empty means those of /etc/resolv.conf.

        `observer(rdtype, seconds, status)` is told of every lookup that went to the network
        (cache hits are not lookups); metrics use it, and it must not raise.

        `timeout` is dnspython's lifetime for the whole query, retries and TCP fallback included.
        dnspython sleeps a short back-off (0.1 s, then 0.2 s) before asking the same servers
        again and only then notices the lifetime is spent, so a dead server is reported up to
        0.2 s after `timeout`.

        `max_parallel`: how many lookups of one `query_many` call run at once. `pool_threads`: the
        size of the thread pool all `query_many` calls share; lookups beyond it wait their turn.
        """
        if max_parallel < 1 or pool_threads < 1:
            raise ValueError("max_parallel and pool_threads must be at least 1")
        self.cache = cache
        self.observer = observer
        self.max_parallel = max_parallel
        self.pool_threads = pool_threads
        # (pid, pool) in one attribute, so that reading both needs no lock.
        self._pool: tuple[int, ThreadPoolExecutor] | None = None
        self._closed = False
        if nameservers:
            stub = dns.resolver.Resolver(configure=False)
            stub.nameservers = list(nameservers)
        else:
            try:
                stub = dns.resolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                # Start anyway: each lookup then says TEMPERROR ("no nameservers"), which
                # tempfails mail rather than keeping the milter from running at all.
                stub = dns.resolver.Resolver(configure=False)
        stub.port = port
        stub.cache = None
        stub.retry_servfail = False
        stub.use_search_by_default = False
        stub.use_edns(0, 0, EDNS_PAYLOAD)
        stub.lifetime = timeout
        # Split the budget so one silent server (or one lost datagram) leaves time to ask again.
        stub.timeout = timeout / max(2, len(stub.nameservers))
        self._stub = stub
        self._lifetime = timeout
        self._fast = _fast_servers(stub.nameservers, port)

    def query(self, name: str, rdtype: str) -> DnsAnswer:
        return self._lookup(name, rdtype)

    def _lookup(self, name: str, rdtype: str, direct: bool = True,
                started: float | None = None) -> DnsAnswer:
        """`query`; with `direct` off the direct path is skipped (a batch that began at `started`
        tried it already)."""
        rdtype = rdtype.upper()
        found = _cache_key(name)
        if found is None:
            return INVALID_NAME
        key, qname = found
        if self.cache is not None:
            cached = self.cache.get(key, rdtype)
            if cached is not None:
                return cached
        if qname is None:
            qname = dns_name(name)
            if qname is None:  # a label too long, or the name as a whole
                return INVALID_NAME
        if self.observer is None:
            answer = self._ask(qname, rdtype, direct=direct, started=started)
        else:
            begun = time.monotonic()
            answer = self._ask(qname, rdtype, direct=direct, started=started)
            self.observer(rdtype, time.monotonic() - begun, answer.status)
        if self.cache is not None:
            self.cache.put(key, rdtype, answer)
        return answer

    def query_many(self, queries: Iterable[tuple[str, str]]) -> dict[tuple[str, str], DnsAnswer]:
        """`query` for every (name, rdtype) pair, the lookups at once; keyed by the pairs as given.

        Pairs that `query` treats as one lookup (the same name in another case, with or without a
        final dot) are asked once. Never raises; returns when every pair is answered.
        """
        answers: dict[tuple[str, str], DnsAnswer] = {}
        # One lookup per cache key, remembering every spelling of it that was asked for.
        spellings: dict[tuple[str, str], list[tuple[str, str]]] = {}
        seen: set[tuple[str, str]] = set()
        for pair in queries:
            if pair in seen:
                continue
            seen.add(pair)
            found = _cache_key(pair[0])
            if found is None or (self.cache is not None and self.cache.contains(found[0], pair[1])):
                answers[pair] = self.query(*pair)  # no network: not worth a thread hop
            else:
                spellings.setdefault((found[0], pair[1].upper()), []).append(pair)
        asked = self._ask_all([same[0] for same in spellings.values()])
        for same in spellings.values():
            for pair in same:
                answers[pair] = asked[same[0]]
        return answers

    def uncached(self, queries: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        """The pairs the cache cannot answer now (all of them without a cache), in order."""
        if self.cache is None:
            return list(queries)
        out: list[tuple[str, str]] = []
        for name, rdtype in queries:
            found = _cache_key(name)
            if found is not None and not self.cache.contains(found[0], rdtype):
                out.append((name, rdtype))
        return out

    def _ask_all(self, pending: list[tuple[str, str]]) -> dict[tuple[str, str], DnsAnswer]:
        started = time.monotonic()
        answers: dict[tuple[str, str], DnsAnswer] = {}
        lookup: Callable[[str, str], DnsAnswer] = self.query
        if self._fast and len(pending) > 1:
            answers, pending = self._ask_direct_many(pending)
            # What the direct path could not answer goes to the Resolver alone, within what is
            # left of the lifetime the batch began with.
            lookup = functools.partial(self._lookup, direct=False, started=started)
        pool = self._executor() if len(pending) > 1 else None
        waiting = iter(pending)
        running: dict[Future[DnsAnswer], tuple[str, str]] = {}
        while True:
            # At most max_parallel of this call in flight, so that one batch cannot take the
            # whole pool every connection shares.
            for pair in waiting:
                future = _submit(pool, lookup, pair)
                if future is None:
                    answers[pair] = lookup(*pair)
                else:
                    running[future] = pair
                if len(running) >= self.max_parallel:
                    break
            if not running:
                return answers
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                pair = running.pop(future)
                try:
                    answers[pair] = future.result()
                except Exception as exc:  # only an overridden query can raise
                    answers[pair] = _temperror(f"{type(exc).__name__}: {exc}")

    def _ask_direct_many(
        self, pending: list[tuple[str, str]]
    ) -> tuple[dict[tuple[str, str], DnsAnswer], list[tuple[str, str]]]:
        """The direct path for a batch, from this thread, max_parallel questions at a time: the
        answers it got (cached and observed as `query` does), and the pairs left for the Resolver."""
        answers: dict[tuple[str, str], DnsAnswer] = {}
        left: list[tuple[str, str]] = []
        batch: list[tuple[tuple[str, str], str, str, Question]] = []
        for pair in pending:
            found = _cache_key(pair[0])
            qname = None if found is None else found[1] or dns_name(pair[0])
            rdtype = pair[1].upper()
            question = None if found is None or qname is None else _question(qname, rdtype)
            if found is None or question is None:
                left.append(pair)
            else:
                batch.append((pair, found[0], rdtype, question))
        family, address, port = self._fast[0]
        for first in range(0, len(batch), self.max_parallel):
            chunk = batch[first:first + self.max_parallel]
            deadline = time.monotonic() + self._stub.timeout
            try:
                outcomes = exchange_many(family, address, port, [item[3] for item in chunk], deadline)
            except Exception:  # the contract: a lookup never raises; the Resolver has its turn
                outcomes = [(None, 0.0)] * len(chunk)
            for (pair, key, rdtype, question), (data, seconds) in zip(chunk, outcomes, strict=True):
                try:
                    answer = _reply_to_answer(data, self._fast, question, deadline)
                except Exception:
                    answer = None
                if answer is None:
                    left.append(pair)
                    continue
                if self.observer is not None:
                    self.observer(rdtype, seconds, answer.status)
                if self.cache is not None:
                    self.cache.put(key, rdtype, answer)
                answers[pair] = answer
        return answers, left

    def _executor(self) -> ThreadPoolExecutor | None:
        """This process's pool, made on first use; None once closed."""
        pid = os.getpid()
        current = self._pool
        if current is not None and current[0] == pid:
            return current[1]
        with _pool_lock:
            if self._closed:
                return None
            current = self._pool
            if current is None or current[0] != pid:
                # A pool inherited over fork() has none of its threads here; it is dropped, not
                # shut down, since its locks may be held by threads that did not come along.
                pool = ThreadPoolExecutor(max_workers=self.pool_threads, thread_name_prefix="dns")
                current = self._pool = (pid, pool)
            return current[1]

    def close(self) -> None:
        """Shut the pool down, waiting for lookups already started; `query_many` then asks one
        after another in the calling thread. Idempotent."""
        with _pool_lock:
            self._closed = True
            current, self._pool = self._pool, None
        if current is not None and current[0] == os.getpid():
            current[1].shutdown(wait=True)

    def _ask(self, qname: dns.name.Name, rdtype: str, *, direct: bool = True,
             started: float | None = None) -> DnsAnswer:
        """One lookup: the direct path first (unless `direct` is off: it was tried already, in a
        batch that began at `started`), then the Resolver within what is left of the lifetime."""
        if started is None:
            started = time.monotonic()
        if direct and self._fast:
            try:
                question = _question(qname, rdtype)
                fast = None if question is None else _ask_direct(self._fast, question, self._stub.timeout)
            except Exception:  # the contract: a lookup never raises; the Resolver has its turn
                fast = None
            if fast is not None:
                return fast
        remaining = self._lifetime - (time.monotonic() - started)
        if remaining <= 0:
            return _temperror("timeout")
        try:
            result = self._stub.resolve(qname, rdtype, raise_on_no_answer=False, search=False,
                                        lifetime=remaining)
            if result.rrset is None:
                return DnsAnswer(DnsStatus.NODATA, ttl=negative_ttl(result.response))
            records = tuple(record_from_rdata(rdata) for rdata in result.rrset)
            return DnsAnswer(DnsStatus.OK, records, ttl=result.chaining_result.minimum_ttl)
        except dns.resolver.NXDOMAIN as exc:
            response = (exc.kwargs.get("responses") or {}).get(qname)
            return DnsAnswer(DnsStatus.NXDOMAIN, ttl=negative_ttl(response))
        except dns.exception.Timeout:
            return _temperror("timeout")
        except dns.resolver.NoNameservers as exc:
            if _is_cname_loop(qname, exc):
                return CNAME_LOOP
            return _temperror(_failure_text(exc))
        except Exception as exc:  # the contract: a lookup never raises
            return _temperror(f"{type(exc).__name__}: {exc}")
