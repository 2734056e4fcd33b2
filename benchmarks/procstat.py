"""CPU and memory of a process tree, from /proc (Linux only).

CPU is charged to a tree: utime+stime of its root and of every live descendant, plus
cutime+cstime, which holds what children that have already exited and been reaped used (a pre-fork
pool that recycles workers still gets charged for them). Memory is sampled: VmRSS of every
process of the tree, summed, and Pss from smaps_rollup, which splits pages shared between forked
workers instead of counting them once per process.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name is in parentheses and may itself contain spaces or ")": split after the last.
    return raw[raw.rfind(b")") + 2:].split()


def all_parents() -> dict[int, int]:
    """pid -> ppid for every process on the machine."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None:
                parents[int(entry)] = int(fields[1])
    return parents


def tree(root: int) -> list[int]:
    """`root` and all its live descendants (empty if root is gone)."""
    children: dict[int, list[int]] = defaultdict(list)
    parents = all_parents()
    if root not in parents:
        return []
    for pid, ppid in parents.items():
        children[ppid].append(pid)
    found, stack = [], [root]
    # Bounded by the number of processes: each pid is visited once (pids form a tree).
    seen: set[int] = set()
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        found.append(pid)
        stack.extend(children.get(pid, ()))
    return found


@dataclass(frozen=True)
class Cpu:
    user: float
    system: float  # the kernel on the process's behalf: for a milter, mostly socket I/O

    @property
    def total(self) -> float:
        return self.user + self.system

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.user - other.user, self.system - other.system)


def tree_cpu(root: int) -> Cpu:
    """CPU seconds used so far by `root`'s tree, reaped children included."""
    user = system = 0
    for pid in tree(root):
        fields = _stat_fields(pid)
        if fields is not None:
            # Fields 14-17 of proc(5) (utime, stime, cutime, cstime); we start counting at field 3.
            user += int(fields[11]) + int(fields[13])
            system += int(fields[12]) + int(fields[14])
    return Cpu(user / CLOCK_TICKS, system / CLOCK_TICKS)


@dataclass(frozen=True)
class MachineCpu:
    """Seconds of all CPUs since boot, from the first line of /proc/stat."""

    tasks: float  # user + nice + system: what processes are charged with
    interrupts: float  # irq + softirq: loopback networking runs here, charged to no process
    steal: float  # the hypervisor gave the CPU to another guest
    total: float

    def __sub__(self, other: MachineCpu) -> MachineCpu:
        return MachineCpu(self.tasks - other.tasks, self.interrupts - other.interrupts,
                          self.steal - other.steal, self.total - other.total)

    @property
    def busy(self) -> float:
        return self.tasks + self.interrupts + self.steal


def machine_cpu() -> MachineCpu:
    with open("/proc/stat") as f:
        v = [int(x) / CLOCK_TICKS for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal; guest time is already inside user.
    return MachineCpu(tasks=v[0] + v[1] + v[2], interrupts=v[5] + v[6], steal=v[7], total=sum(v[:8]))


def _status_kb(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in keys:
                    out[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return out


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


@dataclass
class MemSample:
    t: float  # seconds since the sampler started
    rss_kb: int  # VmRSS summed over the tree
    pss_kb: int  # Pss summed over the tree
    processes: int


@dataclass
class MemoryWatch:
    """Peak memory of a process tree, from samples taken by whoever calls `sample()`."""

    root: int
    samples: list[MemSample] = field(default_factory=list)
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    hwm_kb: dict[int, int] = field(default_factory=dict)  # VmHWM per pid, last seen
    keep_every: float = 0.0  # keep a sample in `samples` at most this often (0: all)
    _last_kept: float = -1e9

    def sample(self, t: float) -> MemSample:
        rss = pss = 0
        pids = tree(self.root)
        for pid in pids:
            status = _status_kb(pid, ("VmRSS", "VmHWM"))
            rss += status.get("VmRSS", 0)
            if "VmHWM" in status:
                self.hwm_kb[pid] = status["VmHWM"]
            pss += _pss_kb(pid)
        s = MemSample(t, rss, pss, len(pids))
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)
        if t - self._last_kept >= self.keep_every:
            self.samples.append(s)
            self._last_kept = t
        return s

    @property
    def max_hwm_kb(self) -> int:
        """The largest single process's high-water mark (the kernel's own peak, not sampled)."""
        return max(self.hwm_kb.values(), default=0)
