"""The Debian package, end to end: build it, install it into a fresh Debian 12, run it, purge it.

One bookworm root per module (tests/package/debianroot.py: debootstrap --variant=minbase, with
systemd folded in, from the mirror the host's apt uses). `apt-get install ./authmilter_*.deb`
runs in that root under `systemd-nspawn` (systemd not running there, as in a chroot: postinst
enables the unit but does not start it), so the package's Depends come from the mirror as they
would on a real machine.

`systemctl start authmilter` is then shown for real: the root is booted with `systemd-nspawn
--boot` and commands are run in it with nsenter. The milter must answer an MTA's option
negotiation, connect and HELO on its unix socket, reached from the host through the container's
/proc/PID/root. Afterwards the package is removed, then purged, and nothing of it may be left.

Needs root, and the network to reach the Debian mirror; it is skipped, saying which, without.
"""

from __future__ import annotations

import gzip
import os
import pwd
import re
import shutil
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer
from tests.milterclient import MtaSession
from tests.package.debianroot import APT_TIMEOUT, DebianRoot, fresh_root, host_mirror_or_skip, host_run
from tests.zoneresolver import zone_text

ROOT = Path(__file__).resolve().parents[2]
UNIT = "authmilter.service"
SOCKET = "/run/authmilter/authmilter.sock"

BUILD_TIMEOUT = 600.0

# What `make deb` builds from: a .deb older than any of these is rebuilt.
SOURCES = ("authmilter", "packaging", "docs/man", "systemd", "etc", "policies", "pyproject.toml")


def newest_deb() -> Path | None:
    """dist/'s .deb for this version if no source it is built from is newer."""
    arch = host_run(["dpkg", "--print-architecture"]).stdout.strip()
    version = re.search(r'^version\s*=\s*"([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version, "pyproject.toml has no version"
    debs = sorted((ROOT / "dist").glob(f"authmilter_{version.group(1)}-*_{arch}.deb"),
                  key=lambda p: p.stat().st_mtime)
    if not debs:
        return None
    built = debs[-1].stat().st_mtime
    for name in SOURCES:
        path = ROOT / name
        files = [path] if path.is_file() else [p for p in path.rglob("*")
                                                 if p.is_file() and "__pycache__" not in p.parts]
        if any(f.stat().st_mtime > built for f in files):
            return None
    return debs[-1]


def build_deb() -> Path:
    deb = newest_deb()
    if deb is None:
        host_run(["make", "-C", str(ROOT), "--no-print-directory", "deb"], timeout=BUILD_TIMEOUT)
        deb = newest_deb()
    assert deb is not None, "make deb built no dist/authmilter_*.deb"
    return deb


@pytest.fixture(scope="module")
def debian_root() -> Iterator[DebianRoot]:
    mirror = host_mirror_or_skip("to build or install the package")
    started = time.monotonic()
    deb = build_deb()
    timings = {"build": time.monotonic() - started}
    with fresh_root(mirror, "authmilter-deb-test.", timings, started=started) as root:
        t = time.monotonic()
        shutil.copy2(deb, root.file(f"/root/{deb.name}"))
        root.run("apt-get", "-o", "DPkg::Lock::Timeout=60", "install", "-y", "-q",
                 "--no-install-recommends", f"/root/{deb.name}", timeout=APT_TIMEOUT)
        root.file(f"/root/{deb.name}").unlink()
        timings["install"] = time.monotonic() - t
        yield root


# --- the tests -------------------------------------------------------------------------------------

def test_installed_files_owners_and_modes(debian_root: DebianRoot) -> None:
    r = debian_root
    status = r.run("dpkg-query", "-W", "-f", "${Status} ${Version}", "authmilter").stdout
    assert status.startswith("install ok installed"), status

    user = r.run("getent", "passwd", "authmilter").stdout.split(":")
    assert user[5] == "/var/lib/authmilter" and user[6].strip() in ("/usr/sbin/nologin", "/sbin/nologin")
    assert r.run("getent", "group", "authmilter").stdout.startswith("authmilter:")

    assert r.owner("/etc/authmilter") == ("root", "authmilter", 0o750)
    assert r.owner("/etc/authmilter/policies") == ("root", "authmilter", 0o750)
    for conf in ("/etc/authmilter/authmilter.toml", "/etc/authmilter/policies/default.toml"):
        assert r.owner(conf) == ("root", "authmilter", 0o640), conf
    assert r.owner("/var/lib/authmilter") == ("authmilter", "authmilter", 0o700)
    conffiles = r.file("/var/lib/dpkg/info/authmilter.conffiles").read_text().split()
    assert conffiles == ["/etc/authmilter/authmilter.toml", "/etc/authmilter/policies/default.toml"]

    config = r.file("/etc/authmilter/authmilter.toml").read_text()
    assert 'policy = ["/etc/authmilter/policies/default.toml"]' in config
    assert f'socket = "unix:{SOCKET}"' in config
    assert 'path = "/var/lib/authmilter/state.db"' in config

    for unit in ("authmilter.service", "authmilter-report.service", "authmilter-report.timer"):
        assert r.file(f"/lib/systemd/system/{unit}").read_bytes() == (ROOT / "systemd" / unit).read_bytes()
    assert r.file("/usr/lib/sysusers.d/authmilter.conf").read_bytes() == \
        (ROOT / "systemd/authmilter.sysusers").read_bytes()
    # Enabled offline by postinst, as a boot would then start it.
    assert r.file("/etc/systemd/system/multi-user.target.wants/authmilter.service").is_symlink()

    for page, source in (("man8/authmilter.8.gz", "authmilter.8"),
                         ("man5/authmilter.toml.5.gz", "authmilter.toml.5")):
        assert gzip.decompress(r.file(f"/usr/share/man/{page}").read_bytes()) == \
            (ROOT / "docs/man" / source).read_bytes()
    for doc in ("copyright", "changelog.Debian.gz"):
        assert r.file(f"/usr/share/doc/authmilter/{doc}").is_file()

    assert os.readlink(r.file("/usr/sbin/authmilter")) == "/opt/authmilter/venv/bin/authmilter"
    venv = r.file("/opt/authmilter/venv")
    assert (venv / "bin/authmilter").read_text().startswith("#!/opt/authmilter/venv/bin/python\n")
    assert "/opt/authmilter/venv" in (venv / "pyvenv.cfg").read_text()
    # Byte code made by postinst, naming the installed path; no test tools, no pip.
    site = next((venv / "lib").glob("python3.*/site-packages"))
    assert list((site / "authmilter").glob("__pycache__/cli.*.pyc"))
    assert not list(site.glob("pytest*")) and not list(site.glob("pip")) and not list(site.glob("mypy*"))
    leftovers = host_run(["grep", "-rlI", "authmilter-deb.", str(venv)], check=False).stdout
    assert not leftovers, f"files naming the build's staging path:\n{leftovers}"


def scratch_config(r: DebianRoot, dns: DnsServer, name: str, top: str = "") -> Path:
    """/srv/package-test/NAME: the installed config with DNS from `dns` (and `top` put first)."""
    config = r.file("/etc/authmilter/authmilter.toml").read_text()
    config = config.replace("nameservers = []", 'nameservers = ["127.0.0.1"]', 1)
    config = re.sub(r"^port = 53$", f"port = {dns.port}", config, count=1, flags=re.M)
    assert f"port = {dns.port}" in config
    # Not /tmp, which nspawn covers with a tmpfs of its own.
    scratch = r.file("/srv/package-test")
    scratch.mkdir(mode=0o755, exist_ok=True)
    (scratch / name).write_text(top + config)
    (scratch / name).chmod(0o644)
    return scratch


SIGNING = """[keys.k1]
domain = "example.org"
selector = "s1"
file = "/etc/authmilter/keys/example.org.s1.pem"

[keys.k2]
domain = "example.org"
selector = "s2"
file = "/etc/authmilter/keys/example.org.s2.pem"

[[sign]]
match = ["example.org"]
keys = ["k1", "k2"]
"""


def test_keys_are_made_and_checked_for_the_service_account(debian_root: DebianRoot) -> None:
    """Issue 16's operator: genkey as root into /etc/authmilter/keys, as docs/signing.md says,
    must give a key the service can read; testkey must check as the service; and a key only root
    can read must be reported at start-up at error level, not just warned about."""
    r = debian_root
    made = r.run("authmilter", "genkey", "--domain", "example.org", "--selector", "s1",
                 "--out", "/etc/authmilter/keys")
    assert "owner authmilter, mode 0600" in made.stderr and "warning" not in made.stderr, made.stderr
    assert r.owner("/etc/authmilter/keys/example.org.s1.pem") == ("authmilter", "authmilter", 0o600)
    assert r.owner("/etc/authmilter/keys") == ("root", "authmilter", 0o750)
    # What the operator of the issue had: a key root made for itself.
    roots = r.run("authmilter", "genkey", "--domain", "example.org", "--selector", "s2", "--user", "root",
                  "--out", "/etc/authmilter/keys")
    assert r.owner("/etc/authmilter/keys/example.org.s2.pem") == ("root", "root", 0o600)
    records = {f"{sel}._domainkey": "TXT " + " ".join(f'"{t}"' for t in re.findall(r'"([^"]*)"', out.stdout))
               for sel, out in (("s1", made), ("s2", roots))}
    signing = r.file("/etc/authmilter/signing.toml")
    signing.write_text(SIGNING)
    group = {name: gid for gid, name in r.ids("group").items()}["authmilter"]
    os.chown(signing, 0, group)
    signing.chmod(0o640)
    with DnsServer([zone_text("example.org", records)]) as dns:
        scratch = scratch_config(r, dns, "keys.toml", top='signing = "/etc/authmilter/signing.toml"\n')
        tested = r.run("authmilter", "testkey", "-c", "/srv/package-test/keys.toml", check=False)
    assert tested.returncode == 1, tested.stdout + tested.stderr
    assert "ok k1: s1._domainkey.example.org: published key matches" in tested.stdout, tested.stdout
    assert ("FAIL k2: the milter's account authmilter cannot read /etc/authmilter/keys/example.org.s2.pem: "
            "Permission denied") in tested.stdout, tested.stdout
    # The service, started with that signing file: up, but saying at error level what is wrong.
    installed = r.file("/etc/authmilter/authmilter.toml")
    original = installed.read_text()
    installed.write_text('signing = "/etc/authmilter/signing.toml"\n' + original)
    r.boot()
    try:
        r.exec_booted("systemctl", "restart", UNIT, timeout=60)
        assert r.exec_booted("systemctl", "is-active", UNIT).stdout.strip() == "active"
        errors = r.exec_booted("journalctl", "--no-pager", "-p", "err", "-u", UNIT, check=False).stdout
        assert ("signing: 1 key(s) unavailable to this process (user authmilter): k2; mail they would "
                "sign gets on_key_error = tempfail") in errors, errors
    finally:
        r.shutdown()
        installed.write_text(original)
        signing.unlink()
        shutil.rmtree(scratch)
        shutil.rmtree(r.file("/etc/authmilter/keys"))


def test_check_command_in_root(debian_root: DebianRoot) -> None:
    """`authmilter check` as user authmilter, with the installed config and policy, DNS from a
    local server (the container shares the host's network)."""
    r = debian_root
    zone = zone_text("example.org", {
        "@": ['TXT "v=spf1 ip4:192.0.2.1 -all"'],
        "_dmarc": 'TXT "v=DMARC1; p=none"',
    })
    with DnsServer([zone]) as dns:
        scratch = scratch_config(r, dns, "check.toml")
        message = ("From: alice@example.org\r\nTo: bob@example.com\r\nSubject: package test\r\n"
                   "Date: Mon, 1 Dec 2025 10:00:00 +0000\r\nMessage-ID: <pkg-test@example.org>\r\n"
                   "\r\nhello\r\n")
        (scratch / "message.eml").write_text(message)
        (scratch / "message.eml").chmod(0o644)
        done = r.run("authmilter", "check", "-c", "/srv/package-test/check.toml", "--client-ip", "192.0.2.1",
                     "--helo", "mail.example.org", "--mail-from", "alice@example.org",
                     "--rcpt", "bob@example.com", "/srv/package-test/message.eml", user="authmilter")
    assert "spf=pass" in done.stdout and "dmarc=pass" in done.stdout, done.stdout
    assert "action: accept" in done.stdout, done.stdout
    lint = r.run("authmilter", "policy", "lint", "-c", "/etc/authmilter/authmilter.toml", user="authmilter")
    assert lint.stdout.startswith("ok:"), lint.stdout
    shutil.rmtree(scratch)


def test_unit_verifies(debian_root: DebianRoot) -> None:
    done = debian_root.run("systemd-analyze", "verify", f"/lib/systemd/system/{UNIT}",
                           "/lib/systemd/system/authmilter-report.service",
                           "/lib/systemd/system/authmilter-report.timer", check=False)
    # nspawn's own complaint when it leaves a container on this host's /run, not the unit's.
    complaints = [line for line in done.stderr.splitlines()
                  if line.strip() and "nspawn/propagate" not in line]
    assert done.returncode == 0 and not complaints, done.stdout + done.stderr


def test_systemctl_start_runs_the_milter(debian_root: DebianRoot) -> None:
    """Booted root: the enabled unit came up at boot; stop and `systemctl start` it again, it
    answers an MTA on its socket, reloads, and runs as user authmilter."""
    r = debian_root
    r.boot()
    try:
        r.exec_booted("systemctl", "stop", UNIT)
        assert r.exec_booted("systemctl", "is-active", UNIT, check=False).stdout.strip() == "inactive"
        # Type=notify: start returns only once the milter said READY=1, that is, it listens.
        started = r.exec_booted("systemctl", "start", UNIT, timeout=60, check=False)
        status = r.exec_booted("systemctl", "status", "--no-pager", "-l", UNIT, check=False).stdout
        journal = r.exec_booted("journalctl", "--no-pager", "-n", "30", "-u", UNIT, check=False).stdout
        assert started.returncode == 0, f"{started.stderr}\n{status}\n{journal}"
        assert r.exec_booted("systemctl", "is-active", UNIT).stdout.strip() == "active"
        main_pid = int(r.exec_booted("systemctl", "show", "-P", "MainPID", UNIT).stdout)
        assert main_pid > 0
        init = r.init_pid()
        assert init is not None
        # The socket, as the MTA would meet it, reached through the container's own file system.
        sock = f"/proc/{init}/root{SOCKET}"
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o007 == 0
        # The container's uids are the host's (no user namespace): the name comes from its passwd.
        assert r.ids("passwd").get(st.st_uid) == "authmilter"
        with MtaSession(sock, timeout=20.0) as mta:
            # Option negotiation passed (the milter asked for header changes), then connect and HELO.
            assert mta.actions and mta.protocol
        r.exec_booted("systemctl", "reload", UNIT, timeout=60)
        assert r.exec_booted("systemctl", "is-active", UNIT).stdout.strip() == "active"
        journal = r.exec_booted("journalctl", "--no-pager", "-u", UNIT, check=False).stdout
        assert "starting on unix:" in journal, journal
        assert pwd.getpwuid(0).pw_name == "root"  # the test's own view is the host's
    finally:
        r.shutdown()


def test_remove_then_purge_leaves_nothing(debian_root: DebianRoot) -> None:
    r = debian_root
    r.run("apt-get", "remove", "-y", "-q", "authmilter", timeout=APT_TIMEOUT)
    # Removed, not purged: config stays, the program (and the byte code postinst made) goes.
    assert r.file("/etc/authmilter/authmilter.toml").is_file()
    assert not r.file("/opt/authmilter/venv").exists(), host_run(["find", str(r.file("/opt/authmilter"))],
                                                             check=False).stdout
    assert not r.file("/usr/sbin/authmilter").is_symlink()

    r.run("apt-get", "purge", "-y", "-q", "authmilter", timeout=APT_TIMEOUT)
    for gone in ("/etc/authmilter", "/opt/authmilter", "/var/lib/authmilter", "/usr/share/doc/authmilter",
                 "/usr/lib/sysusers.d/authmilter.conf", "/usr/share/man/man8/authmilter.8.gz",
                 "/usr/share/man/man5/authmilter.toml.5.gz", "/usr/sbin/authmilter"):
        assert not r.file(gone).exists() and not r.file(gone).is_symlink(), gone
    assert not list(r.file("/lib/systemd/system").glob("authmilter*"))
    assert not list(r.file("/var/lib/dpkg/info").glob("authmilter*"))
    stray = host_run(["find", str(r.file("/etc/systemd")), str(r.file("/var/lib/systemd")),
                  "-name", "*authmilter*"], check=False).stdout
    assert not stray, stray
    known = r.run("dpkg-query", "-W", "authmilter", check=False)
    assert known.returncode != 0, known.stdout
    # Kept on purpose, as Debian policy advises (postrm says why).
    assert r.run("getent", "passwd", "authmilter", check=False).returncode == 0
