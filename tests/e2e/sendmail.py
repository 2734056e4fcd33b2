"""A private Sendmail 8.17 for end-to-end tests, taken from Debian's packages without installing them.

Debian's sendmail packages conflict with Postfix, which the rest of tests/e2e needs on the host, so
`obtain()` fetches the .debs with `apt-get download`, unpacks them with `dpkg -x` into a cache
directory that later runs reuse (no network needed then), and adds the shared libraries the host
lacks from the packages sendmail-bin depends on. `SendmailInstance` runs that binary from its own
sendmail.cf (built with m4 from the unpacked sendmail-cf), queue, pid file and maps under one
temporary directory, listening on a loopback high port and relaying everything to `SmtpSink`.

Every sendmail process runs in a mount namespace of its own (`unshare --mount`) in which
/etc/resolv.conf names a DNS server of the test's, /etc/hosts is the test's, and /dev/log is the
test's syslog socket: the libc resolver has no port setting and syslog(3) no path setting, and
nothing Sendmail looks up or logs may leave the machine or reach the host's own files. The same
namespace tells which processes are ours when it is time to stop them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import smtplib
import socket
import socketserver
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.debian import APT_STALE, apt_install, tail
from tests.e2e.postfix import Delivered, _alive, _children

CACHE = Path(os.environ.get("AUTHMILTER_SENDMAIL_CACHE", "/var/cache/authmilter-tests/sendmail"))
PACKAGES = ("sendmail-bin", "sendmail-base", "sendmail-cf")
BINARY = Path("usr/libexec/sendmail/sendmail")  # inside the unpacked tree
CF_DIR = Path("usr/share/sendmail/cf")
LIB_DIR = Path("usr/lib/x86_64-linux-gnu")
COMMAND_TIMEOUT = 60.0  # one apt-get, dpkg, m4 or sendmail command
# apt's words when it cannot reach the mirror at all: the one case that is a skip, not a failure.
NO_NETWORK = ("Temporary failure resolving", "Could not resolve", "Failed to fetch", "Could not connect",
              "Connection timed out", "Network is unreachable", "Unable to connect")


class SendmailUnavailable(RuntimeError):
    """Sendmail could not be obtained or prepared; `offline` when the mirror could not be reached."""

    def __init__(self, message: str, *, offline: bool = False) -> None:
        super().__init__(message)
        self.offline = offline


@dataclass(frozen=True)
class SendmailTree:
    """An unpacked sendmail: the binary, the m4 cf tree, and the extra libraries it needs."""

    root: Path
    version: str

    @property
    def binary(self) -> Path:
        return self.root / BINARY

    @property
    def cf_dir(self) -> Path:
        return self.root / CF_DIR

    @property
    def lib_dir(self) -> Path:
        return self.root / LIB_DIR

    def env(self) -> dict[str, str]:
        return {"LD_LIBRARY_PATH": str(self.lib_dir)}


# -- obtaining the packages ----------------------------------------------------------------------


def _run(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=dict(os.environ, **(env or {})), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _download(packages: list[str], into: Path) -> list[Path]:
    """`apt-get download` into `into`, updating the lists once if they are stale (an unknown
    package, or a version the mirror no longer has)."""
    def attempt() -> subprocess.CompletedProcess[str]:
        return _run(["apt-get", "-q", "-o", "DPkg::Lock::Timeout=60", "download", *packages], cwd=into,
                    env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=180)

    done = attempt()
    if done.returncode != 0 and any(s in done.stdout + done.stderr for s in APT_STALE):
        update = _run(["apt-get", "-q", "-o", "DPkg::Lock::Timeout=60", "update"], timeout=180)
        if update.returncode != 0 or any(s in update.stdout + update.stderr for s in NO_NETWORK):
            words = update.stdout + update.stderr
            raise SendmailUnavailable(f"apt-get update failed:\n{tail(words)}",
                                      offline=any(s in words for s in NO_NETWORK))
        done = attempt()
    if done.returncode != 0:
        words = done.stdout + done.stderr
        raise SendmailUnavailable(f"apt-get download {' '.join(packages)} failed:\n{tail(words)}",
                                  offline=any(s in words for s in NO_NETWORK))
    debs = sorted(into.glob("*.deb"))
    if not debs:
        raise SendmailUnavailable(f"apt-get download {' '.join(packages)} left no .deb in {into}")
    return debs


def _missing_libraries(tree: SendmailTree) -> list[str]:
    done = _run(["ldd", str(tree.binary)], env=tree.env())
    return re.findall(r"^\s*(\S+) => not found", done.stdout, re.MULTILINE)


def _installed(package: str) -> bool:
    done = _run(["dpkg-query", "-W", "-f", "${db:Status-Status}", package])
    return done.returncode == 0 and done.stdout.strip() == "installed"


def _library_packages(deb: Path) -> list[str]:
    """The shared-library packages sendmail-bin depends on (`libfoo1 (>= 1)` -> `libfoo1`)."""
    depends = _run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
    names = [alt.split("|")[0].split("(")[0].split(":")[0].strip() for alt in depends.split(",")]
    return [n for n in names if n.startswith("lib")]


def _unpack(debs: list[Path], root: Path) -> None:
    for deb in debs:
        done = _run(["dpkg", "-x", str(deb), str(root)])
        if done.returncode != 0:
            raise SendmailUnavailable(f"dpkg -x {deb.name} failed:\n{done.stderr}")


def _prepare(dest: Path) -> str:
    """Download, unpack and complete a sendmail tree in `dest`; returns its version."""
    debs_dir = dest / "debs"
    debs_dir.mkdir(parents=True)
    debs = _download(list(PACKAGES), debs_dir)
    root = dest / "root"
    _unpack(debs, root)
    bin_deb = next(d for d in debs if d.name.startswith("sendmail-bin_"))
    version = _run(["dpkg-deb", "-f", str(bin_deb), "Version"]).stdout.strip()
    tree = SendmailTree(root, version)
    # Debian ships the binary setgid smmsp/mail; as a set-id program the dynamic loader would
    # ignore LD_LIBRARY_PATH, and the libraries the host lacks are only in our own tree.
    tree.binary.chmod(0o755)
    if _missing_libraries(tree):
        extra = [p for p in _library_packages(bin_deb) if not _installed(p)]
        if extra:
            extra_dir = dest / "debs-lib"
            extra_dir.mkdir()
            _unpack(_download(extra, extra_dir), root)
    if still := _missing_libraries(tree):
        raise SendmailUnavailable(f"{tree.binary} still lacks {still} after unpacking its dependencies")
    return version


def ensure_m4(timeout: float = 300.0) -> None:
    """m4 builds sendmail.cf; it conflicts with nothing, so it is installed on the host when missing."""
    if shutil.which("m4"):
        return
    try:
        apt_install(["m4"], error=SendmailUnavailable, timeout=timeout)
    except SendmailUnavailable as e:
        raise SendmailUnavailable(str(e), offline=any(s in str(e) for s in NO_NETWORK)) from e


def obtain(cache: Path = CACHE) -> SendmailTree:
    """The cached sendmail tree, made on first use. Raises SendmailUnavailable (offline=True when
    the mirror cannot be reached, which is the only case the tests skip)."""
    cache.mkdir(parents=True, exist_ok=True)
    ready = cache / "current"
    with open(cache / ".lock", "w") as lock:
        # Two test runs at once must neither download into the same place nor see half a tree.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (ready / "VERSION").is_file():
            return SendmailTree(ready / "root", (ready / "VERSION").read_text().strip())
        work = Path(tempfile.mkdtemp(prefix="build-", dir=cache))
        try:
            version = _prepare(work)
            (work / "VERSION").write_text(version + "\n")
            shutil.rmtree(ready, ignore_errors=True)
            work.rename(ready)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return SendmailTree(ready / "root", version)


# -- the SMTP sink Sendmail relays to -------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    """One message the sink accepted, as Sendmail sent it on."""

    mail_from: str
    rcpts: tuple[str, ...]
    message: Delivered  # LF line ends, as Delivered expects


class _SinkHandler(socketserver.StreamRequestHandler):
    timeout = 30  # a silent peer frees its thread instead of holding it until shutdown
    server: _SinkServer

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self) -> None:
        self.reply("220 sink.e2e.test ESMTP test sink")
        mail_from, rcpts = "", list[str]()
        while line := self.rfile.readline(65536):
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                self.reply("250-sink.e2e.test\r\n250-8BITMIME\r\n250 SIZE" if verb == b"EHLO"
                           else "250 sink.e2e.test")
            elif verb == b"MAIL":
                mail_from, rcpts = _angle(line), list[str]()
                self.reply("250 2.1.0 ok")
            elif verb == b"RCPT":
                rcpts.append(_angle(line))
                self.reply("250 2.1.5 ok")
            elif verb == b"DATA":
                self.reply("354 go ahead")
                raw = self.read_data()
                if raw is None:
                    return
                self.server.accept(mail_from, tuple(rcpts), raw)
                self.reply("250 2.0.0 queued")
            elif verb == b"QUIT":
                self.reply("221 2.0.0 bye")
                return
            elif verb in (b"RSET", b"NOOP"):
                self.reply("250 2.0.0 ok")
            else:
                self.reply("502 5.5.2 not here")

    def read_data(self) -> bytes | None:
        lines: list[bytes] = []
        while line := self.rfile.readline(1 << 20):
            if line in (b".\r\n", b".\n"):
                return b"".join(lines)
            lines.append(line[1:] if line.startswith(b".") else line)
        return None


def _angle(line: bytes) -> str:
    m = re.search(rb"<([^>]*)>", line)
    return m.group(1).decode(errors="replace") if m else ""


class _SinkServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int) -> None:
        super().__init__(("127.0.0.1", port), _SinkHandler)
        self.lock = threading.Lock()
        self.received: list[Received] = []

    def accept(self, mail_from: str, rcpts: tuple[str, ...], raw: bytes) -> None:
        message = Delivered(Path(f"sink/{len(self.received)}"), raw.replace(b"\r\n", b"\n"))
        with self.lock:
            self.received.append(Received(mail_from, rcpts, message))


class SmtpSink:
    """An SMTP server on 127.0.0.1 that accepts and keeps every message: Sendmail's next hop."""

    def __init__(self, port: int = 0) -> None:
        self._server = _SinkServer(port)
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.1,), daemon=True,
                                        name="smtp-sink")

    def start(self) -> SmtpSink:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    def received(self) -> list[Received]:
        with self._server.lock:
            return list(self._server.received)

    def with_id(self, message_id: str) -> list[Received]:
        return [r for r in self.received() if r.message.message_id == message_id]


# -- syslog -------------------------------------------------------------------------------------


class SyslogSink:
    """A datagram socket for Sendmail's syslog(3) lines (it is /dev/log in Sendmail's namespace)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.settimeout(0.1)
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True, name="syslog-sink")
        self._thread.start()

    def _read(self) -> None:
        while not self._stopping.is_set():
            try:
                data = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            # "<22>Dec  7 20:57:00 sm-mta[123]: text": the priority is of no use to the tests.
            line = re.sub(r"^<\d+>", "", data.decode(errors="replace").rstrip("\n\0"))
            with self._lock:
                self._lines.append(line)

    def lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(2)
        self._sock.close()


# -- the instance -------------------------------------------------------------------------------


MC = """\
divert(-1)
dnl The test's own Sendmail: everything under {base}, nothing from /etc/mail.
divert(0)dnl
dnl `linux', not Debian's `debian': that one includes /usr/share/sendmail/cf/debian/autoconf.m4
dnl by absolute path, which only an installed sendmail-cf has.
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{hostname}')dnl
define(`QUEUE_DIR', `{base}/mqueue')dnl
define(`STATUS_FILE', `{base}/sendmail.st')dnl
define(`ALIAS_FILE', `{base}/aliases')dnl
define(`HELP_FILE', `{base}/helpfile')dnl
define(`confPID_FILE', `{base}/sendmail.pid')dnl
define(`confCW_FILE', `{base}/local-host-names')dnl
define(`confCR_FILE', `{base}/relay-domains')dnl
define(`confHOST_STATUS_DIRECTORY', `')dnl
dnl No DNS for host names: the hosts file first and only. The libc resolver, which reverse
dnl lookups of clients still use, finds only the test's DNS server in this namespace.
define(`confSERVICE_SWITCH_FILE', `{base}/service.switch')dnl
define(`confHOSTS_FILE', `{base}/hosts')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`confTO_RESOLVER_RETRANS', `2s')dnl
define(`confTO_RESOLVER_RETRY', `1')dnl
define(`confTO_IDENT', `0s')dnl
define(`confLOG_LEVEL', `14')dnl
define(`confPRIVACY_FLAGS', `goaway')dnl
dnl Every message is relayed to the sink; [..] means no MX lookup for it.
define(`SMART_HOST', `esmtp:[127.0.0.1]')dnl
define(`SMTP_MAILER_ARGS', `TCP $h {sink_port}')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {sink_port}')dnl
define(`SMTP8_MAILER_ARGS', `TCP $h {sink_port}')dnl
define(`DSMTP_MAILER_ARGS', `TCP $h {sink_port}')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {sink_port}')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA-v4, Port={smtp_port}, Addr=127.0.0.1')dnl
RELAY_DOMAIN(`{rcpt_domain}')dnl
{milter}
MAILER(`smtp')dnl
"""

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sendmail.md"
DOCS_SOCKET = "S=inet:8891@127.0.0.1"


def docs_milter_lines(socket_spec: str, docs: Path = DOCS) -> str:
    """The sendmail.mc lines of docs/sendmail.md ("The settings"), read from the page itself so the
    tests run what a reader copies; only the socket is changed, to `socket_spec`."""
    text = docs.read_text()
    blocks: list[str] = re.findall(r"^```\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    block = next((b for b in blocks if "INPUT_MAIL_FILTER(" in b and DOCS_SOCKET in b), None)
    if block is None:
        raise AssertionError(f"{docs}: no sendmail.mc block with INPUT_MAIL_FILTER and {DOCS_SOCKET}")
    return block.replace(DOCS_SOCKET, f"S={socket_spec}").rstrip("\n")


SERVICE_SWITCH = "hosts\tfiles\naliases\tfiles\n"


@dataclass(frozen=True)
class QueueEntry:
    """One envelope in Sendmail's queue: `kind` is the control file's first letter (q, h, Q, ...)."""

    queue_id: str
    kind: str
    control: str  # the control file's text


class SendmailInstance:
    """A private Sendmail daemon: config, queue, pid file and log under one temporary directory."""

    def __init__(self, tree: SendmailTree, *, milter_socket: str, smtp_port: int, sink_port: int,
                 dns_address: tuple[str, int], rcpt_domain: str = "rcpt.example",
                 hostname: str = "sendmail.e2e.test", queue_interval: str = "15s",
                 runs: Path = CACHE / "runs") -> None:
        self.tree = tree
        # Not under /tmp: Sendmail refuses files in a directory any of whose parents is group- or
        # world-writable ("World writable directory"), and the tests must not relax that check.
        runs.mkdir(parents=True, exist_ok=True)
        runs.chmod(0o755)
        # A short name: a unix socket under it must fit in sun_path (108 bytes).
        self.base = Path(tempfile.mkdtemp(prefix="sm-", dir=runs))
        self.base.chmod(0o755)
        self.queue_dir = self.base / "mqueue"
        self.cf = self.base / "sendmail.cf"
        self.milter_socket = milter_socket
        self.smtp_port = smtp_port
        self.sink_port = sink_port
        self.dns_address = dns_address
        self.rcpt_domain = rcpt_domain
        self.hostname = hostname
        self.queue_interval = queue_interval
        self.proc: subprocess.Popen[bytes] | None = None
        self.syslog: SyslogSink | None = None
        self._namespace: str | None = None

    # -- configuration -----------------------------------------------------------------

    def mc(self) -> str:
        return MC.format(base=self.base, hostname=self.hostname, sink_port=self.sink_port,
                         smtp_port=self.smtp_port, rcpt_domain=self.rcpt_domain,
                         milter=docs_milter_lines(self.milter_socket))

    def write_config(self) -> None:
        (self.base / "sendmail.mc").write_text(self.mc())
        built = _run(["m4", f"-D_CF_DIR_={self.tree.cf_dir}/", str(self.tree.cf_dir / "m4" / "cf.m4"),
                      str(self.base / "sendmail.mc")])
        if built.returncode != 0 or built.stderr.strip():
            raise RuntimeError(f"m4 failed to build sendmail.cf ({built.returncode}):\n{built.stderr}")
        self.cf.write_text(built.stdout)
        self.queue_dir.mkdir(mode=0o700)
        # sendmail.st: without it Sendmail logs "poststats: ... No such file" after every message.
        for name in ("aliases", "local-host-names", "relay-domains", "helpfile", "sendmail.st"):
            (self.base / name).write_text("")
        (self.base / "aliases").write_text("postmaster: root\nMAILER-DAEMON: postmaster\n")
        (self.base / "service.switch").write_text(SERVICE_SWITCH)
        short = socket.gethostname()
        hosts = f"127.0.0.1\tlocalhost {self.hostname} {short}\n::1\tlocalhost {self.hostname} {short}\n"
        (self.base / "hosts").write_text(hosts)
        (self.base / "etc-hosts").write_text(hosts)
        (self.base / "resolv.conf").write_text(
            f"nameserver {self.dns_address[0]}\noptions timeout:1 attempts:1\n")
        # Mount points for the device nodes Sendmail opens; /dev/log is ours.
        dev = self.base / "dev"
        dev.mkdir()
        for node in ("null", "zero", "random", "urandom"):
            (dev / node).touch()
        (dev / "log").symlink_to(self.base / "log.sock")

    def namespace_command(self, *args: str) -> list[str]:
        """`args` run in a private mount namespace with the test's resolv.conf, hosts and /dev/log."""
        b = shlex.quote(str(self.base))
        mounts = " && ".join(
            [f"mount --bind /dev/{n} {b}/dev/{n}" for n in ("null", "zero", "random", "urandom")]
            + [f"mount --rbind {b}/dev /dev", f"mount --bind {b}/resolv.conf /etc/resolv.conf",
               f"mount --bind {b}/etc-hosts /etc/hosts"])
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f'{mounts} && exec "$@"',
                "sendmail-ns", *args]

    def command(self, *args: str) -> list[str]:
        return self.namespace_command(str(self.tree.binary), "-C", str(self.cf), *args)

    def env(self) -> dict[str, str]:
        return dict(os.environ, **self.tree.env())

    # -- life cycle --------------------------------------------------------------------

    def start(self, wait: float = 20.0) -> SendmailInstance:
        self.write_config()
        self.syslog = SyslogSink(self.base / "log.sock")
        log = open(self.base / "daemon.out", "wb")  # noqa: SIM115 - lives as long as the process
        try:
            # -bD: the daemon stays in the foreground, so this Popen is the listener itself.
            self.proc = subprocess.Popen(self.command("-bD", f"-q{self.queue_interval}"), stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env(),
                                         start_new_session=True)
        finally:
            log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sendmail exited {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(OSError, smtplib.SMTPException):
                with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=5) as s:
                    s.noop()
                self._namespace = _mount_namespace(self.proc.pid)
                return self
            time.sleep(0.1)
        raise RuntimeError(f"sendmail on 127.0.0.1:{self.smtp_port} not up in {wait}s:\n{self.log()}")

    def run(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        """One sendmail command (mailq, a queue run, ...) against this instance's cf and queue."""
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout,
                              env=self.env(), stdin=subprocess.DEVNULL)

    def processes(self) -> list[int]:
        """Every process of this instance: the daemon's descendants and whatever else lives in
        its mount namespace (a child that was reparented after its parent exited)."""
        found: set[int] = set()
        if self.proc is not None and self.proc.poll() is None:
            found.add(self.proc.pid)
            todo = [self.proc.pid]
            while todo:
                kids = _children(todo.pop())
                todo.extend(k for k in kids if k not in found)
                found.update(kids)
        # Never the test's own namespace: that would match every process on the host.
        if self._namespace is not None and self._namespace != _mount_namespace(os.getpid()):
            for entry in Path("/proc").glob("[0-9]*"):
                if _mount_namespace(int(entry.name)) == self._namespace:
                    found.add(int(entry.name))
        found.discard(os.getpid())
        return sorted(found)

    def stop(self, wait: float = 10.0) -> None:
        """SIGTERM to every process of the instance, SIGKILL after `wait` s; bounded."""
        victims = self.processes()
        for sig, grace in ((signal.SIGTERM, wait), (signal.SIGKILL, 3.0)):
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                if self.proc is not None:
                    self.proc.poll()  # reap the daemon, or it stays a zombie that looks alive
                if not any(_alive(p) for p in victims):
                    break
                time.sleep(0.05)
            victims = [p for p in victims if _alive(p)]
            if not victims:
                break
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(2)

    def cleanup(self) -> None:
        if self.syslog is not None:
            self.syslog.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- what the tests look at --------------------------------------------------------

    def log(self, lines: int = 80) -> str:
        out = ""
        with contextlib.suppress(OSError):
            out = (self.base / "daemon.out").read_text(errors="replace")
        syslog = self.syslog.lines() if self.syslog is not None else []
        return tail("\n".join(syslog), lines) + (f"\n(daemon output)\n{tail(out)}" if out.strip() else "")

    def log_lines(self) -> list[str]:
        return self.syslog.lines() if self.syslog is not None else []

    def queue(self) -> list[QueueEntry]:
        """Envelopes in the queue directory by their control files; data files (df) are not listed."""
        entries: list[QueueEntry] = []
        for path in sorted(self.queue_dir.iterdir()):
            kind, qid = path.name[:1], path.name[2:]
            if path.name[1:2] == "f" and kind != "d":
                with contextlib.suppress(OSError):
                    entries.append(QueueEntry(qid, kind, path.read_text(errors="replace")))
        return entries

    def wait_log(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while True:
            for line in self.log_lines():
                if m := regex.search(line):
                    return m
            if time.monotonic() > deadline:
                raise AssertionError(f"no sendmail log line matching {pattern!r} within {timeout}s:\n"
                                     f"{self.log()}")
            time.sleep(0.05)


def _mount_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def wait_for(sink: SmtpSink, message_id: str, count: int = 1, timeout: float = 20.0) -> list[Received]:
    deadline = time.monotonic() + timeout
    while True:
        found = sink.with_id(message_id)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@contextlib.contextmanager
def running(instance: SendmailInstance) -> Iterator[SendmailInstance]:
    """The instance started, and stopped with its files removed however the block ends."""
    try:
        yield instance.start()
    finally:
        instance.stop()
        instance.cleanup()
