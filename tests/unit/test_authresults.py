"""Authentication-Results: building ours with authres, and finding incoming forgeries of it."""

from __future__ import annotations

import re
from typing import Any

import authres
import pytest

from authmilter.core.authresults import build_authentication_results, forged_headers
from authmilter.core.model import (
    ArcResult,
    AuthorResult,
    DkimResult,
    DmarcRecord,
    DmarcResult,
    Header,
    HeaderDelete,
    Results,
    SpfIdentity,
    SpfResult,
    SpfResults,
)

AUTHSERV = "mx.example.com"


def spf_mailfrom(result: str = "pass", sender: str = "user@example.com", reason: str = "") -> SpfResults:
    domain = sender.rpartition("@")[2]
    return SpfResults(SpfResult(result, SpfIdentity.MAILFROM, domain, sender, reason), None)


def sig(
    result: str = "pass",
    domain: str = "example.com",
    selector: str = "sel1",
    algorithm: str = "rsa-sha256",
    b_prefix: str = "dGhpc2lz",
    **kwargs: Any,
) -> DkimResult:
    return DkimResult(result, domain, selector, algorithm, b_prefix, **kwargs)


def record(p: str = "reject", sp: str | None = None) -> DmarcRecord:
    return DmarcRecord("example.com", p, sp, None, "r", "r", None, False, None, f"v=DMARC1; p={p}")


def dmarc(
    result: str = "pass", domain: str = "example.com", policy: str = "reject", **kwargs: Any
) -> DmarcResult:
    return DmarcResult(result, domain, policy, "p", record=kwargs.pop("record", record(policy)), **kwargs)


def results(
    spf: SpfResults | None = None,
    dkim: tuple[DkimResult, ...] = (),
    dmarc_result: DmarcResult | None = None,
    author: AuthorResult | None = None,
    arc: ArcResult | None = None,
) -> Results:
    return Results(spf, dkim, author or AuthorResult("example.com", ("user@example.com",)), dmarc_result, arc)


def chain(
    result: str = "pass",
    sealers: tuple[str, ...] = ("lists.example.org", "fwd.example.net"),
    oldest_pass: int | None = 0,
    reason: str = "2 ARC sets validated",
) -> ArcResult:
    return ArcResult(result, len(sealers), oldest_pass if result == "pass" else None, sealers, (), reason)


def unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value)


def parse(value: str) -> Any:
    return authres.AuthenticationResultsHeader.parse_value(unfold(value))


def top_level_clauses(value: str) -> list[str]:
    """Split at ";" outside quoted-strings and comments: an RFC-aware reading, independent of authres."""
    parts, buf, depth, quoted, i = [], [], 0, False, 0
    while i < len(value):
        c = value[i]
        if c == "\\" and (quoted or depth):
            buf.append(value[i : i + 2])
            i += 2
            continue
        if quoted:
            quoted = c != '"'
        elif c == '"' and not depth:
            quoted = True
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == ";" and not depth:
            parts.append("".join(buf).strip())
            buf = []
            i += 1
            continue
        buf.append(c)
        i += 1
    parts.append("".join(buf).strip())
    assert not quoted and depth == 0, f"unbalanced: {value!r}"
    return parts


def props(result: Any) -> dict[str, str]:
    return {f"{p.type}.{p.name}": p.value for p in result.properties}


# --- building -------------------------------------------------------------------------------------


def test_full_pass_round_trip() -> None:
    value = build_authentication_results(
        AUTHSERV,
        results(spf_mailfrom(reason="matched ip4:192.0.2.0/24"), (sig(key_bits=2048),), dmarc()),
        client_ip="192.0.2.1",
    )
    assert value.startswith("mx.example.com;\r\n\tspf=pass")
    header = parse(value)
    assert header.authserv_id == "mx.example.com"
    assert [(r.method, r.result) for r in header.results] == [
        ("spf", "pass"),
        ("dkim", "pass"),
        ("dmarc", "pass"),
    ]
    spf, dkim, dmarc_ = header.results
    assert props(spf) == {"smtp.mailfrom": "user@example.com"}
    assert spf.reason == "matched ip4:192.0.2.0/24"
    assert props(dkim) == {
        "header.d": "example.com",
        "header.s": "sel1",
        "header.a": "rsa-sha256",
        "header.b": "dGhpc2lz",
    }
    assert props(dmarc_) == {"header.from": "example.com", "policy.dmarc": "reject"}
    assert "(client-ip=192.0.2.1)" in value
    assert "(2048-bit key)" in value
    assert "(p=reject)" in value


def test_fail_results_round_trip() -> None:
    value = build_authentication_results(
        AUTHSERV,
        results(
            spf_mailfrom("fail", reason="matched -all"),
            (sig("fail", reason="signature did not verify"),),
            dmarc("fail", policy="quarantine", record=record("quarantine", sp="reject")),
        ),
    )
    header = parse(value)
    assert [(r.method, r.result) for r in header.results] == [
        ("spf", "fail"),
        ("dkim", "fail"),
        ("dmarc", "fail"),
    ]
    assert header.results[1].reason == "signature did not verify"
    assert props(header.results[2])["policy.dmarc"] == "quarantine"
    assert "(p=quarantine sp=reject)" in value


def test_spf_helo_identity() -> None:
    spf = SpfResults(SpfResult("pass", SpfIdentity.HELO, "mx.example.org", "mx.example.org"), None)
    header = parse(build_authentication_results(AUTHSERV, results(spf)))
    assert props(header.results[0]) == {"smtp.helo": "mx.example.org"}


@pytest.mark.parametrize("result", ["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"])
def test_every_spf_result(result: str) -> None:
    header = parse(build_authentication_results(AUTHSERV, results(spf_mailfrom(result))))
    assert (header.results[0].method, header.results[0].result) == ("spf", result)


def test_no_signatures_is_dkim_none() -> None:
    header = parse(build_authentication_results(AUTHSERV, results(spf_mailfrom())))
    assert [(r.method, r.result) for r in header.results] == [("spf", "pass"), ("dkim", "none")]


def test_missing_parts_are_omitted() -> None:
    value = build_authentication_results(AUTHSERV, results(dkim=(sig(),)))
    assert "spf=" not in value and "dmarc=" not in value
    assert [r.method for r in parse(value).results] == ["dkim"]


def test_multiple_dkim_results_with_i_and_b() -> None:
    value = build_authentication_results(
        AUTHSERV,
        results(
            dkim=(
                sig("pass", "example.com", "s1", "rsa-sha256", "AbCdEfGh", identity="@example.com"),
                sig(
                    "fail",
                    "list.example.net",
                    "s2",
                    "ed25519-sha256",
                    "12345678",
                    identity="bob@list.example.net",
                ),
                sig("permerror", "third.example", "s3", "rsa-sha1", "ZZZZZZZZ", reason="key too short"),
            )
        ),
    )
    header = parse(value)
    got = [(r.result, props(r)) for r in header.results]
    assert got == [
        (
            "pass",
            {
                "header.d": "example.com",
                "header.i": "@example.com",
                "header.s": "s1",
                "header.a": "rsa-sha256",
                "header.b": "AbCdEfGh",
            },
        ),
        (
            "fail",
            {
                "header.d": "list.example.net",
                "header.i": "bob@list.example.net",
                "header.s": "s2",
                "header.a": "ed25519-sha256",
                "header.b": "12345678",
            },
        ),
        (
            "permerror",
            {"header.d": "third.example", "header.s": "s3", "header.a": "rsa-sha1", "header.b": "ZZZZZZZZ"},
        ),
    ]
    assert header.results[2].reason == "key too short"


def test_header_b_with_base64_specials_is_quoted() -> None:
    value = build_authentication_results(AUTHSERV, results(dkim=(sig(b_prefix="ab/+cd=="),)))
    assert 'header.b="ab/+cd=="' in value
    assert props(parse(value).results[0])["header.b"] == "ab/+cd=="


def test_dmarc_unusable_from_is_permerror_with_reason() -> None:
    author = AuthorResult(None, ("a@x.example", "b@y.example"), "multiple From addresses")
    value = build_authentication_results(
        AUTHSERV, results(spf_mailfrom(), dmarc_result=DmarcResult("permerror", ""), author=author)
    )
    dmarc_ = parse(value).results[-1]
    assert (dmarc_.method, dmarc_.result) == ("dmarc", "permerror")
    assert dmarc_.reason == "multiple From addresses"
    assert "header.from" not in props(dmarc_)


def test_dmarc_testing_and_no_policy() -> None:
    value = build_authentication_results(
        AUTHSERV, results(dmarc_result=DmarcResult("none", "example.com", reason="no DMARC record"))
    )
    dmarc_ = parse(value).results[-1]
    assert props(dmarc_) == {"header.from": "example.com"}
    tested = build_authentication_results(AUTHSERV, results(dmarc_result=dmarc("fail", testing=True)))
    assert "(p=reject testing)" in tested


def test_idn_domains_become_a_labels() -> None:
    value = build_authentication_results(
        AUTHSERV,
        results(
            spf_mailfrom(sender="user@bücher.example"),
            (sig(domain="bücher.example"),),
            dmarc(domain="bücher.example"),
        ),
    )
    assert value.isascii()
    assert "smtp.mailfrom=user@xn--bcher-kva.example" in value
    assert "header.d=xn--bcher-kva.example" in value
    assert "header.from=xn--bcher-kva.example" in value


def test_mailfrom_with_unrenderable_local_part_falls_back_to_domain() -> None:
    for sender in ('"john doe"@example.com', "jörg@example.com", "a;b@example.com"):
        value = build_authentication_results(AUTHSERV, results(spf_mailfrom(sender=sender)))
        assert props(parse(value).results[0]) == {"smtp.mailfrom": "example.com"}, sender


HOSTILE = [
    "evil.example; dkim=pass header.d=paypal.com",
    "evil.example;dkim=pass",
    'evil.example" ; dkim=pass',
    "evil.example) ; dkim=pass (",
    "evil.example\r\n\tdkim=pass",
    "evil.example\r\nX-Injected: yes",
    "ev\x00il.example",
    "évil.example; dkim=pass",
    "x@y;dkim=pass",
    "a\\",
    "x" * 5000,
]


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_values_cannot_inject(hostile: str) -> None:
    res = results(
        SpfResults(SpfResult("fail", SpfIdentity.MAILFROM, hostile, f"u@{hostile}", hostile), None),
        (
            sig(
                "fail",
                domain=hostile,
                selector=hostile,
                algorithm=hostile,
                b_prefix=hostile,
                identity=hostile,
                reason=hostile,
            ),
            sig("fail", domain="ok.example", selector=hostile),
        ),
        DmarcResult(
            "fail",
            hostile,
            hostile,
            "p",
            record=DmarcRecord(hostile, hostile, hostile, hostile, "r", "r", None, False, None, hostile),
            reason=hostile,
        ),
        AuthorResult(None, (), hostile),
    )
    value = build_authentication_results(AUTHSERV, res, client_ip=hostile)
    # Only printable ASCII, and the only line breaks are our folds.
    lines = value.split("\r\n\t")
    assert all(line.isascii() and line.isprintable() for line in lines), lines
    assert all(len(line) < 400 for line in lines)
    # Exactly our four clauses, by an RFC-aware reading ...
    clauses = top_level_clauses(value)
    assert clauses[0] == AUTHSERV
    assert [c.split("=", 1)[0] for c in clauses[1:]] == ["spf", "dkim", "dkim", "dmarc"]
    # ... by authres ...
    header = parse(value)
    assert [(r.method, r.result) for r in header.results] == [
        ("spf", "fail"),
        ("dkim", "fail"),
        ("dkim", "fail"),
        ("dmarc", "fail"),
    ]
    # ... and by a naive reader that splits on ";" and ignores quoting.
    naive = [part.strip() for part in unfold(value).split(";")]
    assert len(naive) == 5
    assert "=pass" not in value


def test_hostile_value_authres_alone_would_leave_bare() -> None:
    # authres' own quoting leaves anything with "@" unquoted; ours must not.
    value = build_authentication_results(AUTHSERV, results(dkim=(sig(identity="x@y dkim=pass"),)))
    assert "header.i=x@y" not in value


def test_reason_is_defused() -> None:
    value = build_authentication_results(
        AUTHSERV, results(spf_mailfrom("fail", reason='matched -all; explanation: "dkim=pass" \\o/ (ok)'))
    )
    expected = "matched -all, explanation: 'dkim:pass' /o/ (ok)"
    assert f'reason="{expected}"' in value
    assert parse(value).results[0].reason == expected


def test_client_ip_comment_only_for_real_addresses() -> None:
    value = build_authentication_results(AUTHSERV, results(spf_mailfrom()), client_ip="2001:DB8::1")
    assert "(client-ip=2001:db8::1)" in value
    value = build_authentication_results(AUTHSERV, results(spf_mailfrom()), client_ip="::ffff:192.0.2.7")
    assert "(client-ip=192.0.2.7)" in value
    value = build_authentication_results(AUTHSERV, results(spf_mailfrom()), client_ip="1.2.3.4) (x")
    assert "client-ip" not in value


def test_authserv_id_quoting() -> None:
    value = build_authentication_results('my "mail" host', results(spf_mailfrom()))
    assert value.startswith('"my \\"mail\\" host";')
    # Our own detector reads the quoted id back.
    assert forged_headers([Header(b"Authentication-Results", b" " + value.encode())], 'my "mail" host') == (
        HeaderDelete("Authentication-Results", 1),
    )


def test_authserv_id_keeps_case_as_configured() -> None:
    assert build_authentication_results("MX.Example.COM", results()).startswith("MX.Example.COM;")


@pytest.mark.parametrize("bad", ["", "   ", "mx.example.com\r\nX: y", "mx.exämple.com"])
def test_unusable_authserv_id_raises(bad: str) -> None:
    with pytest.raises(ValueError):
        build_authentication_results(bad, results())


def test_folding_and_linesep() -> None:
    res = results(spf_mailfrom(), (sig(), sig(domain="other.example")), dmarc())
    value = build_authentication_results(AUTHSERV, res)
    assert value.count(";\r\n\t") == 4
    assert "\n" not in value.replace("\r\n\t", "")
    lf = build_authentication_results(AUTHSERV, res, linesep="\n")
    assert lf == value.replace("\r\n", "\n")


# --- arc= (RFC 8617 section 10.2) -------------------------------------------------------------------


def test_arc_pass_round_trip() -> None:
    value = build_authentication_results(
        AUTHSERV, results(spf_mailfrom(), (sig(),), dmarc(), arc=chain()), client_ip="192.0.2.1"
    )
    header = parse(value)
    # After DKIM, before DMARC.
    assert [(r.method, r.result) for r in header.results] == [
        ("spf", "pass"),
        ("dkim", "pass"),
        ("arc", "pass"),
        ("dmarc", "pass"),
    ]
    assert props(header.results[2]) == {"header.oldest-pass": "0", "smtp.remote-ip": "192.0.2.1"}
    assert "arc=pass (as[1].d=lists.example.org as[2].d=fwd.example.net)" in value
    assert top_level_clauses(value)[3].startswith("arc=pass ")


def test_arc_oldest_pass_and_ipv6_remote_ip() -> None:
    value = build_authentication_results(
        AUTHSERV, results(arc=chain(oldest_pass=2)), client_ip="IPv6:2001:DB8::1"
    )
    (_dkim, arc) = parse(value).results
    # An IPv6 address is not a token: it is quoted, and authres reads it back.
    assert props(arc) == {"header.oldest-pass": "2", "smtp.remote-ip": "2001:db8::1"}
    assert 'smtp.remote-ip="2001:db8::1"' in value


@pytest.mark.parametrize("result", ["fail", "none"])
def test_arc_without_pass_has_no_oldest_pass(result: str) -> None:
    arc = chain(result, sealers=() if result == "none" else ("lists.example.org",), reason="why")
    value = build_authentication_results(AUTHSERV, results(arc=arc), client_ip="192.0.2.1")
    (_dkim, clause) = parse(value).results
    assert (clause.method, clause.result) == ("arc", result)
    assert props(clause) == {"smtp.remote-ip": "192.0.2.1"}
    # A failed chain says why; "none" needs no reason.
    assert clause.reason == ("why" if result == "fail" else None)


def test_arc_without_client_ip_or_unusable_one() -> None:
    for client_ip in (None, "not an address", "unknown"):
        value = build_authentication_results(AUTHSERV, results(arc=chain()), client_ip=client_ip)
        (_dkim, arc) = parse(value).results
        assert props(arc) == {"header.oldest-pass": "0"}


def test_no_arc_result_no_arc_clause() -> None:
    value = build_authentication_results(AUTHSERV, results(spf_mailfrom(), (sig(),), dmarc()))
    assert [r.method for r in parse(value).results] == ["spf", "dkim", "dmarc"]
    assert "\tarc=" not in value


def test_long_chain_comment_is_capped() -> None:
    sealers = tuple(f"sealer-{n:02d}.{'x' * 40}.example" for n in range(50))
    value = build_authentication_results(AUTHSERV, results(arc=chain(sealers=sealers)))
    line = next(line for line in value.split("\r\n\t") if line.startswith("arc="))
    assert len(line) < 400
    assert "as[1].d=sealer-00." in line and "...)" in line


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_sealers_and_reason_cannot_inject(hostile: str) -> None:
    arc = chain("fail", sealers=(hostile, "ok.example", hostile), reason=hostile)
    value = build_authentication_results(AUTHSERV, results(spf_mailfrom(), arc=arc), client_ip=hostile)
    lines = value.split("\r\n\t")
    assert all(line.isascii() and line.isprintable() for line in lines), lines
    assert all(len(line) < 400 for line in lines)
    # The hostile sealers are left out of the comment; the plain one keeps its instance number.
    assert "(as[2].d=ok.example)" in value
    clauses = top_level_clauses(value)
    assert [c.split("=", 1)[0] for c in clauses[1:]] == ["spf", "dkim", "arc"]
    header = parse(value)
    assert [(r.method, r.result) for r in header.results] == [
        ("spf", "pass"),
        ("dkim", "none"),
        ("arc", "fail"),
    ]
    assert props(header.results[2]) == {}  # a hostile client_ip is no address
    naive = [part.strip() for part in unfold(value).split(";")]
    assert len(naive) == 4
    assert "dkim=pass" not in value


# --- forged header detection ----------------------------------------------------------------------


def ar(value: bytes, name: bytes = b"Authentication-Results") -> Header:
    return Header(name, value)


def deleted(*headers: Header, authserv_id: str = AUTHSERV) -> list[int]:
    found = forged_headers(headers, authserv_id)
    assert all(d.name == "Authentication-Results" for d in found)
    return [d.occurrence for d in found]


@pytest.mark.parametrize(
    "value",
    [
        b" mx.example.com; spf=pass smtp.mailfrom=example.com",
        b' "mx.example.com"; dkim=pass header.d=example.com',
        b' "mx.\\example.com"; dkim=pass',
        b' "\r\n\tmx.example.com"; dkim=pass',
        b" (x) mx.example.com (y); spf=pass",
        b" (outer (nested) text) mx.example.com; spf=pass",
        b" (a \\) tricky \\( comment) mx.example.com; spf=pass",
        b" MX.EXAMPLE.COM; spf=pass",
        b" Mx.Example.Com.; spf=pass",
        b"\r\n\t(folded\r\n comment)\r\n mx.example.com\r\n\t; spf=pass",
        b"mx.example.com;spf=pass",
        b" mx.example.com 1; spf=pass",
        b" mx.example.com(comment); spf=pass",
        b" mx.example.com; none",
        b" mx.example.com",
    ],
)
def test_claims_our_id(value: bytes) -> None:
    assert deleted(ar(value)) == [1]


@pytest.mark.parametrize(
    "value",
    [
        b" other.example.net; spf=pass",
        b" mx.example.com.evil; spf=pass",
        b" evil.mx.example.com; spf=pass",
        b" mx-example.com; spf=pass",
        b' "mx.example.com.evil"; spf=pass',
        b" (mx.example.com) other.example.net; spf=pass",
        b" other.example.net; spf=pass (mx.example.com) smtp.mailfrom=mx.example.com",
        b' "mx.example\r\n\t.com"; spf=pass',
        b"",
        b"   ",
        b" ;;;",
        b" \xff\xfe garbage; spf=pass",
    ],
)
def test_others_are_kept(value: bytes) -> None:
    assert deleted(ar(value)) == []


@pytest.mark.parametrize(
    "value",
    [
        b" (unterminated comment mx.example.com; spf=pass",
        b' "unterminated mx.example.com; spf=pass',
        b" mx.example.com\xff; spf=pass",
        b" \xe2\x80\x8bmx.example.com; spf=pass",
        b" mx.example.com/x; spf=pass",
        b' mx.example.com"junk"; spf=pass',
        b" mx.example.com.\x00; spf=pass",
    ],
)
def test_garbage_mentioning_our_id_is_deleted(value: bytes) -> None:
    assert deleted(ar(value)) == [1]


def test_occurrences_count_all_names_case_insensitively_and_descend() -> None:
    headers = [
        Header(b"Received", b" from a"),
        ar(b" other.example; spf=pass"),  # 1, kept
        ar(b" mx.example.com; spf=pass", b"authentication-results"),  # 2
        Header(b"ARC-Authentication-Results", b" i=1; mx.example.com; spf=pass"),
        Header(b"X-Authentication-Results", b" mx.example.com; spf=pass"),
        ar(b" other.example; dkim=pass", b"AUTHENTICATION-RESULTS"),  # 3, kept
        ar(b" (c) MX.example.com.; dmarc=pass", b"Authentication-results"),  # 4
        Header(b"Subject", b" mx.example.com; spf=pass"),
        ar(b" mx.example.com; dkim=pass"),  # 5
    ]
    assert forged_headers(headers, AUTHSERV) == (
        HeaderDelete("Authentication-Results", 5),
        HeaderDelete("Authentication-Results", 4),
        HeaderDelete("Authentication-Results", 2),
    )


def test_our_id_given_with_case_and_dot() -> None:
    assert deleted(ar(b" mx.example.com; spf=pass"), authserv_id="MX.Example.com.") == [1]


def test_no_headers() -> None:
    assert forged_headers([], AUTHSERV) == ()
