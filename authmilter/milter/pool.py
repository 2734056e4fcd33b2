"""Worker processes behind one milter socket, so that the service is not capped at one core.

A Python milter on libmilter serves every connection in one process, and the GIL lets one thread
at a time run Python. With `workers` > 1 `serve` becomes a supervisor instead:

* It has loaded config, policies and keys already (the CLI exits 78 on any error), registers the
  callbacks and opens the milter socket once, with the checks of `open_socket`.
* It forks the workers. libmilter keeps the socket in a static variable and smfi_main() serves an
  already-open socket instead of opening one, so each worker runs libmilter's own accept loop on
  the inherited socket, and the kernel gives each new connection to one of them.
* It never runs libmilter's loop and never starts a thread: fork() copies only the calling thread,
  and a lock that another thread held at that moment would stay locked in the child forever.

The supervisor is what systemd sees (MAINPID) and the only process that speaks sd_notify: READY=1
once every worker has said over the status pipe that it serves; RELOADING=1 / READY=1 around a
SIGHUP, which it validates itself before it passes it on; STOPPING=1 on SIGTERM or SIGINT. A
worker that dies is logged and replaced from the supervisor's current config, the socket staying
open all along; more than `CRASH_LIMIT` deaths within `CRASH_WINDOW` seconds stop the service
with exit status 1 rather than fork for ever.

Each worker has its own DNS cache (a copy-on-write copy of the supervisor's, empty at start): a
cache shared between processes would need shared memory or an outside store, and N caches cost at
most N - 1 extra lookups per name and TTL.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import select
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import NoReturn

from authmilter.app import AppHolder
from authmilter.milter.adapter import (
    KICK_SIGNAL,
    AuthMilter,
    LibmilterThread,
    ListenError,
    flush_history,
    open_shared_socket,
    prepare,
    reload_app,
)
from authmilter.milter.sdnotify import notify
from authmilter.observe.metrics import open_metrics_socket, serve_metrics_on, worker_gone

log = logging.getLogger("authmilter.pool")

CRASH_LIMIT = 5  # deaths tolerated within CRASH_WINDOW; one more and the supervisor gives up
CRASH_WINDOW = 10.0
STOP_TIMEOUT = 30.0  # for workers to finish their connections after SIGTERM; then SIGKILL
RELOAD_TIMEOUT = 30.0  # for workers to confirm a reload before READY=1 is sent anyway
_TICK = 1.0  # the longest the supervisor sleeps: a lost wake-up costs at most this much
# Held back across fork() until the child has its own handlers, so that a signal sent to a new
# worker in that instant is neither lost nor handled by the supervisor's code in the child.
_HELD = {signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}


class _PidField(logging.Filter):
    """Adds pid=N to every line: all processes share one stderr, which journald attributes to
    the supervisor, so the pid in the line is what tells the workers apart."""

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None) or {}
        record.fields = {**fields, "pid": os.getpid()}
        return True


def _about(pid: int) -> dict[str, dict[str, int]]:
    """The worker a supervisor's line is about, as its own field: `pid` is always the writer's."""
    return {"fields": {"worker_pid": pid}}


def tag_log_lines() -> None:
    """Put the pid field on every handler; again after each `setup_logging`, which replaces them."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _PidField) for f in handler.filters):
            handler.addFilter(_PidField())


def _notify(state: str) -> None:
    try:
        notify(state)
    except OSError as e:
        log.warning("sd_notify %s failed: %s", state, e)


def _pipe() -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    return r, w


def _drain(fd: int) -> bytes:
    data = b""
    while True:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            return data
        if not chunk:
            return data
        data += chunk


def _wait_readable(fds: list[int], timeout: float) -> list[int]:
    try:
        readable, _, _ = select.select(fds, [], [], max(0.0, timeout))
    except InterruptedError:  # only without a wakeup fd; PEP 475 retries otherwise
        return []
    return readable


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = str(sig)
        return f"killed by signal {sig} ({name})"
    return f"exit status {os.waitstatus_to_exitcode(status)}"


@dataclass
class _Worker:
    slot: int
    pid: int
    ready: bool = False


class Supervisor:
    def __init__(self, holder: AppHolder, count: int) -> None:
        self.holder = holder
        self.count = count
        self.workers: dict[int, _Worker] = {}
        self.missing: set[int] = set(range(1, count + 1))  # slots to (re)fork
        self.deaths: collections.deque[float] = collections.deque()
        self.signals: collections.deque[int] = collections.deque()
        self.ready_sent = False
        self.reload_waiting: set[int] = set()
        self.reload_deadline = 0.0
        self.stopping = False
        self.rc: int | None = None  # set when the supervisor has decided to stop
        self.listen_fd = -1
        self.status_r = self.status_w = -1
        self.lifeline_r = self.lifeline_w = -1
        self.wake_r = self.wake_w = -1
        self.unix_path: str | None = None
        self.unix_id: tuple[int, int] | None = None
        self.metrics_sock: socket.socket | None = None
        self.workers_setting = holder.current.config.workers
        # Worker N runs on cpus[(N - 1) % len(cpus)]; empty: not pinned.
        self.cpus: list[int] = []
        if holder.current.config.pin_workers:
            try:
                self.cpus = sorted(os.sched_getaffinity(0))
            except (AttributeError, OSError):
                self.cpus = []
        self._status_buf = b""

    # --- start -------------------------------------------------------------------------------

    def run(self) -> int:
        if threading.active_count() != 1:
            log.error("internal error: %d threads before fork; refusing to start workers",
                      threading.active_count())
            return 1
        config = self.holder.current.config
        prepare(self.holder)
        try:
            self.listen_fd = open_shared_socket(config.socket, config.milter_timeout)
        except ListenError as e:
            log.error("%s", e)
            return 1
        if config.socket.startswith(("unix:", "local:")):
            self.unix_path = config.socket.split(":", 1)[1]
            st = os.stat(self.unix_path)
            self.unix_id = (st.st_dev, st.st_ino)
        tag_log_lines()
        metrics = self.holder.current.metrics
        if metrics is not None:
            # Opened here, once: a port in use is reported at start, and a worker that dies
            # takes no scrape with it.
            self.metrics_sock = open_metrics_socket(config.metrics_listen)
            if self.metrics_sock is not None:
                log.info("metrics on http://%s/metrics, counting every worker", config.metrics_listen)
        # Workers write "ready PID" / "reloaded PID OK" lines; one write() of a short line into a
        # pipe is atomic, so lines from several workers never mix.
        self.status_r, self.status_w = _pipe()
        # Only the supervisor holds the write end: when it is gone, however it died, the workers
        # read end-of-file and stop, instead of holding the socket with nobody to replace them.
        self.lifeline_r, self.lifeline_w = _pipe()
        self.wake_r, self.wake_w = _pipe()
        for handled in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(handled, self._on_signal)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        log.info("supervisor listening on %s; starting %d workers", config.socket, self.count)
        return self._loop()

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)  # handled in the loop: nothing here may block or fork

    # --- the loop ----------------------------------------------------------------------------

    def _loop(self) -> int:
        while self.rc is None:
            self._spawn_missing()
            timeout = _TICK
            if self.reload_waiting:
                timeout = min(timeout, self.reload_deadline - time.monotonic())
            readable = _wait_readable([self.wake_r, self.status_r], timeout)
            if self.wake_r in readable:
                _drain(self.wake_r)
            if self.status_r in readable:
                self._read_status()
            # Signals first: a SIGTERM or Ctrl-C that reached the workers too (systemd signals
            # the whole cgroup) makes their exits expected, not deaths to replace.
            self._handle_signals()
            self._reap()
            self._check_reloaded()
            if not self.ready_sent and self.rc is None and len(self.workers) == self.count and all(
                    w.ready for w in self.workers.values()):
                self.ready_sent = True
                log.info("all %d workers ready: %s", self.count,
                         " ".join(str(pid) for pid in sorted(self.workers)))
                _notify("READY=1")
        return self._shutdown(self.rc)

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.popleft()
            if sig in (signal.SIGTERM, signal.SIGINT):
                log.info("stopping: %s", signal.Signals(sig).name)
                self.rc = 0
            elif sig == signal.SIGHUP and self.rc is None:
                self._reload()

    # --- workers -----------------------------------------------------------------------------

    def _spawn_missing(self) -> None:
        for slot in sorted(self.missing):
            if self.rc is not None:
                return
            signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
            try:
                pid = os.fork()
            except OSError as e:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
                log.error("cannot start worker %d: %s", slot, e)
                self._count_death()  # retried on the next tick; the crash limit bounds it
                continue
            if pid == 0:
                self._child(slot)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
            self.missing.discard(slot)
            self.workers[pid] = _Worker(slot, pid)
            log.info("worker %d started", slot, extra=_about(pid))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if worker is None:
                continue
            self.reload_waiting.discard(pid)
            metrics = self.holder.current.metrics
            if metrics is not None and metrics.multiprocess_dir is not None:
                worker_gone(metrics.multiprocess_dir, pid)
            if self.stopping or self.rc is not None:
                log.info("worker %d ended: %s", worker.slot, _describe(status), extra=_about(pid))
                continue
            log.error("worker %d ended unexpectedly: %s", worker.slot, _describe(status), extra=_about(pid))
            self.missing.add(worker.slot)
            self._count_death()
            if self.rc is None and not self._socket_file_intact():
                # A worker whose libmilter loop failed ran libmilter's clean-up, which (when not
                # root) unlinks the socket file; or someone removed it. The socket still listens,
                # but nothing can reach it by name and it cannot be given one again: only a
                # restart recreates it.
                log.error("the socket file %s was removed; stopping so that a restart recreates it",
                          self.unix_path)
                self.rc = 1

    def _count_death(self) -> None:
        now = time.monotonic()
        self.deaths.append(now)
        while self.deaths and now - self.deaths[0] > CRASH_WINDOW:
            self.deaths.popleft()
        if len(self.deaths) > CRASH_LIMIT and self.rc is None:
            log.error("crash loop: %d worker deaths within %.0f s; stopping", len(self.deaths),
                      CRASH_WINDOW)
            self.rc = 1

    def _socket_file_intact(self) -> bool:
        if self.unix_path is None:
            return True
        try:
            st = os.stat(self.unix_path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self.unix_id

    def _read_status(self) -> None:
        self._status_buf += _drain(self.status_r)
        *lines, self._status_buf = self._status_buf.split(b"\n")
        for line in lines:
            parts = line.decode("ascii", "replace").split()
            if len(parts) < 2 or not parts[1].isdigit():
                continue
            worker = self.workers.get(int(parts[1]))
            if worker is None:
                continue
            if parts[0] == "ready":
                worker.ready = True
                if self.ready_sent:
                    log.info("worker %d ready", worker.slot, extra=_about(worker.pid))
            elif parts[0] == "reloaded":
                self.reload_waiting.discard(worker.pid)

    # --- reload ------------------------------------------------------------------------------

    def _notify_ready(self, state: str) -> None:
        # Before the first READY=1, systemd waits for that one; a reload then must not send it early.
        if self.ready_sent:
            _notify(state)

    def _reload(self) -> None:
        self._notify_ready("RELOADING=1")
        # Validated here first: a set with any problem is refused (file:line in the log) and no
        # worker hears of it. New workers are forked from whatever this holder has.
        if not reload_app(self.holder):
            if not self.reload_waiting:
                self._notify_ready("READY=1")
            return
        tag_log_lines()
        new_setting = self.holder.current.config.workers
        if new_setting != self.workers_setting:
            log.warning("workers changed to %s: takes effect only after a restart", new_setting)
            self.workers_setting = new_setting
        # Each worker re-reads the files itself (its reload path keeps its old set if the files
        # changed again in between and are now broken) and confirms over the status pipe.
        self.reload_waiting = set(self.workers)
        self.reload_deadline = time.monotonic() + RELOAD_TIMEOUT
        for pid in self.workers:
            try:
                os.kill(pid, signal.SIGHUP)
            except ProcessLookupError:
                self.reload_waiting.discard(pid)  # reaped on the next pass

    def _check_reloaded(self) -> None:
        if not self.reload_waiting:
            if self.reload_deadline:
                self.reload_deadline = 0.0
                self._notify_ready("READY=1")
            return
        if time.monotonic() >= self.reload_deadline:
            log.warning("workers %s did not confirm the reload within %.0f s",
                        " ".join(map(str, sorted(self.reload_waiting))), RELOAD_TIMEOUT)
            self.reload_waiting.clear()
            self.reload_deadline = 0.0
            self._notify_ready("READY=1")

    # --- stop --------------------------------------------------------------------------------

    def _shutdown(self, rc: int) -> int:
        self.stopping = True
        _notify("STOPPING=1")
        # No worker will be forked again. Once the workers have closed their copies too, new
        # connections are refused at once, as they are by a single process that stops, instead
        # of waiting in the backlog of a socket that nobody will accept from.
        os.close(self.listen_fd)
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self.workers and time.monotonic() < deadline:
            if _wait_readable([self.wake_r], min(_TICK, deadline - time.monotonic())):
                _drain(self.wake_r)
            self._reap()
        if self.workers:
            log.warning("workers %s still running after %.0f s; killing them",
                        " ".join(map(str, sorted(self.workers))), STOP_TIMEOUT)
            for pid in self.workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5.0
            while self.workers and time.monotonic() < deadline:
                _wait_readable([self.wake_r], 0.1)
                _drain(self.wake_r)
                self._reap()
        if self.unix_path is not None and self._socket_file_intact():
            try:
                os.unlink(self.unix_path)
            except OSError as e:
                log.warning("cannot remove %s: %s", self.unix_path, e)
        if self.metrics_sock is not None:
            self.metrics_sock.close()
        return rc

    # --- in the child ------------------------------------------------------------------------

    def _child(self, slot: int) -> NoReturn:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            for fd in (self.wake_r, self.wake_w, self.status_r, self.lifeline_w):
                os.close(fd)
            cpu = self.cpus[(slot - 1) % len(self.cpus)] if self.cpus else None
            code = _WorkerProcess(self.holder, slot, self.listen_fd, self.status_w,
                                  self.lifeline_r, cpu, self.metrics_sock).run()
        except BaseException:
            log.exception("worker %d failed", slot)
        finally:
            for handler in logging.getLogger().handlers:
                with contextlib.suppress(Exception):  # nothing left to report it to
                    handler.flush()
            # Not sys.exit: the supervisor's atexit handlers and buffers are not ours to run.
            os._exit(code)


class _WorkerProcess:
    """One worker: libmilter in a thread, this main thread waiting for signals and the lifeline."""

    def __init__(self, holder: AppHolder, slot: int, listen_fd: int, status_w: int,
                 lifeline_r: int, cpu: int | None, metrics_sock: socket.socket | None = None) -> None:
        self.holder = holder
        self.metrics_sock = metrics_sock
        self.cpu = cpu
        self.slot = slot
        self.listen_fd = listen_fd
        self.status_w = status_w
        self.lifeline_r = lifeline_r
        self.wake_r = -1
        self.signals: collections.deque[int] = collections.deque()

    def _tell(self, text: str) -> None:
        try:
            os.write(self.status_w, f"{text}\n".encode())
        except OSError as e:
            log.warning("cannot report %r to the supervisor: %s", text, e)

    def _on_signal(self, signum: int, frame: object) -> None:
        self.signals.append(signum)

    def run(self) -> int:
        # Only the main process may notify systemd (NotifyAccess=main would drop ours anyway).
        os.environ.pop("NOTIFY_SOCKET", None)
        self.wake_r, wake_w = _pipe()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for handled in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, KICK_SIGNAL):
            signal.signal(handled, self._on_signal)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        # Before libmilter starts: its thread inherits this mask and blocks HUP/TERM/INT itself,
        # for its own signal thread. The process-directed signals must find this thread open to
        # them, or libmilter's signal thread would take SIGHUP, which to it means "stop".
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
        where = ""
        if self.cpu is not None:
            # Set while this is the only thread: libmilter's threads inherit it. They hand the
            # GIL to each other for every milter command; on one CPU that is a plain context
            # switch, across CPUs a wake-up of another CPU (in a VM, an inter-processor
            # interrupt through the hypervisor), and the CPUs sat partly idle: two unpinned
            # workers on two CPUs did about 1.6 times the work of one, pinned about 2.
            try:
                os.sched_setaffinity(0, {self.cpu})
                where = f" on CPU {self.cpu}"
            except OSError as e:  # e.g. EPERM from a seccomp filter that denies @resources
                log.warning("worker %d: cannot keep to CPU %d (%s); running unpinned", self.slot,
                            self.cpu, e)
        libmilter = LibmilterThread()
        libmilter.start()
        metrics = self.holder.current.metrics
        if metrics is not None and self.metrics_sock is not None:
            metrics.after_fork()
            serve_metrics_on(metrics, self.metrics_sock)
        self._tell(f"ready {os.getpid()}")
        log.info("worker %d serving%s", self.slot, where)
        while True:
            readable = _wait_readable([self.wake_r, self.lifeline_r], _TICK)
            if self.wake_r in readable:
                _drain(self.wake_r)
            if self.lifeline_r in readable and not _drain(self.lifeline_r):
                log.error("worker %d: the supervisor is gone; stopping", self.slot)
                break
            if not libmilter.running():
                log.error("worker %d: libmilter stopped: %s", self.slot, libmilter.failure)
                return 1
            stop = False
            while self.signals:
                sig = self.signals.popleft()
                if sig in (signal.SIGTERM, signal.SIGINT):
                    stop = True
                elif sig == signal.SIGHUP:
                    ok = reload_app(self.holder)
                    tag_log_lines()
                    self._tell(f"reloaded {os.getpid()} {int(ok)}")
            if stop:
                break
        return self._stop(libmilter)

    def _stop(self, libmilter: LibmilterThread) -> int:
        log.info("worker %d stopping: finishing connections in flight", self.slot)
        libmilter.stop_accepting(self.listen_fd)
        # Up to a little less than the supervisor's patience, so that this process, not SIGKILL,
        # decides what is cut off.
        deadline = time.monotonic() + STOP_TIMEOUT - 2.0
        while AuthMilter.open_connections() > 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if AuthMilter.open_connections() > 0:
            log.warning("worker %d: %d connections still open; closing them", self.slot,
                        AuthMilter.open_connections())
        flush_history(self.holder)
        log.info("worker %d stopped", self.slot)
        return 0


def supervise(holder: AppHolder, count: int) -> int:
    """Serve with `count` worker processes until SIGTERM or SIGINT; returns an exit status."""
    return Supervisor(holder, count).run()
