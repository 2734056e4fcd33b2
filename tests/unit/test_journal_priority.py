"""Log lines written to systemd's journal stream carry their level as a <N> prefix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import logging
from authmilter.observe.logs import setup_logging
setup_logging("debug")
log = logging.getLogger("authmilter")
log.error("an error")
log.warning("a warning")
log.info("news")
try:
    1 / 0
except ZeroDivisionError:
    log.exception("failed")
"""


def run(tmp_path: Path, journal: bool) -> list[str]:
    out = tmp_path / "stderr"
    with open(out, "wb") as f:
        st = os.fstat(f.fileno())
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", SCRIPT], stderr=f, env=env, timeout=60, check=True)
    return out.read_text().splitlines()


def test_the_journal_gets_each_lines_priority(tmp_path: Path) -> None:
    lines = run(tmp_path, journal=True)
    assert lines[0].startswith("<3>") and lines[0].endswith("ERROR authmilter: an error")
    assert lines[1].startswith("<4>") and lines[2].startswith("<6>")
    assert lines[3].startswith("<3>") and "failed" in lines[3]
    assert all(line.startswith("<3>") for line in lines[3:])  # the traceback's lines too
    assert lines[-1] == "<3>ZeroDivisionError: division by zero"


def test_other_streams_get_plain_lines(tmp_path: Path) -> None:
    lines = run(tmp_path, journal=False)
    assert lines[0].endswith("ERROR authmilter: an error") and not any(line.startswith("<") for line in lines)
