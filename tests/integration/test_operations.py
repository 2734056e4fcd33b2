"""What an operator meets: readiness, metrics, log formats, and faults around the socket."""

from __future__ import annotations

import json
import os
import pwd
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.dnsserver import DnsServer
from tests.integration.zones import example_org
from tests.mailfactory import make_message, rsa_key, sign
from tests.milterclient import ROOT, MilterProcess, MtaSession, free_port

DEFAULT = ROOT / "policies" / "default.toml"


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        yield server


def good() -> bytes:
    return sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())


def serve(cfg: Path, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authmilter", "serve", "-c", str(cfg)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# --- readiness -------------------------------------------------------------------------------


def test_sd_notify_ready_only_once_listening_then_reloading_and_stopping(tmp_path: Path,
                                                                           dns: DnsServer) -> None:
    notify_path = tmp_path / "notify.sock"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(notify_path))
    sink.settimeout(15)
    m = MilterProcess(tmp_path, dns_port=dns.port)
    try:
        m.start(env={"NOTIFY_SOCKET": str(notify_path)})
        assert sink.recv(100) == b"READY=1"
        # READY came after the socket was open: a connection now must succeed at once.
        MtaSession(m.address, timeout=2).close()
        assert m.proc is not None
        os.kill(m.proc.pid, signal.SIGHUP)
        assert sink.recv(100) == b"RELOADING=1"
        assert sink.recv(100) == b"READY=1"
        assert m.stop() == 0
        assert sink.recv(100) == b"STOPPING=1"
    finally:
        m.stop()
        sink.close()


# --- metrics ---------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


def test_metrics_counters_move_by_the_right_amounts(tmp_path: Path, dns: DnsServer) -> None:
    port = free_port()
    m = MilterProcess(tmp_path, dns_port=dns.port,
                      extra=f'policy = "{DEFAULT}"\n[metrics]\nlisten = "127.0.0.1:{port}"').start()
    try:
        before = scrape(port)
        with m.session(client_ip="192.0.2.10") as s:
            for i in range(3):
                s.message(good(), mail_from="alice@example.org", queue_id=f"G{i}")
        with m.session(client_ip="203.0.113.5") as s:
            for i in range(2):
                s.message(make_message(), mail_from="alice@example.org", queue_id=f"B{i}")
        after = scrape(port)
    finally:
        m.stop()

    def moved(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    assert moved('authmilter_messages_total{action="accept",stage="eom"}') == 3
    assert moved('authmilter_messages_total{action="reject",stage="eom"}') == 2
    assert moved('authmilter_results_total{method="dkim",result="pass"}') == 3
    assert moved('authmilter_results_total{method="dkim",result="none"}') == 2
    assert moved('authmilter_results_total{method="dmarc",result="pass"}') == 3
    assert moved('authmilter_results_total{method="dmarc",result="fail"}') == 2
    assert moved('authmilter_results_total{method="spf",result="fail"}') == 2
    assert moved("authmilter_message_seconds_count") == 5
    # The first message asked DNS; the other four were answered from the cache.
    assert moved("authmilter_dns_cache_hits_total") > 0
    assert sum(v for k, v in after.items() if k.startswith("authmilter_dns_lookup_seconds_count{")) >= 1
    assert moved('authmilter_dns_lookups_total{rdtype="TXT",status="ok"}') >= 1


def test_the_dashboard_and_the_readme_name_only_metrics_the_milter_exports(tmp_path: Path,
                                                                          dns: DnsServer) -> None:
    port = free_port()
    m = MilterProcess(tmp_path, dns_port=dns.port,
                      extra=f'policy = "{DEFAULT}"\n[metrics]\nlisten = "127.0.0.1:{port}"').start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        m.stop()
    # A counter's TYPE line names it with _total; prometheus-client adds a _created gauge beside it.
    families = {name.removesuffix("_total") for name in re.findall(r"^# TYPE (\S+) ", text, re.M)
                if not name.endswith("_created")}
    exported = families | {f + "_total" for f in families} | {
        f + suffix for f in families for suffix in ("_bucket", "_count", "_sum")}
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    named = {n for e in exprs for n in re.findall(r"authmilter_[a-z_]+", e)}
    assert len(named) >= 10 and named <= exported, sorted(named - exported)
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(authmilter_[a-z_]+)", readme))
    assert documented <= exported, sorted(documented - exported)
    # And every family is documented.
    undocumented = {f for f in families if f.startswith("authmilter_")} - {
        d.removesuffix("_total") for d in documented} - {"authmilter_dns_cache_misses"}
    assert not undocumented, sorted(undocumented)


def test_unreachable_metrics_port_is_logged_and_mail_still_served(tmp_path: Path, dns: DnsServer) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    m = MilterProcess(tmp_path, dns_port=dns.port, extra=f'[metrics]\nlisten = "127.0.0.1:{port}"')
    try:
        m.start()
        with m.session(client_ip="192.0.2.10") as s:
            assert s.message(good(), mail_from="alice@example.org").action == "accept"
        assert "metrics endpoint 127.0.0.1:" in m.log() and "serving mail without it" in m.log()
    finally:
        m.stop()
        taken.close()


# --- logs ------------------------------------------------------------------------------------


def test_json_log_line_per_message_without_secrets(tmp_path: Path, dns: DnsServer) -> None:
    m = MilterProcess(tmp_path, dns_port=dns.port, extra='log_format = "json"').start()
    try:
        with m.session(client_ip="192.0.2.10", helo="mail.example.org") as s:
            s.message(good(), mail_from="alice@example.org", queue_id="JSON1")
    finally:
        m.stop()
    records = [json.loads(line) for line in m.log().splitlines() if line.startswith("{")]
    msg = next(r for r in records if r.get("qid") == "JSON1")
    assert msg["msg"] == "message" and msg["level"] == "info"
    assert (msg["client"], msg["helo"], msg["from"], msg["author"]) == (
        "192.0.2.10", "mail.example.org", "alice@example.org", "example.org")
    assert (msg["spf"], msg["dkim"], msg["dmarc"], msg["action"]) == (
        "pass", "pass:example.org", "pass", "accept")
    text = m.log()
    assert "PRIVATE KEY" not in text and "See you." not in text  # no key material, no body


# --- socket faults ---------------------------------------------------------------------------


def config(tmp_path: Path, sock: str) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'socket = "{sock}"\n')
    return cfg


def test_port_already_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = serve(config(tmp_path, f"inet:{port}@127.0.0.1"))
    assert r.returncode == 1
    assert f"cannot listen on inet:{port}@127.0.0.1: address already in use" in r.stderr


def test_socket_path_that_is_a_regular_file_is_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "important.txt"
    path.write_text("keep me")
    r = serve(config(tmp_path, f"unix:{path}"))
    assert r.returncode == 1 and "exists and is not a socket" in r.stderr
    assert path.read_text() == "keep me"


def test_socket_path_with_a_live_listener_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "busy.sock"
    with socket.socket(socket.AF_UNIX) as other:
        other.bind(str(path))
        other.listen()
        r = serve(config(tmp_path, f"unix:{path}"))
    assert r.returncode == 1 and "another process is listening" in r.stderr


def test_stale_socket_is_replaced(tmp_path: Path, dns: DnsServer) -> None:
    path = tmp_path / "stale.sock"
    leftover = socket.socket(socket.AF_UNIX)
    leftover.bind(str(path))
    leftover.close()  # the file stays, nobody listens: as after a crash
    m = MilterProcess(tmp_path, dns_port=dns.port, socket_spec=f"unix:{path}").start()
    try:
        with m.session(client_ip="192.0.2.10") as s:
            assert s.message(good(), mail_from="alice@example.org").action == "accept"
    finally:
        m.stop()


def test_socket_in_a_missing_directory(tmp_path: Path) -> None:
    r = serve(config(tmp_path, f"unix:{tmp_path}/nope/m.sock"))
    assert r.returncode == 1 and "does not exist" in r.stderr


# --- hostile MTA side ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def milter(tmp_path_factory: pytest.TempPathFactory, dns: DnsServer) -> Iterator[MilterProcess]:
    m = MilterProcess(tmp_path_factory.mktemp("ops"), dns_port=dns.port).start()
    yield m
    m.stop()


def raw_frame(cmd: bytes, payload: bytes = b"") -> bytes:
    return struct.pack("!L", len(payload) + 1) + cmd + payload


def test_client_dropping_mid_data_leaves_the_service_serving(milter: MilterProcess) -> None:
    for _ in range(3):
        s = milter.session(client_ip="192.0.2.10")
        s.start(mail_from="alice@example.org")
        s.conn.send_ar("R", args=["<bob@example.com>"])
        s.conn.send_ar("T")
        s._frame("L", b"From\0 alice@example.org\0")
        s._frame("B", b"half a bo")  # no reply awaited: the MTA vanishes
        s.sock.close()
    time.sleep(0.2)
    with milter.session(client_ip="192.0.2.10") as s:
        assert s.message(good(), mail_from="alice@example.org").action == "accept"
    assert milter.proc is not None and milter.proc.poll() is None


def test_commands_out_of_order_get_a_defined_answer(milter: MilterProcess) -> None:
    s = milter.session(client_ip="192.0.2.10")
    # End of message before any MAIL FROM, then a body chunk, then garbage bytes.
    s.sock.sendall(raw_frame(b"E"))
    s.sock.settimeout(5)
    try:
        reply = s.sock.recv(100)
    except OSError:
        reply = b""
    s.sock.sendall(raw_frame(b"B", b"stray") + b"\xff\xff\xff\xffgarbage")
    s.sock.close()
    assert reply == b"" or len(reply) >= 5  # a reply frame or a closed connection, never a hang
    with milter.session(client_ip="192.0.2.10") as s2:
        assert s2.message(good(), mail_from="alice@example.org").action == "accept"
    assert milter.proc is not None and milter.proc.poll() is None


def test_syslog_target_sends_mail_facility_datagrams(tmp_path: Path, dns: DnsServer) -> None:
    path = tmp_path / "log.sock"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(path))
    sink.settimeout(10)
    m = MilterProcess(tmp_path, dns_port=dns.port,
                      extra=f'log_target = "syslog"\nsyslog_socket = "{path}"')
    try:
        m.start()
        with m.session(client_ip="192.0.2.10") as s:
            s.message(good(), mail_from="alice@example.org", queue_id="SYS1")
        deadline = time.monotonic() + 10
        line = b""
        while b"qid=SYS1" not in line and time.monotonic() < deadline:
            line = sink.recv(65536)
    finally:
        m.stop()
        sink.close()
    # <22>: facility mail (2) * 8 + severity info (6).
    assert line.startswith(b"<22>authmilter: INFO authmilter.milter: message qid=SYS1 "), line
    assert b"action=accept" in line


def test_start_up_warnings_go_through_the_configured_log_format(tmp_path: Path, dns: DnsServer) -> None:
    # A signing key that cannot be read is warned about while the app is built, before serving.
    (tmp_path / "signing.toml").write_text(
        '[keys.k]\ndomain = "example.com"\nselector = "s1"\nfile = "keys/missing.pem"\n'
        '[[sign]]\nmatch = ["example.com"]\nkeys = ["k"]\n')
    m = MilterProcess(tmp_path, dns_port=dns.port, extra='log_format = "json"\nsigning = "signing.toml"')
    try:
        m.start()
    finally:
        m.stop()
    lines = [line for line in m.log().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line, the warning included, is JSON
    warning = next(r for r in records if "key unavailable" in r["msg"])
    assert warning["level"] == "warning" and "time" in warning
    # And once more, at error level, with what it costs and whose access failed.
    me = pwd.getpwuid(os.geteuid()).pw_name
    error = next(r for r in records if r["level"] == "error")
    assert f"1 key(s) unavailable to this process (user {me}): k;" in error["msg"]
    assert "on_key_error = tempfail" in error["msg"]
