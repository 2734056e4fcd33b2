from __future__ import annotations

from pathlib import Path

import pytest

from authmilter.core.evaluate import EvalSettings
from authmilter.files.config import Config, ConfigError, load_config, validate_socket

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str | bytes) -> Path:
    p = tmp_path / "a.toml"
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text)
    return p


def test_sample_config_loads_with_documented_defaults() -> None:
    c = load_config(ROOT / "etc" / "authmilter.toml")
    assert c.socket == "inet:8891@127.0.0.1"
    assert c.authserv_id == ""
    assert c.dns.nameservers == ()
    assert c.dns.port == 53
    assert c.dns.timeout == 5.0
    assert c.evaluation == EvalSettings()
    assert (c.log_level, c.milter_timeout) == (Config.log_level, Config.milter_timeout)


def test_values_are_read(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, 'socket = "unix:/run/authmilter/a.sock"\nauthserv_id = "mx.example.com"\n'
                          '[dns]\nnameservers = ["127.0.0.1", "::1"]\nport = 5353\ntimeout = 2\n'
                          '[dkim]\nmax_signatures = 3\n[spf]\ncheck_helo = false\n'))
    assert c.socket == "unix:/run/authmilter/a.sock"
    assert c.authserv_id == "mx.example.com"
    assert c.dns.nameservers == ("127.0.0.1", "::1")
    assert (c.dns.port, c.dns.timeout) == (5353, 2.0)
    assert c.evaluation.dkim_max_signatures == 3
    assert c.evaluation.spf_check_helo is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sokket = 'inet:1@127.0.0.1'\n", "sokket: unknown key"),
        ("[dns]\nport = 0\n", "dns.port: must be between 1 and 65535, got 0"),
        ("[dns]\nport = true\n", "dns.port: expected an integer, got a boolean"),
        ("[dns]\nport = '53'\n", "dns.port: expected an integer, got str"),
        ("[dns]\nnameservers = ['resolver.example']\n", "dns.nameservers: 'resolver.example' is not an IP"),
        ("[dns]\ntimeoutt = 1\n", "dns.timeoutt: unknown key"),
        ("socket = 'tcp:8891'\n", "socket: expected inet:PORT@ADDRESS"),
        ("socket = 'inet:99999@127.0.0.1'\n", "socket: bad port"),
        ("socket = 'inet:127.0.0.1:8891'\n", "socket: bad port '127.0.0.1:8891': libmilter writes the "
         "port first, inet:8891@127.0.0.1 (Postfix's smtpd_milters writes the same socket as "
         "inet:127.0.0.1:8891)"),
        ("socket = 'unix:relative.sock'\n", "socket: a unix socket needs an absolute path"),
        ("authserv_id = 'mx example'\n", "authserv_id: must be a host name"),
        ("fail_safe = 'reject'\n", "fail_safe: must be one of tempfail, accept"),
        ("[dkim]\nmin_key_bits = 512\n", "dkim.min_key_bits: must be between 1024"),
        ("dns = 3\n", "dns: expected a table"),
        ("[spool]\nabove = -1\n", "spool.above: must be between 0 and"),
        ("[spool]\ndirectory = 'spool'\n", "spool.directory: needs an absolute path"),
        ("[spool]\ndirectory = '/nonexistent/am'\n", "spool.directory: /nonexistent/am is not a directory"),
        ("[dns\n", "(at line 1"),
    ],
)
def test_errors_name_file_key_and_reason(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(str(p) + ":")
    assert message in str(e.value)


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    p = write(tmp_path, b'log_level = "info"\nauthserv_id = "\xff"\n')
    with pytest.raises(ConfigError, match=r"a\.toml:2: not UTF-8"):
        load_config(p)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("spec", ["inet:8891@127.0.0.1", "inet6:8891@::1", "unix:/run/a.sock", "inet:25"])
def test_valid_sockets(spec: str) -> None:
    assert validate_socket(spec) is None


def test_policy_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "policies").mkdir()
    for f in (tmp_path / "policies" / "default.toml", tmp_path / "abs.toml", tmp_path / "etc" / "one.toml"):
        f.write_text("")
    p = tmp_path / "etc" / "a.toml"
    p.write_text(f'policy = ["../policies/default.toml", "{tmp_path / "abs.toml"}"]\n')
    expected = (str(tmp_path / "policies" / "default.toml"), str(tmp_path / "abs.toml"))
    assert load_config(p).policy_files == expected
    p.write_text('policy = "one.toml"\n')
    assert load_config(p).policy_files == (str(tmp_path / "etc" / "one.toml"),)
    p.write_text("policy = [3]\n")
    with pytest.raises(ConfigError, match="policy: expected a file name"):
        load_config(p)


def test_no_policy_key_means_the_shipped_default_and_an_empty_list_means_none(tmp_path: Path) -> None:
    p = tmp_path / "a.toml"
    p.write_text('socket = "inet:8891@127.0.0.1"\n')
    (shipped,) = load_config(p).policy_files
    assert Path(shipped).read_text() == (ROOT / "policies" / "default.toml").read_text()
    p.write_text("policy = []\n")
    assert load_config(p).policy_files == ()


def test_a_missing_policy_file_names_the_key_line_and_where_the_path_led(tmp_path: Path) -> None:
    # The sample config once said "../policies/default.toml": copied to /etc/authmilter/ that is
    # /etc/policies/default.toml, and the error must say where that came from.
    (tmp_path / "etc" / "authmilter").mkdir(parents=True)
    p = tmp_path / "etc" / "authmilter" / "authmilter.toml"
    p.write_text('log_level = "info"\npolicy = ["../policies/default.toml"]\n')
    with pytest.raises(ConfigError) as e:
        load_config(p)
    text = str(e.value)
    assert text.startswith(f"{p}:2: policy:"), text
    assert str(tmp_path / "etc" / "policies" / "default.toml") in text
    assert f"relative to this file's directory {tmp_path / 'etc' / 'authmilter'}" in text
    assert "leave `policy` out for the shipped default" in text


# Found by tests/unit/test_properties_config.py: each loaded, and broke only later (a traceback at
# start-up, or the fail-safe reply for every message).
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[dns]\nnameservers = [1]\n", "a.toml:2: dns.nameservers: 1 is not an IP address"),
        ("[dns]\nnameservers = [true]\n", "a.toml:2: dns.nameservers: True is not an IP address"),
        ('authserv_id = "mx.ex\u00e4mple"\n', "a.toml:1: authserv_id: must be a host name of printable"),
        ('authserv_id = "mx\\u0001"\n', "a.toml:1: authserv_id: must be a host name of printable"),
        ('socket = "inet:\u0661\u0662@127.0.0.1"\n', "a.toml:1: socket: bad port"),
        ('[metrics]\nlisten = "127.0.0.1:\u0661\u0662"\n', "a.toml:2: metrics.listen: expected ADDRESS:PORT"),
        ('policy = ["a\\u0000b"]\n', "a.toml:1: policy: 'a\\x00b': a file name cannot contain a NUL"),
        ('signing = "s\\u0000.toml"\n', "a.toml:1: signing: a file name cannot contain a NUL"),
        ('syslog_socket = "/dev/\\u0000log"\n', "a.toml:1: syslog_socket: a file name cannot contain"),
        ('socket = "unix:/run/a\\u0000.sock"\n', "a.toml:1: socket: a socket path cannot contain a NUL"),
        ('[spool]\ndirectory = "/tmp\\u0000"\n', "a.toml:2: spool.directory: a file name cannot contain"),
    ],
)
def test_values_that_would_break_later_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert str(e.value).endswith(message) or message in str(e.value), str(e.value)


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('log_level = "info"\n\n[dns]\ntimeout = 1\nport = 0\n', "a.toml:5: dns.port:"),
        ('[spf]\ncheck_helo = true\n[dkim]\nmax_signatures = 0\n', "a.toml:4: dkim.max_signatures:"),
        ("dns = { port = 0 }\n", "a.toml:1: dns.port:"),
        ('\n\nsokket = []\n', "a.toml:3: sokket: unknown key"),
        ('"" = []\n', 'a.toml:1: "": unknown key'),
        ('"a b" = 1\n', 'a.toml:1: "a b": unknown key'),
        ("x = 1\n0=", "a.toml:2: Invalid value (at end of document)"),
        ("[dns\n", "a.toml:1: "),
        ("x = 'a\x0b\x0cb", "a.toml:1: Expected"),
    ],
)
def test_every_error_names_its_line(tmp_path: Path, text: str, where: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert where in str(e.value) and str(e.value).startswith(str(tmp_path / "a.toml") + ":"), str(e.value)


def test_history_and_reports_defaults_and_values(tmp_path: Path) -> None:
    c = load_config(write(tmp_path, '[store]\npath = "state/s.db"\n'))
    assert c.history.enabled and c.history.backend == "sqlite"
    assert c.history.path == str(tmp_path / "state" / "history.db")  # beside the store
    assert c.reports.failure is False and c.reports.aggregate is True and c.reports.org_name == ""
    c = load_config(write(tmp_path, '[history]\nbackend = "postgresql"\nurl = "postgresql://a@db/m"\n'
                                    'retention_days = 7\n[reports]\norg_name = "Ex"\n'
                                    'email = "dmarc@ex.example"\nfailure = true\n'))
    assert c.history.backend == "postgresql" and c.history.retention_days == 7
    assert c.reports.receiver_domain == "ex.example" and c.reports.failure


@pytest.mark.parametrize("text, message", [
    ('[history]\nbackend = "postgresql"\n', "history.url: postgresql needs url"),
    ('[history]\nbackend = "redis"\n', "history.url: redis needs url"),
    ('[history]\nbackend = "redis"\nurl = "http://x"\n', "expected redis://"),
    ('[history]\nretention_days = 0\n', "history.retention_days: must be between 1"),
    ('[history]\nbakend = "sqlite"\n', "bakend"),
    ('[reports]\nemail = "Dmarc <d@x.example>"\n', "reports.email: "),
    ('[reports]\nsmtp = "localhost"\n', "reports.smtp: 'localhost' is not HOST:PORT"),
])
def test_history_and_reports_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_a_unix_socket_path_too_long_for_sockaddr_un_is_refused_with_the_limit() -> None:
    fits = "unix:/" + "a" * 106  # 107 bytes of path: the most sockaddr_un holds with its NUL
    assert validate_socket(fits) is None
    problem = validate_socket(fits + "a")
    assert problem is not None and "108 bytes" in problem and "at most 107" in problem
