"""OpenDKIM (the Debian package) as a verifying milter, to judge DKIM signatures independently.

    ensure_opendkim()                         # installs opendkim when /usr/sbin/opendkim is missing
    with DnsServer() as dns, OpenDkimVerifier(dns) as odkim:
        odkim.publish_key("sig.example", "sel", key)      # sel._domainkey.sig.example TXT
        assert odkim.verify(signed_message) == ["pass"]

`OpenDkimVerifier` runs `opendkim -f -x <conf>` from a private 0700 directory made with tempfile,
in verify-only mode (`Mode v`), as root (this build runs as root without complaint when no
`UserID` is set; with no key files, its unsafe-directory checks do not come into play), listening
on inet:<free port>@127.0.0.1 (or on a unix socket in its directory: `transport="unix"`, about
15 times faster per message, see below).

DNS: OpenDKIM resolves with libunbound, which by default will not query 127.0.0.0/8 and answers
the RFC 6761 `.test` and `.invalid` TLDs itself (NXDOMAIN; the test server never sees the query).
The verifier gives it a `ResolverConfiguration` unbound file: loopback allowed, every name
forwarded to the test DNS server at 127.0.0.1@<port>, iterator only (no DNSSEC validation, no
trust anchor), `.test`/`.invalid` no longer special (`.localhost`, `.onion`, `.home.arpa` still
are), and answers cached for 0 s, so a test may (re)publish a key and be seen at once. One
exception: NXDOMAIN *without an SOA* (a name outside every zone of the server) is kept ~5 s
whatever the config says; serve `catch_all_zone()` (the `interop_dns` fixture does) to avoid it.

What we found about this build (opendkim 2.11.0~beta2-8+deb12u1, libunbound 1.17):
* It re-reads the ResolverConfiguration file for every message (garble the file and the next
  message tempfails) and that re-read is not thread-safe: two messages verified at the same
  moment make it fail to parse the file (tempfail; under heavy load it can crash, as our
  benchmark rig found). `check()` therefore sends one message at a time.
* `Nameservers 127.0.0.1@<port>` alone also works (libunbound takes addr@port and does not
  refuse a loopback forwarder set that way) and is thread-safe, but then answers are cached for
  their TTL (a republished key is not seen for 300 s with tests.integration.zones), which is
  wrong for a long-lived fixture; hence the unbound file.
* Ed25519 (RFC 8463) verifies: `opendkim -V` lists ed25519-sha256 (OpenSSL 3); MinimumKeyBits
  is not applied to Ed25519 keys.
* Several signatures: ONE Authentication-Results header with one `dkim=` resinfo per
  signature, in the order of the DKIM-Signature fields from the top of the message down,
  followed by `dkim-atps=neutral`. An unsigned message gets `dkim=none` (AlwaysAddARHeader).
* It asks for SMFIP_HDR_LEADSPC, so header values reach it exactly as MtaSession sends them
  (leading space kept): simple header canonicalization is judged on the real bytes.
* Over TCP, libmilter and our client each stall on Nagle/delayed ACK (~40 ms apiece): we set
  TCP_NODELAY and re-arm TCP_QUICKACK once the session is open, leaving one ~40 ms stall in the
  connection set-up (a verify() costs ~45 ms over inet, ~3 ms over a unix socket).
* With `Syslog no` it logs nothing per message (no log-file option in 2.11); its stdout/stderr
  (start-up problems, unbound parse errors) go to `log()`. The reasons for a failure are in
  the header: `dkim=fail reason="signature verification failed"`, `reason="key not found in DNS"`.
* SIGTERM alone takes ~5 s to stop it (libmilter's accept loop polls); `stop()` sends SIGTERM and
  then opens a connection to wake that loop, so it exits in ~50 ms.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Literal

from tests.debian import apt_install
from tests.dnsserver import DnsServer
from tests.mailfactory import Key
from tests.milterclient import MtaSession, Outcome
from tests.zoneresolver import zone_text

OPENDKIM = Path("/usr/sbin/opendkim")
PACKAGES = ("opendkim", "opendkim-tools")
INSTALL_TIMEOUT = 600.0
AUTHSERV_ID = "opendkim.interop.example"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
SESSION_TIMEOUT = 20.0  # one milter conversation; OpenDKIM's own DNS timeout is shorter
START_ATTEMPTS = 3  # a free port can be taken by someone else between picking and binding it


class OpenDkimUnavailable(RuntimeError):
    """OpenDKIM is not installed and could not be installed."""


class OpenDkimError(RuntimeError):
    """OpenDKIM did not start, or did not answer a message the way a verifier should."""


def ensure_opendkim(timeout: float = INSTALL_TIMEOUT) -> str:
    """Install OpenDKIM if /usr/sbin/opendkim is missing; returns what was done, for the log.

    Raises OpenDkimUnavailable with apt's own words when it cannot be installed. Debian's
    postinst tries to start the system service (/etc/opendkim.conf, local:/run/opendkim/
    opendkim.sock): in this container policy-rc.d forbids it ("policy-rc.d denied execution of
    start") and there is no systemd; where it does start, it is not ours and nothing here uses
    it: our processes read only their own config file and listen on their own socket.
    """
    if OPENDKIM.exists():
        return "already installed"
    if os.geteuid() != 0:
        raise OpenDkimUnavailable(f"{OPENDKIM} is missing and installing it needs root")
    if shutil.which("apt-get") is None:
        raise OpenDkimUnavailable(f"{OPENDKIM} is missing and there is no apt-get to install it")
    apt_install(PACKAGES, error=OpenDkimUnavailable, timeout=timeout)
    if not OPENDKIM.exists():
        raise OpenDkimUnavailable(f"apt-get install {' '.join(PACKAGES)} succeeded but {OPENDKIM} is missing")
    return "installed"


def key_zone(domain: str, selector: str, key: Key, ttl: int = 300) -> str:
    """A zone of its own for `selector._domainkey.domain` holding the key's TXT record.

    The test DNS server answers from the deepest zone, so this neither replaces nor is hidden
    by a zone for `domain` itself.
    """
    return zone_text(f"{selector}._domainkey.{domain}", f"@ {ttl} IN TXT {key.zone_txt()}", ttl=ttl)


def catch_all_zone() -> str:
    """A root zone with an SOA (negative TTL 0) for the test DNS server.

    Without it a name outside every zone gets NXDOMAIN with no SOA, which libunbound keeps for
    ~5 s whatever cache-max-negative-ttl says: a key published right after such a miss would
    not be seen. Deeper zones (everything a test adds) still win over it.
    """
    return zone_text(".", negative_ttl=0)


# -- Authentication-Results ---------------------------------------------------------------------


@dataclass(frozen=True)
class DkimResult:
    """One `dkim=` resinfo of an Authentication-Results header (RFC 8601)."""

    result: str  # pass | fail | neutral | policy | temperror | permerror | none
    props: dict[str, str] = field(default_factory=dict)  # "header.d" -> "example.org"; "reason" too
    comments: tuple[str, ...] = ()  # OpenDKIM's "2048-bit key; unprotected" and such

    @property
    def domain(self) -> str | None:
        return self.props.get("header.d")

    @property
    def selector(self) -> str | None:
        return self.props.get("header.s")

    @property
    def algorithm(self) -> str | None:
        return self.props.get("header.a")

    @property
    def reason(self) -> str | None:
        return self.props.get("reason")


Resinfo = tuple[str, str, dict[str, str], tuple[str, ...]]  # method, result, props, comments


def _split_ar(value: str) -> list[tuple[list[str], list[str]]]:
    """The header value as top-level ';'-separated parts: (tokens, comments) each. Quoted strings
    lose their quotes and stay one token; comments may nest and are kept apart."""
    parts: list[tuple[list[str], list[str]]] = [([], [])]
    token = ""
    i, n = 0, len(value)

    def flush() -> None:
        nonlocal token
        if token:
            parts[-1][0].append(token)
            token = ""

    while i < n:
        c = value[i]
        if c == "(":
            flush()
            depth, j, text = 1, i + 1, ""
            while j < n and depth:
                ch = value[j]
                if ch == "\\" and j + 1 < n:
                    text += value[j + 1]
                    j += 2
                    continue
                depth += ch == "("
                depth -= ch == ")"
                if depth:
                    text += ch
                j += 1
            parts[-1][1].append(" ".join(text.split()))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and value[j] != '"':
                if value[j] == "\\" and j + 1 < n:
                    j += 1
                token += value[j]
                j += 1
            # A quoted string is one token even with spaces inside: keep it glued with NUL.
            token = token.replace(" ", "\0")
            i = j + 1
        elif c == ";":
            flush()
            parts.append(([], []))
            i += 1
        elif c.isspace():
            flush()
            i += 1
        else:
            token += c
            i += 1
    flush()
    return parts


def parse_authentication_results(value: str) -> tuple[str, list[Resinfo]]:
    """(authserv-id, [(method, result, props, comments), ...]) of one header field value."""
    parts = _split_ar(value)
    head = parts[0][0]
    authserv = head[0] if head else ""
    resinfos: list[Resinfo] = []
    for tokens, notes in parts[1:]:
        # "key = value" may be spaced out; join the tokens back around '='.
        words = re.sub(r"\s*=\s*", "=", " ".join(tokens)).split()
        if not words or "=" not in words[0]:
            continue  # "none" (no results at all) or an empty part
        method, _, result = words[0].partition("=")
        props: dict[str, str] = {}
        for w in words[1:]:
            k, sep, v = w.partition("=")
            if sep:
                props[k.lower()] = v.replace("\0", " ")
        resinfos.append((method.lower(), result.lower(), props, tuple(notes)))
    return authserv, resinfos


@dataclass
class Verdict:
    """What OpenDKIM said about one message."""

    results: list[DkimResult]  # in OpenDKIM's order: DKIM-Signature fields from the top down
    headers: list[str]  # the Authentication-Results values it added under our authserv-id
    outcome: Outcome

    @property
    def dkim(self) -> list[str]:
        return [r.result for r in self.results]


# -- the process --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _QuickAck:
    """A TCP socket that acknowledges at once whatever it receives.

    libmilter writes each end-of-message reply (the header, then the verdict) separately without
    TCP_NODELAY, so Nagle holds the second write until the first is ACKed, and Linux delays that
    ACK by ~40 ms. TCP_QUICKACK is not sticky, so it is set again around every recv().
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def recv(self, size: int) -> bytes:
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        data = self._sock.recv(size)
        self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        return data

    def __getattr__(self, name: str) -> object:
        return getattr(self._sock, name)


class OpenDkimVerifier:
    """One `opendkim` process verifying with keys from the test DNS server `dns`.

    `dns`: a DnsServer (then `publish_key()` and `.dns` work) or just the port of a DNS server on
    127.0.0.1. `workdir`: where the config, the unbound file, the output and a unix socket go; by
    default a fresh 0700 directory made with tempfile, removed by stop(). `extra_config` lines
    are appended to opendkim.conf (later lines win).
    """

    def __init__(self, dns: DnsServer | int, *, transport: Literal["inet", "unix"] = "inet",
                 workdir: Path | None = None, authserv_id: str = AUTHSERV_ID, dns_timeout: int = 5,
                 extra_config: str = "") -> None:
        self.dns = dns if isinstance(dns, DnsServer) else None
        self.dns_port = dns.port if isinstance(dns, DnsServer) else int(dns)
        if not self.dns_port:
            raise ValueError("start the DnsServer before the verifier: it has no port yet")
        self.transport = transport
        self.authserv_id = authserv_id
        self.dns_timeout = dns_timeout
        self.extra_config = extra_config
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="authmilter-opendkim-"))
        self.config = self.workdir / "opendkim.conf"
        self.unbound_config = self.workdir / "unbound.conf"
        self.logfile = self.workdir / "opendkim.out"
        self.socket_path = self.workdir / "opendkim.sock"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None
        self._lock = threading.Lock()  # one message at a time: see the module doc

    # -- configuration ---------------------------------------------------------------------

    def unbound_text(self) -> str:
        return (
            "server:\n"
            # libunbound refuses to query 127.0.0.0/8 and ::1 unless told otherwise.
            "    do-not-query-localhost: no\n"
            # The test zones are unsigned: no validator module, so no DNSSEC at all (and no
            # trust anchor: OpenDKIM's TrustAnchorFile is left unset too).
            '    module-config: "iterator"\n'
            # Nothing kept between messages (but see catch_all_zone for NXDOMAIN without SOA).
            "    cache-max-ttl: 0\n"
            "    cache-max-negative-ttl: 0\n"
            "    do-ip6: no\n"
            "    qname-minimisation: no\n"
            "    use-caps-for-id: no\n"
            # RFC 6761 names libunbound would answer itself (NXDOMAIN) without asking anyone.
            '    local-zone: "test." nodefault\n'
            '    local-zone: "invalid." nodefault\n'
            "forward-zone:\n"
            '    name: "."\n'
            f"    forward-addr: 127.0.0.1@{self.dns_port}\n"
        )

    @property
    def socket_spec(self) -> str:
        return f"local:{self.socket_path}" if self.transport == "unix" else f"inet:{self.port}@127.0.0.1"

    def config_text(self) -> str:
        return (
            "Mode                    v\n"
            f"Socket                  {self.socket_spec}\n"
            f"AuthservID              {self.authserv_id}\n"
            "AlwaysAddARHeader       yes\n"
            f"ResolverConfiguration   {self.unbound_config}\n"
            f"DNSTimeout              {self.dns_timeout}\n"
            "MinimumKeyBits          1024\n"
            # A verdict in the header for every message, never a refusal instead.
            "On-Default              accept\n"
            "On-BadSignature         accept\n"
            "On-DNSError             accept\n"
            "On-InternalError        accept\n"
            "On-KeyNotFound          accept\n"
            "On-NoSignature          accept\n"
            "On-Security             accept\n"
            "On-SignatureError       accept\n"
            "Syslog                  no\n"
            "UMask                   077\n"
            f"{self.extra_config}\n"
        )

    # -- life cycle ------------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int] | str:
        return str(self.socket_path) if self.transport == "unix" else ("127.0.0.1", self.port)

    def start(self, wait: float = START_TIMEOUT) -> OpenDkimVerifier:
        ensure_opendkim()
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.unbound_config.write_text(self.unbound_text())
        last = ""
        for _ in range(START_ATTEMPTS):
            if self.transport == "inet":
                self.port = _free_port()
            self.config.write_text(self.config_text())
            try:
                return self._start_once(wait)
            except OpenDkimError as e:
                self._reap()
                last = str(e)
                # A port taken between picking and binding: "smfi_opensocket() failed", exit 69.
                if self.transport == "unix" or "smfi_opensocket" not in last:
                    raise
        raise OpenDkimError(f"opendkim found no free port in {START_ATTEMPTS} attempts:\n{last}")

    def _start_once(self, wait: float) -> OpenDkimVerifier:
        self._out = open(self.logfile, "ab")  # noqa: SIM115 - closed in _reap()
        self.proc = subprocess.Popen([str(OPENDKIM), "-f", "-x", str(self.config)], cwd=self.workdir,
                                     stdin=subprocess.DEVNULL, stdout=self._out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise OpenDkimError(f"opendkim exited {self.proc.returncode}:\n{self.log()}")
            # A plain connect first (MtaSession would leak its socket when that fails), then a
            # full option negotiation, connect and HELO: libmilter is really serving.
            if self._connects():
                try:
                    MtaSession(self.address, timeout=2).close()
                    return self
                except (OSError, AssertionError):
                    pass
            time.sleep(0.05)
        raise OpenDkimError(f"opendkim did not accept milter connections within {wait}s:\n{self.log()}")

    def _connects(self) -> bool:
        family = socket.AF_UNIX if self.transport == "unix" else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            try:
                s.connect(self.address)
            except OSError:
                return False
            return True

    def _wake(self) -> None:
        """Connect once: libmilter's accept loop then sees the stop request at once."""
        self._connects()

    def _reap(self) -> int | None:
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                deadline = time.monotonic() + STOP_TIMEOUT
                while self.proc.poll() is None and time.monotonic() < deadline:
                    self._wake()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(0.1)
                if self.proc.poll() is None:
                    self.proc.kill()
                    self.proc.wait(5)
            rc = self.proc.returncode
            self.proc = None
        if self._out is not None:
            self._out.close()
            self._out = None
        return rc

    def stop(self, *, keep_workdir: bool = False) -> int | None:
        """SIGTERM, then SIGKILL after STOP_TIMEOUT seconds; returns its exit status."""
        rc = self._reap()
        if self._own_workdir and not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
        return rc

    def __enter__(self) -> OpenDkimVerifier:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def log(self) -> str:
        """What opendkim wrote to stdout/stderr (with Syslog off: start-up and resolver problems)."""
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    # -- keys ------------------------------------------------------------------------------

    def publish_key(self, domain: str, selector: str, key: Key, ttl: int = 300) -> None:
        """Serve `key` at selector._domainkey.domain from the DNS server this verifier uses."""
        if self.dns is None:
            raise RuntimeError("this verifier was given a DNS port, not a DnsServer: add the zone there")
        self.dns.add_zone(key_zone(domain, selector, key, ttl))

    # -- verifying -------------------------------------------------------------------------

    def _session(self, client_ip: str, helo: str) -> MtaSession:
        session = MtaSession(self.address, client_ip=client_ip, helo=helo, timeout=SESSION_TIMEOUT)
        if self.transport == "inet":
            session.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            quick = _QuickAck(session.sock)
            session.sock = session.conn.sock = quick  # type: ignore[assignment]
        return session

    def check(self, message: bytes, *, mail_from: str = "sender@example.org",
              client_ip: str = "192.0.2.1", helo: str = "mail.example.net",
              rcpts: tuple[str, ...] = ("user@example.com",)) -> Verdict:
        """Send `message` (CRLF line ends) through OpenDKIM; its Authentication-Results, parsed.

        Raises OpenDkimError when it is not running, answers anything but accept, or adds no
        Authentication-Results under our authserv-id.
        """
        with self._lock:
            if self.proc is None or self.proc.poll() is not None:
                raise OpenDkimError(f"opendkim is not running:\n{self.log()}")
            with self._session(client_ip, helo) as session:
                outcome = session.message(message, mail_from=mail_from, rcpts=rcpts)
        if outcome.action != "accept":
            raise OpenDkimError(f"opendkim answered {outcome.action} {outcome.reply or ''}:\n{self.log()}")
        headers: list[str] = []
        results: list[DkimResult] = []
        for value in outcome.header("Authentication-Results"):
            authserv, resinfos = parse_authentication_results(value)
            if authserv.lower() != self.authserv_id.lower():
                continue
            headers.append(value)
            results.extend(DkimResult(result, props, notes)
                           for method, result, props, notes in resinfos if method == "dkim")
        if not headers:
            raise OpenDkimError(
                f"opendkim added no Authentication-Results for {self.authserv_id}: {outcome}\n{self.log()}")
        return Verdict(results, headers, outcome)

    def verify(self, message: bytes, *, mail_from: str = "sender@example.org",
               client_ip: str = "192.0.2.1") -> list[str]:
        """The `dkim=` results, one per signature from the top down: ["pass"], ["pass", "fail"],
        ["none"] for an unsigned message."""
        return self.check(message, mail_from=mail_from, client_ip=client_ip).dkim
