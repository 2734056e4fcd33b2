"""`policy preview` and `report send` refuse bad input with the right exit status and words."""

from __future__ import annotations

from pathlib import Path

import pytest

from authmilter.cli import EXIT_CONFIG, main


def config(tmp_path: Path, extra: str = "") -> Path:
    p = tmp_path / "a.toml"
    p.write_text(f'[history]\npath = "{tmp_path / "h.db"}"\n{extra}')
    return p


def test_preview_of_a_broken_draft_names_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    draft = tmp_path / "draft.toml"
    draft.write_text('[[rules]]\nname = "x"\nwhen = { dmark = "fail" }\naction = "reject"\n')
    assert main(["policy", "preview", "-c", str(config(tmp_path)), str(draft)]) == EXIT_CONFIG
    assert "draft.toml:3" in capsys.readouterr().err


def test_preview_of_an_empty_history_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    draft = tmp_path / "draft.toml"
    draft.write_text('[[rules]]\nname = "x"\nwhen = { dmarc = "fail" }\naction = "reject"\n')
    assert main(["policy", "preview", "-c", str(config(tmp_path)), "--since", "2d", str(draft)]) == 0
    assert "nothing to preview" in capsys.readouterr().out


@pytest.mark.parametrize("arg", [["--since", "yesterday"], ["--since", "7x"]])
def test_preview_refuses_a_bad_period(tmp_path: Path, arg: list[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["policy", "preview", "-c", str(config(tmp_path)), *arg, "d.toml"])
    assert e.value.code == 64  # EX_USAGE


def test_report_send_needs_who_we_are(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "send", "-c", str(config(tmp_path)), "--dry-run"]) == EXIT_CONFIG
    assert "[reports] needs org_name and email" in capsys.readouterr().err


def test_report_send_with_history_off_says_nothing_is_recorded(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    p = tmp_path / "b.toml"
    p.write_text("[history]\nenabled = false\n")
    assert main(["report", "send", "-c", str(p)]) == EXIT_CONFIG
    assert "enabled = false" in capsys.readouterr().err


def test_report_send_refuses_a_bad_day(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as e:
        main(["report", "send", "-c", str(config(tmp_path)), "--day", "2026-13-01"])
    assert e.value.code == 64


def test_version_and_help_name_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    from authmilter.cli import build_parser

    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("authmilter 0.")
    text = build_parser().format_help()
    for command in ("serve", "check", "policy", "report", "sample-config", "genkey", "testkey"):
        assert f"    {command} " in text, command
