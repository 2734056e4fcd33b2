"""`workers = 2`: a supervisor and two worker processes behind one socket, seen from outside.

Which worker takes a connection is the kernel's choice, so tests that need both workers send
sessions until the log (where every line carries pid=N) shows both, within a fixed bound.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from miltertest import MilterError

from tests.dnsserver import DnsServer
from tests.integration.test_operations import scrape
from tests.integration.zones import example_org
from tests.mailfactory import make_message, rsa_key, sign
from tests.milterclient import ROOT, MilterProcess, MtaSession, Outcome, free_port

DEFAULT = ROOT / "policies" / "default.toml"
ENFORCE = """
[[rules]]
name = "dmarc-reject"
when = { dmarc = "fail", dmarc_policy = "reject" }
action = "reject"
reply = "dmarc_reject"
"""


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        server.add_zone(example_org())
        yield server


@pytest.fixture
def pools() -> Iterator[list[MilterProcess]]:
    """Started pools, stopped at the end, and any worker they leave behind killed."""
    started: list[MilterProcess] = []
    yield started
    for m in started:
        workers = children(m.proc.pid) if m.proc is not None else set()
        m.stop()
        for pid in workers:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def good() -> bytes:
    return sign(make_message(), domain="example.org", selector="rsa", key=rsa_key())


def spoof() -> bytes:
    return make_message()


def start_pool(pools: list[MilterProcess], workdir: Path, dns: DnsServer, *, extra: str = "",
               socket_spec: str | None = None, env: dict[str, str] | None = None,
               wait_ready: bool = True) -> MilterProcess:
    m = MilterProcess(workdir, dns_port=dns.port, extra=f"workers = 2\n{extra}", socket_spec=socket_spec)
    pools.append(m)
    m.start(env=env)
    if wait_ready:
        wait_for_log(m, "all 2 workers ready")
    return m


def until(what: str, cond: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def wait_for_log(m: MilterProcess, text: str, count: int = 1, timeout: float = 15.0) -> str:
    try:
        until(f"{count}x {text!r} in the log", lambda: m.log().count(text) >= count, timeout)
    except AssertionError as e:
        raise AssertionError(f"{e}:\n{m.log()[-4000:]}") from None
    return m.log()


def stat_field(pid: int, index: int) -> str | None:
    """A field of /proc/PID/stat after the command name (0 = state, 1 = ppid); None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()[index]


def alive(pid: int) -> bool:
    state = stat_field(pid, 0)
    return state is not None and state != "Z"


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and stat_field(int(entry), 1) == str(pid) and alive(int(entry)):
            found.add(int(entry))
    return found


def supervisor(m: MilterProcess) -> int:
    assert m.proc is not None
    return m.proc.pid


def handled_by(m: MilterProcess, qid: str) -> int:
    """The pid of the worker that logged the message with this queue id."""
    line = next(x for x in m.log().splitlines() if f" qid={qid} " in x)
    found = re.search(r" pid=(\d+)$", line)
    assert found, line
    return int(found.group(1))


def send(m: MilterProcess, message: bytes, qid: str, client_ip: str = "192.0.2.10") -> Outcome:
    with m.session(client_ip=client_ip, timeout=10) as s:
        return s.message(message, mail_from="alice@example.org", queue_id=qid)


def spoofs_until_both_workers(m: MilterProcess, workers: set[int], tag: str,
                              limit: int = 200) -> tuple[list[str], set[int]]:
    """Sequential spoofed sessions until every worker has handled one; their actions and pids."""
    actions: list[str] = []
    seen: set[int] = set()
    for i in range(limit):
        actions.append(send(m, spoof(), f"{tag}{i}", client_ip="203.0.113.5").action)
        seen.add(handled_by(m, f"{tag}{i}"))
        if seen >= workers and i >= 19:
            break
    return actions, seen


# --- serving ---------------------------------------------------------------------------------


def test_two_workers_share_concurrent_sessions_and_answer_correctly(
        tmp_path: Path, dns: DnsServer, pools: list[MilterProcess]) -> None:
    m = start_pool(pools, tmp_path, dns, extra=f'policy = "{DEFAULT}"')
    workers = children(supervisor(m))
    assert len(workers) == 2

    def one(i: int) -> tuple[str, str]:
        if i % 2:
            return "reject", send(m, spoof(), f"C{i}", client_ip="203.0.113.5").action
        return "accept", send(m, good(), f"C{i}").action

    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        results = list(pool.map(one, range(48), timeout=120))
    assert all(expected == got for expected, got in results), results
    pids = {handled_by(m, f"C{i}") for i in range(48)}
    assert pids == workers  # both workers served, and only workers (not the supervisor)
    assert f"pid={supervisor(m)}" in m.log()  # the supervisor's own lines are tagged too
    # One pid per line is the writer's; the worker a supervisor's line is about is worker_pid.
    log = m.log()
    assert all(f"started worker_pid={pid} pid={supervisor(m)}" in log for pid in workers), log
    assert not [line for line in log.splitlines() if re.sub(r"\b(worker_)?pid=\d+", "", line).count("pid")]
    # Each worker, and every thread libmilter started in it, keeps to one CPU of its own.
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) >= 2:
        pinned = [{frozenset(os.sched_getaffinity(int(t))) for t in os.listdir(f"/proc/{pid}/task")}
                  for pid in sorted(workers)]
        assert all(len(sets) == 1 and len(next(iter(sets))) == 1 for sets in pinned), pinned
        assert pinned[0] != pinned[1]


def test_pin_workers_false_leaves_the_scheduler_free(
        tmp_path: Path, dns: DnsServer, pools: list[MilterProcess]) -> None:
    m = start_pool(pools, tmp_path, dns, extra="pin_workers = false")
    for pid in children(supervisor(m)):
        assert os.sched_getaffinity(pid) == os.sched_getaffinity(0)
    assert "serving on CPU" not in m.log()


# --- reload ----------------------------------------------------------------------------------


def test_sighup_reaches_every_worker_and_a_broken_policy_changes_nothing(
        tmp_path: Path, dns: DnsServer, pools: list[MilterProcess]) -> None:
    policy = tmp_path / "p.toml"
    policy.write_text(ENFORCE.replace('action = "reject"', 'action = "reject"\nmonitor = true'))
    m = start_pool(pools, tmp_path, dns, extra=f'policy = "{policy}"')
    workers = children(supervisor(m))
    before, seen = spoofs_until_both_workers(m, workers, "B")
    assert seen == workers and set(before) == {"accept"}  # monitor only

    policy.write_text(ENFORCE)
    os.kill(supervisor(m), signal.SIGHUP)
    log = wait_for_log(m, "generation 2", count=3)  # the supervisor's check, then each worker's
    reloaded = {int(p) for p in re.findall(r"reloaded .* generation 2, .* pid=(\d+)", log)}
    assert reloaded == workers | {supervisor(m)}
    after, seen = spoofs_until_both_workers(m, workers, "A")
    assert seen == workers and set(after) == {"reject"}

    policy.write_text(ENFORCE.replace('action = "reject"', 'action = "rejekt"'))
    os.kill(supervisor(m), signal.SIGHUP)
    log = wait_for_log(m, "reload refused")
    still, seen = spoofs_until_both_workers(m, workers, "S")
    assert seen == workers and set(still) == {"reject"}  # generation 2 still in force everywhere
    refused = [x for x in m.log().splitlines() if "reload refused" in x]
    # Refused by the supervisor alone, with file:line; the workers were never asked.
    assert len(refused) == 1 and refused[0].endswith(f"pid={supervisor(m)}")
    assert f"{policy}:5" in refused[0] and "rejekt" in refused[0]
    assert "generation 3" not in m.log()
    assert children(supervisor(m)) == workers  # nobody exited on SIGHUP


# --- a worker dies ---------------------------------------------------------------------------


def test_killed_worker_is_replaced_while_sessions_keep_succeeding(
        tmp_path: Path, dns: DnsServer, pools: list[MilterProcess]) -> None:
    sock = tmp_path / "m.sock"
    m = start_pool(pools, tmp_path, dns, socket_spec=f"unix:{sock}")
    inode = sock.stat().st_ino
    workers = children(supervisor(m))
    victim = min(workers)

    # One MTA-like client sending session after session, from before the kill to well after it.
    results: list[tuple[float, bool, str]] = []
    done = threading.Event()

    def mta() -> None:
        for i in range(2000):
            if done.is_set():
                return
            started = time.monotonic()
            try:
                with MtaSession(str(sock), client_ip="192.0.2.10", timeout=10) as s:
                    action = s.message(good(), mail_from="alice@example.org", queue_id=f"K{i}").action
                results.append((started, action == "accept", action))
            except (OSError, AssertionError, MilterError) as e:  # cut off with its worker
                results.append((started, False, repr(e)))

    client = threading.Thread(target=mta, daemon=True)
    client.start()
    try:
        until("sessions before the kill", lambda: len(results) >= 5)
        os.kill(victim, signal.SIGKILL)
        until("the worker's death", lambda: not alive(victim), 5)
        dead_at = time.monotonic()
        log = wait_for_log(m, f"ended unexpectedly: killed by signal 9 (SIGKILL) worker_pid={victim} pid=")
        new = children(supervisor(m)) - workers
        until("a replacement", lambda: len(children(supervisor(m)) - workers) == 1)
        new = children(supervisor(m)) - workers
        log = wait_for_log(m, f"ready worker_pid={new.pop()} pid=")
        served_after = len(results)
        until("sessions after the replacement", lambda: len(results) >= served_after + 20, 30)
    finally:
        done.set()
        client.join(15)
    assert not client.is_alive()
    # The one session in flight on the killed worker may be cut off, as an MTA would see it
    # (it then applies milter_default_action); every session started after the death succeeds.
    before = [r for r in results if r[0] < dead_at]
    after = [r for r in results if r[0] >= dead_at]
    assert sum(not ok for _, ok, _ in before) <= 1, before
    assert after and all(ok for _, ok, _ in after), [r for r in after if not r[1]]
    assert sock.stat().st_ino == inode  # the same socket all along
    assert len(children(supervisor(m))) == 2 and m.proc is not None and m.proc.poll() is None
    assert "crash loop" not in log


def test_crash_loop_stops_the_supervisor_with_status_1(
        tmp_path: Path, dns: DnsServer, pools: list[MilterProcess]) -> None:
    m = start_pool(pools, tmp_path, dns)
    first = children(supervisor(m))
    # A real cause, no test hook: the supervisor's address space is capped just above what it
    # uses, which a fork inherits, so a new worker cannot map its libmilter thread's stack and
    # exits 1 at once; each replacement does the same. The running workers keep their limits.
    vm = next(int(line.split()[1]) for line in Path(f"/proc/{supervisor(m)}/status").read_text()
              .splitlines() if line.startswith("VmSize:"))
    cap = (vm + 4096) * 1024
    resource.prlimit(supervisor(m), resource.RLIMIT_AS, (cap, cap))
    os.kill(min(first), signal.SIGKILL)
    assert m.proc is not None
    rc = m.proc.wait(30)
    log = m.log()
    assert rc == 1, log[-4000:]
    assert "crash loop: 6 worker deaths within 10 s; stopping" in log
    assert "can't start new thread" in log
    assert len(re.findall(r"ended unexpectedly: exit status 1 ", log)) >= 5
    assert not any(alive(pid) for pid in first)


# --- stop ------------------------------------------------------------------------------------


def test_sigterm_finishes_sessions_in_flight_stops_every_worker_and_removes_the_socket(
        tmp_path: Path, dns: DnsServer, pools: list[MilterProcess]) -> None:
    sock = tmp_path / "m.sock"
    m = start_pool(pools, tmp_path, dns, socket_spec=f"unix:{sock}")
    workers = children(supervisor(m))
    assert len(workers) == 2
    assert send(m, good(), "T1").action == "accept"
    with m.session(client_ip="192.0.2.10", timeout=10) as in_flight:
        in_flight.start(mail_from="alice@example.org", queue_id="T2")
        os.kill(supervisor(m), signal.SIGTERM)
        wait_for_log(m, "stopping: finishing connections in flight", count=2)

        def refused() -> bool:
            try:
                MtaSession(str(sock), timeout=2).close()
            except OSError:
                return True
            return False

        until("new connections refused", refused, 10)
        # The session that was in flight when SIGTERM came is finished, not cut off.
        assert in_flight.finish(good(), queue_id="T2").action == "accept"
    assert m.proc is not None
    assert m.proc.wait(30) == 0
    assert not any(alive(pid) for pid in workers)
    assert not sock.exists()
    assert "authmilter: stopped" in m.log()


# --- systemd readiness ---------------------------------------------------------------------------


def test_sd_notify_ready_after_both_workers_then_reloading_and_stopping(
        tmp_path: Path, dns: DnsServer, pools: list[MilterProcess]) -> None:
    notify_path = tmp_path / "notify.sock"
    sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sink.bind(str(notify_path))
    sink.settimeout(15)
    try:
        m = start_pool(pools, tmp_path, dns, env={"NOTIFY_SOCKET": str(notify_path)}, wait_ready=False)
        assert sink.recv(100) == b"READY=1"
        # READY came once both workers were serving: both said so before it.
        assert len(re.findall(r"worker \d serving.* pid=", m.log())) == 2
        assert len(children(supervisor(m))) == 2
        MtaSession(m.address, timeout=2).close()
        os.kill(supervisor(m), signal.SIGHUP)
        assert sink.recv(100) == b"RELOADING=1"
        assert sink.recv(100) == b"READY=1"
        # The supervisor waited for each worker to confirm before it said READY again.
        assert m.log().count("generation 2") == 3
        assert m.stop() == 0
        assert sink.recv(100) == b"STOPPING=1"
        sink.settimeout(0.5)
        with pytest.raises(TimeoutError):
            print(sink.recv(100))  # workers never notify: nothing else came
    finally:
        sink.close()


# --- config ----------------------------------------------------------------------------------


def serve(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "authmilter", "serve", "-c", str(cfg), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize(("config", "args", "message"), [
    ("workers = 0\n", (), "workers: must be between 1 and 256, got 0"),
    ('workers = "many"\n', (), 'workers: expected a number of processes or "auto"'),
], ids=["zero", "word"])
def test_worker_settings_that_cannot_work_refuse_to_start(tmp_path: Path, config: str, args: tuple[str, ...],
                                                          message: str) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(config)
    r = serve(cfg, *args)
    assert r.returncode == 78 and message in r.stderr, r.stderr


def test_cli_workers_override_the_config(tmp_path: Path, dns: DnsServer) -> None:
    m = MilterProcess(tmp_path, dns_port=dns.port, extra="workers = 1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "authmilter", "serve", "-c", str(m.config), "--workers", "2"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        until("two workers", lambda: len(children(proc.pid)) == 2)
        workers = children(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "2 workers" in out and not any(alive(pid) for pid in workers)


# --- metrics ---------------------------------------------------------------------------------


def test_one_metrics_endpoint_counts_every_worker_and_the_dead(
        tmp_path: Path, dns: DnsServer, pools: list[MilterProcess]) -> None:
    port = free_port()
    m = start_pool(pools, tmp_path, dns,
                   extra=f'policy = "{DEFAULT}"\n[metrics]\nlisten = "127.0.0.1:{port}"')
    workers = children(supervisor(m))
    _, seen = spoofs_until_both_workers(m, workers, "M")
    assert seen == workers
    spoofed = sum(1 for line in m.log().splitlines() if " qid=M" in line and "action=reject" in line)
    for i in range(5):
        assert send(m, good(), f"G{i}").action == "accept"
    # Scrapes land on either worker; each must show the sum over both.
    for _ in range(6):
        values = scrape(port)
        assert values['authmilter_messages_total{action="reject",stage="eom"}'] == spoofed
        assert values['authmilter_messages_total{action="accept",stage="eom"}'] == 5
        assert values['authmilter_rule_decisions_total{action="reject",rule="dmarc-reject"}'] == spoofed
        assert values["authmilter_message_seconds_count"] == spoofed + 5
        assert values['authmilter_results_total{method="dkim",result="pass"}'] == 5
    # The cache's own counters reach the endpoint within about a second of each worker's sync.
    until("cache hits synced", lambda: scrape(port).get("authmilter_dns_cache_hits_total", 0) > 0)
    # A worker that dies takes none of the counts with it; its replacement adds to them.
    victim = sorted(workers)[0]
    os.kill(victim, signal.SIGKILL)
    until("a replacement worker", lambda: len(children(supervisor(m)) - workers) == 1)
    (replacement,) = children(supervisor(m)) - workers
    wait_for_log(m, f"ready worker_pid={replacement} pid=")
    assert scrape(port)['authmilter_messages_total{action="accept",stage="eom"}'] == 5
    assert send(m, good(), "G9").action == "accept"
    assert scrape(port)['authmilter_messages_total{action="accept",stage="eom"}'] == 6
