"""Where the milter's CPU goes: py-spy sampling its process tree during a measured phase.

py-spy is not a dependency of the project; install it into the virtualenv for a measurement
(`.venv/bin/pip install py-spy`). It samples Python stacks from outside, without pausing the milter
(--nonblocking), but it still takes CPU on the same two cores: the figures of a profiled run are
not the benchmark's figures, only the shares are.

Time spent in C under a Python call (OpenSSL, hashlib, the regex engine, pymilter's glue) is
charged to that Python frame. libmilter's own threads between callbacks run no Python at all and
are not seen; compare the samples' total with the measured CPU to see how much that is.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path
from types import TracebackType

RATE = 1000


def available(py_spy: str | None = None) -> str | None:
    """The py-spy executable (beside our Python first), or None."""
    import sys

    beside = Path(sys.executable).parent / "py-spy"
    if py_spy:
        return py_spy
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class Recorder:
    """`with Recorder(exe, pid, out):` records the tree of `pid` as collapsed stacks into `out`."""

    def __init__(self, exe: str, pid: int, out: Path, log: Path) -> None:
        # --gil: only the thread holding the GIL, i.e. the one running Python; threads waiting for
        # the GIL or for the logging lock would otherwise count as busy.
        self.args = [exe, "record", "--pid", str(pid), "--subprocesses", "--nonblocking", "--gil",
                     "--rate", str(RATE), "--format", "raw", "--output", str(out)]
        self.out = out
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Recorder:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=log)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        # SIGINT makes py-spy write what it has; it needs a moment for that.
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _frame_name(frame: str) -> str:
    # "function (module/path.py:123)" -> "function (path.py)": lines would split one function apart.
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    short = "/".join(where.split("/")[-2:]) if where else ""
    return f"{name} ({short})" if short else name


def summarize(path: Path, top: int = 25) -> dict[str, object]:
    """Inclusive and self sample shares per function, from py-spy's raw (collapsed) output."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        for name in set(frames):
            inclusive[name] += count
        own[frames[-1]] += count
    return {
        "samples": total,
        "inclusive": [(n, c, 100 * c / total) for n, c in inclusive.most_common(top)] if total else [],
        "self": [(n, c, 100 * c / total) for n, c in own.most_common(top)] if total else [],
    }


def print_summary(name: str, summary: dict[str, object], seconds_of_samples: float,
                  milter_cpu: float) -> None:
    samples = summary["samples"]
    assert isinstance(samples, int)
    print(f"\n{name}: py-spy, {samples} samples ~ {seconds_of_samples:.1f} s of Python on-CPU time "
          f"against {milter_cpu:.1f} s measured (the rest: C threads with no Python frame, sampling misses)")
    for title in ("inclusive", "self"):
        rows = summary[title]
        assert isinstance(rows, list)
        print(f"  top functions, {title} share of samples:")
        for fname, _count, share in rows:
            print(f"    {share:5.1f}%  {fname}")
