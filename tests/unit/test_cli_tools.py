"""What a new operator meets first: config errors in words, and `policy lint` on folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from authmilter.cli import main
from authmilter.files.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("text", "expected"), [
    ("[dns]\ntimout = 3\n", "a.toml:2: dns.timout: unknown key; did you mean dns.timeout?"),
    ('log_levle = "info"\n', "a.toml:1: log_levle: unknown key; did you mean log_level?"),
    ("wrokers = 2\n", "a.toml:1: wrokers: unknown key; did you mean workers?"),
    ("zzz = 1\n", "a.toml:1: zzz: unknown key"),
    ('authserv_id = "mx\nlog_level = "info"\n',
     "a.toml:1: a line ends inside a string: a closing quote is missing"),
    ("workers = 1\nworkers = 2\n", "a.toml:2: a key or table is given twice"),
])
def test_config_errors_say_where_and_what_was_meant(tmp_path: Path, text: str, expected: str) -> None:
    p = tmp_path / "a.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{tmp_path}/{expected}"), str(e.value)
    if expected.endswith("unknown key"):
        assert "did you mean" not in str(e.value)


def test_policy_lint_takes_folders_and_lints_each_file_in_them(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # policies/examples holds alternative sets with the same rule names: linted one by one.
    assert main(["policy", "lint", str(ROOT / "policies" / "examples"), str(ROOT / "policies")]) == 0
    examples = len(list((ROOT / "policies" / "examples").glob("*.toml")))
    assert capsys.readouterr().out == f"ok: {examples + 1} file(s)\n"
    bad = tmp_path / "pol"
    bad.mkdir()
    (bad / "a.toml").write_text('[[rules]]\nname = "x"\nwhen = { spff = "fail" }\naction = "reject"\n')
    assert main(["policy", "lint", str(bad)]) == 1
    assert f"{bad / 'a.toml'}:3" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["policy", "lint", str(empty)]) == 64
    assert "is a folder with no *.toml file" in capsys.readouterr().err
