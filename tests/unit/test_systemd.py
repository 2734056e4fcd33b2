"""The shipped systemd unit: `systemd-analyze verify` accepts it and its security exposure stays low.

Both checks are offline (no running systemd needed). `systemd-analyze` comes with Debian's `systemd`
package; when it is missing the tests fail rather than skip, so a hardening regression cannot hide
behind a missing tool.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "authmilter.service"
SYSUSERS = ROOT / "systemd" / "authmilter.sysusers"
SHIPPED_EXEC = "/opt/authmilter/venv/bin/authmilter"
MAX_EXPOSURE = 2.0  # systemd-analyze rates 0.0-2.0 "OK"; the unit measured 1.1 with systemd 252

_OVERALL = re.compile(r"Overall exposure level for \S+: (\d+(?:\.\d+)?) ")


def systemd_analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze not found: install the Debian package `systemd` "
                    "(apt-get install systemd); it is only run offline, no running systemd is needed")
    return tool


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([systemd_analyze(), *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def unit_with_local_exec(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart is this virtualenv's `authmilter` script.

    `verify` insists that every Exec*= binary exists and is executable, and the shipped path
    (/opt/authmilter/venv/...) exists only on an installed machine. The script next to the running
    interpreter is the same entry point the package installs; everything else is left as shipped.
    """
    local_exec = Path(sys.executable).parent / "authmilter"
    assert local_exec.is_file(), f"{local_exec} missing: install the package into the virtualenv"
    text = UNIT.read_text()
    assert text.count(f"ExecStart={SHIPPED_EXEC} ") == 1, "ExecStart= no longer names the shipped path"
    copy = tmp_path / UNIT.name  # same file name: the unit name is derived from it
    copy.write_text(text.replace(f"ExecStart={SHIPPED_EXEC} ", f"ExecStart={local_exec} "))
    return copy


def test_verify_accepts_the_unit(tmp_path: Path) -> None:
    unit = unit_with_local_exec(tmp_path)
    result = run("verify", str(unit), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # verify also loads the units ours names (network-online.target, postfix.service, ...) and
    # may warn about those on some hosts; only lines about our own unit or file are ours to fix.
    ours = [line for line in output.splitlines() if "authmilter" in line]
    assert ours == [], output


def test_security_exposure_is_ok() -> None:
    # The shipped file itself: `security --offline` does not need the binary to exist.
    result = run("security", "--offline=true", "--no-pager", str(UNIT), cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    found = _OVERALL.findall(output)
    assert len(found) == 1, f"no single 'Overall exposure level' line in:\n{output}"
    exposure = float(found[0])
    assert exposure <= MAX_EXPOSURE, f"exposure {exposure} > {MAX_EXPOSURE}:\n{output}"


def test_unit_matches_the_program() -> None:
    """What the program relies on (README, systemd/README.md) is what the unit says."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"], "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "Restart": ["on-failure"], "RestartPreventExitStatus": ["78"], "TimeoutStopSec": ["45"],
        "User": ["authmilter"], "Group": ["authmilter"], "UMask": ["0007"],
        "RuntimeDirectory": ["authmilter"], "RuntimeDirectoryMode": ["0750"],
        "StateDirectory": ["authmilter"], "ConfigurationDirectory": ["authmilter"],
    }
    for key, value in expected.items():
        assert settings.get(key) == value, (key, settings.get(key))
    assert settings["ExecStart"] == [f"{SHIPPED_EXEC} serve -c /etc/authmilter/authmilter.toml"]
    assert "DynamicUser" not in settings  # the socket's group must be a real, joinable group


def test_sysusers_declares_the_service_user() -> None:
    lines = [shlex.split(line) for line in SYSUSERS.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines == [["u", "authmilter", "-", "authmilter mail filter", "/var/lib/authmilter"]]


REPORT_UNIT = ROOT / "systemd" / "authmilter-report.service"
REPORT_TIMER = ROOT / "systemd" / "authmilter-report.timer"


def test_verify_accepts_the_report_service_and_timer(tmp_path: Path) -> None:
    local_exec = Path(sys.executable).parent / "authmilter"
    text = REPORT_UNIT.read_text()
    assert text.count(f"ExecStart={SHIPPED_EXEC} report send ") == 1
    (tmp_path / REPORT_UNIT.name).write_text(text.replace(SHIPPED_EXEC, str(local_exec)))
    (tmp_path / REPORT_TIMER.name).write_text(REPORT_TIMER.read_text())
    result = run("verify", str(tmp_path / REPORT_UNIT.name), str(tmp_path / REPORT_TIMER.name),
                 cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert [line for line in output.splitlines() if "authmilter" in line] == [], output


def test_report_service_is_as_confined_as_the_milter() -> None:
    result = run("security", "--offline=true", "--no-pager", str(REPORT_UNIT), cwd=ROOT)
    output = result.stdout + result.stderr
    found = _OVERALL.findall(output)
    assert len(found) == 1, output
    assert float(found[0]) <= MAX_EXPOSURE, output


def test_report_timer_runs_daily_after_the_utc_day_ends() -> None:
    text = REPORT_TIMER.read_text()
    (spec,) = [line.partition("=")[2] for line in text.splitlines() if line.startswith("OnCalendar=")]
    result = run("calendar", "--iterations=2", spec)
    assert result.returncode == 0, result.stderr
    # Both elapses at 00:15 UTC, a day apart: after the UTC day the reports cover has ended.
    elapses = re.findall(r"(?:Next elapse|Iter\. #2): \w+ (\S+) (\d\d:\d\d:\d\d) UTC", result.stdout)
    assert [t for _, t in elapses] == ["00:15:00", "00:15:00"], result.stdout
    assert "Persistent=true" in text


def test_the_docs_name_the_config_and_the_account_as_the_program_does() -> None:
    """One config path and one account everywhere: the program's default, the unit's, the docs'."""
    from authmilter.defaults import SYSTEM_CONFIG
    from authmilter.files.access import SERVICE_USER

    unit, config = UNIT.read_text(), str(SYSTEM_CONFIG)
    assert f" -c {config}\n" in unit and f"\nUser={SERVICE_USER}\n" in unit
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
            *sorted((ROOT / "docs" / "man").glob("*.[58]")), *sorted((ROOT / "systemd").glob("*.md")),
            *sorted((ROOT / "etc").glob("*.toml"))]
    strays = {f"{doc.relative_to(ROOT)}: {path}" for doc in docs
              for path in re.findall(r"/etc/[\w./-]*\.toml", doc.read_text().replace("\\-", "-"))
              if path != config and not path.startswith("/etc/authmilter/policies/")}
    assert not strays
