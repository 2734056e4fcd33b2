"""A private Postfix instance for end-to-end tests, and an SMTP client that reports every reply.

`ensure_installed()` installs the Debian package when /usr/sbin/postfix is missing.
`PostfixInstance` runs Postfix from its own config, queue and data directories under a
temporary directory (never /etc/postfix or /var/spool/postfix), with one smtpd on
127.0.0.1:<port>, every message passed to one milter, and mail for one test domain delivered
by virtual(8) into a Maildir the tests read.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from pathlib import Path

from tests.debian import apt_install, apt_would_remove, tail

POSTFIX = Path("/usr/sbin/postfix")
MASTER = Path("/usr/lib/postfix/sbin/master")  # Debian's daemon_directory
DEBCONF_PRESEED = b"postfix postfix/main_mailer_type select No configuration\n"
SINK_USER = "nobody"  # an existing unprivileged account: virtual(8) refuses to deliver as root
COMMAND_TIMEOUT = 30.0  # any single postfix(1) command


class PostfixUnavailable(RuntimeError):
    """Postfix is not installed and could not be installed."""


class PostfixClash(PostfixUnavailable):
    """Postfix is not installed, and installing it would remove another MTA: a reason to skip."""


def _listening(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _clash(packages: list[str]) -> PostfixClash:
    return PostfixClash(
        f"{POSTFIX} is missing, and installing Postfix would remove {', '.join(packages)} (Debian "
        "allows one MTA per machine, and this suite never replaces the one a machine has). Install "
        "postfix yourself, or run the suite on a host without another MTA; tests/e2e/test_sendmail.py "
        "needs no Postfix and still runs.")


def ensure_installed(timeout: float = 600.0) -> str:
    """Install Postfix if /usr/sbin/postfix is missing; returns what was done, for the log.

    Raises PostfixUnavailable with apt's own words when it cannot be installed (no network, an
    unknown package, another MTA that apt would have to remove).
    """
    if POSTFIX.exists():
        return "already installed"
    if os.geteuid() != 0:
        raise PostfixUnavailable(f"{POSTFIX} is missing and installing it needs root")
    # "No configuration": the package then writes no /etc/postfix/main.cf, so its own system
    # instance has nothing to run even where a service manager would start it. We never use it.
    subprocess.run(["debconf-set-selections"], input=DEBCONF_PRESEED,
                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), check=True,
                   capture_output=True, timeout=COMMAND_TIMEOUT)
    if clash := apt_would_remove(["postfix"]):
        raise _clash(clash)
    port25_before = _listening(25)
    # --no-remove: if Postfix would replace an installed MTA (exim4, ...), apt aborts instead of
    # removing it; this suite must not change which MTA the machine runs.
    try:
        apt_install(["postfix"], error=PostfixUnavailable, timeout=timeout, options=["--no-remove"])
    except PostfixUnavailable:
        # The package lists may only now be fresh enough for apt to see the conflict.
        if clash := apt_would_remove(["postfix"]):
            raise _clash(clash) from None
        raise
    if not POSTFIX.exists():
        raise PostfixUnavailable(f"apt-get install postfix succeeded but {POSTFIX} is missing")
    if not port25_before and _listening(25):
        # Debian's postinst may start the system instance where a service manager allows it; that
        # instance is none of ours (and port 25 is not used by these tests), so only say so.
        return "installed; NOTE: something now listens on 127.0.0.1:25 (the system Postfix?)"
    return "installed"


MASTER_CF = """\
# service  type  private unpriv chroot wakeup maxproc command
# chroot n everywhere: the instance lives under a temporary directory that has no chroot jail.
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
# unpriv n: virtual(8) starts as root so it can switch to the sink's owner for each delivery.
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

QUEUES = ("maildrop", "incoming", "active", "deferred", "hold")


@dataclass(frozen=True)
class Delivered:
    """One message as virtual(8) wrote it to the Maildir (LF line ends, as Maildir files have)."""

    path: Path
    raw: bytes

    def header_fields(self) -> list[tuple[str, str]]:
        """(name, value) of every header field in order; folded lines joined with the LF kept."""
        head = self.raw.split(b"\n\n", 1)[0].decode("utf-8", "replace")
        fields: list[tuple[str, str]] = []
        for line in head.split("\n"):
            if line[:1] in (" ", "\t") and fields:
                name, value = fields[-1]
                fields[-1] = (name, value + "\n" + line)
            elif line:
                name, _, value = line.partition(":")
                fields.append((name, value.strip()))
        return fields

    def headers(self, name: str) -> list[str]:
        return [v for n, v in self.header_fields() if n.lower() == name.lower()]

    @functools.cached_property
    def message_id(self) -> str:
        value = BytesHeaderParser().parsebytes(self.raw).get("Message-ID", "")
        return str(value).strip()


class PostfixInstance:
    """A private Postfix: config, queue, data, mail and log all under one temporary directory."""

    def __init__(self, *, milter_port: int, smtp_port: int, rcpt_domain: str = "rcpt.example",
                 myhostname: str = "postfix.e2e.test", milter_timeouts: tuple[int, int, int] = (5, 10, 20)
                 ) -> None:
        # Not pytest's tmp_path: that lives under /tmp/pytest-of-root (mode 0700), where neither
        # the postfix user (queue) nor the sink's owner (Maildir) could reach their directories.
        self.base = Path(tempfile.mkdtemp(prefix="authmilter-e2e-postfix-"))
        self.base.chmod(0o755)
        self.config_dir = self.base / "etc"
        self.queue_dir = self.base / "queue"
        self.data_dir = self.base / "data"
        self.mail_dir = self.base / "mail"
        self.sink = self.mail_dir / "sink"
        self.maillog_file = self.base / "maillog"
        self.smtp_port = smtp_port
        self.milter_port = milter_port
        self.rcpt_domain = rcpt_domain
        self.myhostname = myhostname
        self.milter_timeouts = milter_timeouts
        self.started = False
        self._seen: dict[Path, Delivered] = {}

    # -- configuration -----------------------------------------------------------------

    def main_cf(self) -> str:
        sink = pwd.getpwnam(SINK_USER)
        connect, command, content = self.milter_timeouts
        milter = f"inet:127.0.0.1:{self.milter_port}"
        return f"""\
compatibility_level = 3.6
config_directory = {self.config_dir}
queue_directory = {self.queue_dir}
data_directory = {self.data_dir}
mail_owner = postfix
setgid_group = postdrop
# Our own log file (postlogd), so a failing test can show what Postfix said.
maillog_file = {self.maillog_file}
maillog_file_prefixes = {self.base}
myhostname = {self.myhostname}
mydomain = e2e.test
myorigin = $myhostname
mydestination =
inet_interfaces = loopback-only
inet_protocols = ipv4
# All of 127/8: the tests present outside senders as other loopback addresses; relaying is not
# what is tested, and mail to the sink domain is accepted from anyone anyway.
mynetworks = 127.0.0.0/8
smtpd_recipient_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
# Mail for the test domain goes to one Maildir (trailing slash = Maildir), owned by an
# unprivileged account; everything else fails at once instead of leaving the machine.
virtual_mailbox_domains = {self.rcpt_domain}
virtual_mailbox_base = {self.mail_dir}
virtual_mailbox_maps = static:sink/
virtual_uid_maps = static:{sink.pw_uid}
virtual_gid_maps = static:{sink.pw_gid}
default_transport = error:the e2e Postfix delivers only to {self.rcpt_domain}
relay_transport = $default_transport
local_transport = $default_transport
local_recipient_maps =
alias_maps =
alias_database =
# No DNS by Postfix itself: only authmilter talks to the test DNS server.
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
# What the client sent is what the milter sees: no From/Date/Message-ID added for it.
always_add_missing_headers = no
local_header_rewrite_clients =
# The milter, for SMTP and for sendmail(1) submissions; if it cannot be reached, 4xx.
smtpd_milters = {milter}
non_smtpd_milters = {milter}
milter_default_action = tempfail
milter_protocol = 6
milter_connect_macros = j {{daemon_name}} {{daemon_addr}} v _
# {{auth_authen}} is what the policy's `authenticated` rule looks at.
milter_mail_macros = i {{auth_type}} {{auth_authen}} {{auth_author}}
    {{mail_addr}} {{mail_host}} {{mail_mailer}}
milter_connect_timeout = {connect}s
milter_command_timeout = {command}s
milter_content_timeout = {content}s
# No artificial slow-down when the tests send faster than virtual(8) delivers.
in_flow_delay = 0
smtpd_client_connection_rate_limit = 0
smtpd_tls_security_level = none
smtp_tls_security_level = none
biff = no
delay_warning_time = 0
"""

    def write_config(self) -> None:
        sink = pwd.getpwnam(SINK_USER)
        self.config_dir.mkdir()
        (self.config_dir / "main.cf").write_text(self.main_cf())
        (self.config_dir / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{self.smtp_port}".ljust(9)))
        self.queue_dir.mkdir()
        self.data_dir.mkdir()
        shutil.chown(self.data_dir, "postfix")
        self.data_dir.chmod(0o700)
        self.mail_dir.mkdir()
        os.chown(self.mail_dir, sink.pw_uid, sink.pw_gid)
        self.mail_dir.chmod(0o700)
        self.maillog_file.touch()

    # -- life cycle --------------------------------------------------------------------

    def postfix(self, *args: str, timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(POSTFIX), "-c", str(self.config_dir), *args], capture_output=True,
                              text=True, timeout=timeout)

    def start(self, wait: float = 20.0) -> PostfixInstance:
        self.write_config()
        # `check` runs post-install create-missing, which makes the queue's subdirectories with
        # their owners and modes, and stops on a fatal problem with a message. Not
        # `set-permissions`: it would also reset the ownership of Postfix's shared files in /usr.
        for step in (("check",), ("start",)):
            done = self.postfix(*step)
            if done.returncode != 0:
                raise RuntimeError(f"postfix {' '.join(step)} failed ({done.returncode}):\n"
                                   f"{done.stdout}{done.stderr}\n{self.maillog()}")
            self.started = self.started or step == ("start",)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, smtplib.SMTPException):
                with smtplib.SMTP("127.0.0.1", self.smtp_port, timeout=2) as s:
                    s.noop()
                return self
            time.sleep(0.1)
        raise RuntimeError(f"postfix smtpd on 127.0.0.1:{self.smtp_port} not up in {wait}s:\n"
                           f"{self.maillog()}")

    def sendmail(self, message: bytes, *, mail_from: str, rcpts: tuple[str, ...]) -> None:
        """Submit like a local program: sendmail(1) -> postdrop -> pickup -> non_smtpd_milters.
        Root may name a private config directory; others would need alternate_config_directories."""
        done = subprocess.run(["/usr/sbin/sendmail", "-C", str(self.config_dir), "-i", "-f", mail_from,
                               "--", *rcpts], input=message, capture_output=True, timeout=COMMAND_TIMEOUT)
        if done.returncode != 0:
            raise AssertionError(f"sendmail failed ({done.returncode}): {done.stderr!r}\n{self.maillog()}")

    def master_pid(self) -> int | None:
        """Our master's pid, from our own queue's pid file, if that process is a Postfix master:
        a stale pid file must not make us kill whatever process has the number now."""
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
            if Path(f"/proc/{pid}/exe").resolve() == MASTER.resolve():
                return pid
        except (OSError, ValueError, IndexError):
            pass
        return None

    def stop(self, wait: float = 15.0) -> None:
        """Stop the instance (bounded) and kill what is left; the files stay until cleanup()."""
        pid = self.master_pid()
        grace = 0.0  # a master we did not see start (a failed start) is killed at once
        if self.started:
            grace = wait
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.postfix("stop", timeout=wait)
        if pid is not None:
            _kill_tree(pid, grace)
        self.started = False

    def cleanup(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    # -- what the tests look at --------------------------------------------------------

    def maillog(self, lines: int = 60) -> str:
        try:
            return tail(self.maillog_file.read_text(errors="replace"), lines)
        except OSError:
            return "(no maillog)"

    def delivered(self) -> list[Delivered]:
        """Every message in the sink Maildir, oldest first."""
        found: list[Delivered] = []
        for sub in ("new", "cur"):
            d = self.sink / sub
            if not d.is_dir():
                continue
            for path in sorted(d.iterdir(), key=lambda p: p.stat().st_mtime_ns):
                if path not in self._seen:
                    self._seen[path] = Delivered(path, path.read_bytes())
                found.append(self._seen[path])
        return found

    def with_id(self, message_id: str) -> list[Delivered]:
        return [d for d in self.delivered() if d.message_id == message_id]

    def wait_delivered(self, message_id: str, count: int = 1, timeout: float = 20.0) -> list[Delivered]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.with_id(message_id)
            if len(found) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        if len(found) < count:
            raise AssertionError(f"{message_id}: {len(found)} of {count} delivered within {timeout}s; "
                                 f"queue: {self.queued()}\n{self.maillog()}")
        return found

    def queued(self) -> dict[str, list[str]]:
        """Queue ids per queue (maildrop, incoming, active, deferred, hold); read as root."""
        out: dict[str, list[str]] = {}
        for q in QUEUES:
            d = self.queue_dir / q
            if d.is_dir():
                ids = [p.name for p in d.rglob("*") if p.is_file()]
                if ids:
                    out[q] = ids
        return out

    def wait_queue_empty(self, timeout: float = 20.0, *, ignore_hold: bool = True) -> None:
        """Bounded wait until nothing is waiting for delivery: then every accepted message is in
        the Maildir (virtual(8) renames it into new/ before the queue file is removed)."""
        deadline = time.monotonic() + timeout
        while True:
            q = self.queued()
            if ignore_hold:
                q.pop("hold", None)
            if not q:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"queue not empty after {timeout}s: {q}\n{self.maillog()}")
            time.sleep(0.05)


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            # Field 4 is the parent pid; the command name in field 2 may contain spaces.
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes; its parent reaps it.
    with contextlib.suppress(OSError, IndexError):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _kill_tree(pid: int, grace: float) -> None:
    """Postfix's master and its children if still running after `grace` s: SIGTERM, then KILL."""
    deadline = time.monotonic() + grace
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _alive(pid):
        return
    victims = [pid, *_children(pid)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, sig)
        end = time.monotonic() + 3
        while any(_alive(p) for p in victims) and time.monotonic() < end:
            time.sleep(0.05)


# -- SMTP ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """The reply that ended a transaction: where it came and what the client saw."""

    stage: str  # "mail" | "rcpt" | "data" | "eom" (after the final dot) | "disconnect"
    code: int
    text: str  # everything after the code, enhanced status code first when the server sent one

    def __str__(self) -> str:
        return f"{self.code} {self.text} (at {self.stage})"


class SmtpClient:
    """One SMTP session from a chosen source address; `send()` as often as wanted."""

    def __init__(self, port: int, *, source_ip: str, helo: str, timeout: float = 60.0) -> None:
        # The timeout must outlast Postfix's milter timeouts, so that a slow milter shows as the
        # server's 4xx rather than as a client-side timeout.
        self.smtp = smtplib.SMTP("127.0.0.1", port, local_hostname=helo,
                                 source_address=(source_ip, 0), timeout=timeout)
        code, text = self.smtp.ehlo()
        if code != 250:
            raise AssertionError(f"EHLO refused: {code} {text!r}")

    def send(self, message: bytes, *, mail_from: str, rcpts: tuple[str, ...]) -> Reply:
        try:
            code, text = self.smtp.mail(mail_from)
            if code != 250:
                self.smtp.rset()
                return Reply("mail", code, text.decode())
            ok = 0
            first_refusal: Reply | None = None
            for rcpt in rcpts:
                code, text = self.smtp.rcpt(rcpt)
                if code in (250, 251):
                    ok += 1
                elif first_refusal is None:
                    first_refusal = Reply("rcpt", code, text.decode())
            if ok == 0:
                self.smtp.rset()
                assert first_refusal is not None
                return first_refusal
            code, text = self.smtp.docmd("DATA")
            if code != 354:
                self.smtp.rset()
                return Reply("data", code, text.decode())
            # smtplib's data() without the DATA command: it dot-stuffs and sends the final dot.
            self.smtp.send(_dot_stuff(message))
            code, text = self.smtp.getreply()
            return Reply("eom", code, text.decode())
        except smtplib.SMTPServerDisconnected as e:
            return Reply("disconnect", 421, str(e))

    def close(self) -> None:
        with contextlib.suppress(smtplib.SMTPException, OSError):
            self.smtp.quit()
        self.smtp.close()

    def __enter__(self) -> SmtpClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dot_stuff(message: bytes) -> bytes:
    data = message if message.endswith(b"\r\n") else message + b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"
