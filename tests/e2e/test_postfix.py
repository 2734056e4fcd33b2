"""Through a real Postfix: the replies a sending server sees, and what lands in the mailbox.

One Postfix instance and one authmilter (shipped default policy) serve the whole module; see
conftest.py for how client addresses are presented and postfix.py for the instance itself.
"""

from __future__ import annotations

import functools
import os
import re
import signal
import threading
import time
from pathlib import Path

import dkim
import pytest

from authmilter.core.checks.dkim import verify_dkim
from tests.e2e import postfix
from tests.e2e.conftest import (
    AUTHSERV_ID,
    INTERNAL_IP,
    OUTSIDE_IP,
    RCPT,
    Rig,
    authserv_id,
    ours,
    sender_example,
    signed,
)
from tests.e2e.postfix import Reply
from tests.mailfactory import make_message
from tests.zoneresolver import ZoneResolver

# Header fields virtual(8) adds when it writes the Maildir file, above everything else.
DELIVERY_FIELDS = {"return-path", "x-original-to", "delivered-to"}


def assert_not_delivered(rig: Rig, message_id: str) -> None:
    # Once the queue has drained (hold aside), an accepted message would be in the Maildir:
    # virtual(8) renames it into new/ before the queue file goes.
    rig.postfix.wait_queue_empty()
    assert rig.postfix.with_id(message_id) == []


def assert_reply(reply: Reply, code: int, enhanced: str, stage: str = "eom") -> None:
    assert (reply.stage, reply.code) == (stage, code), str(reply)
    assert reply.text.split()[0] == enhanced, str(reply)


# --- accepted mail ---------------------------------------------------------------------------


def test_signed_mail_from_authorised_client_gets_one_header_of_ours_on_top(rig: Rig) -> None:
    mid = "<good@sender.example>"
    msg = signed("alice", mid, extra=(
        # Forged with our authserv-id: must go. Another ADMD's: not ours to judge, must stay.
        b"Authentication-Results: mx.test.example; dkim=pass header.d=forged.example",
        b"Authentication-Results: other.example; spf=pass smtp.mailfrom=other.example",
    ))

    reply = rig.send(msg, mail_from="alice@sender.example")

    assert reply.stage == "eom" and reply.code == 250, str(reply)
    [d] = rig.postfix.wait_delivered(mid)
    [ar] = ours(d)
    assert re.search(r"\bspf=pass\b", ar) and re.search(r"\bdkim=pass\b", ar), ar
    assert re.search(r"\bdmarc=pass\b", ar) and "header.from=sender.example" in ar, ar
    all_ar = d.headers("Authentication-Results")
    assert "forged.example" not in "\n".join(all_ar)
    assert [authserv_id(v) for v in all_ar] == [AUTHSERV_ID, "other.example"]
    # Observed order: virtual(8)'s delivery fields, then ours, then Postfix's own Received,
    # then the message as sent. The milter's insert at index 0 lands above Postfix's Received.
    names = [n.lower() for n, _ in d.header_fields()]
    top = names.index("authentication-results")
    assert set(names[:top]) <= DELIVERY_FIELDS, names
    assert names[top + 1] == "received" and "by postfix.e2e.test" in d.header_fields()[top + 1][1]
    assert names[top + 2] == "dkim-signature", names


def test_local_submission_through_sendmail_passes_the_milter_too(rig: Rig) -> None:
    # non_smtpd_milters: Postfix presents pickup's mail to the milter as from localhost
    # [127.0.0.1], which the default policy accepts as local submission; it is still reported.
    mid = "<local@sender.example>"
    msg = make_message(from_="alice@sender.example", to=RCPT, message_id=mid)

    rig.postfix.sendmail(msg, mail_from="alice@sender.example", rcpts=(RCPT,))

    [d] = rig.postfix.wait_delivered(mid)
    assert len(ours(d)) == 1, d.headers("Authentication-Results")


def test_mail_from_our_network_is_signed_and_the_signature_survives_postfix(rig: Rig) -> None:
    mid = "<outbound@sender.example>"
    msg = make_message(from_="Alice <alice@sender.example>", to=RCPT, message_id=mid,
                       extra_headers=(b"X-Eight-Bit: caf\xc3\xa9",))
    reply = rig.send(msg, mail_from="alice@sender.example", source_ip=INTERNAL_IP,
                     helo="workstation.sender.example")
    assert reply.code == 250, str(reply)
    [d] = rig.postfix.wait_delivered(mid)
    assert d.headers("DKIM-Signature") and not ours(d)  # signed, not verified (outbound)
    # As the next hop receives it: CRLF line ends, Postfix's Received and the Maildir's own
    # delivery headers above the signature. Our verifier and dkimpy's must both say pass.
    wire = d.raw.replace(b"\n", b"\r\n")
    resolver = ZoneResolver([sender_example()])
    assert [(r.result, r.domain) for r in verify_dkim(wire, resolver)] == [("pass", "sender.example")]

    def txt(name: bytes, timeout: int = 5) -> bytes | None:
        answer = resolver.query(name.decode().rstrip("."), "TXT")
        return answer.txt_strings()[0] if answer.ok else None

    assert dkim.verify(wire, dnsfunc=txt)


def test_our_header_has_a_space_after_the_colon_like_every_other_field(rig: Rig) -> None:
    mid = "<space@sender.example>"
    assert rig.send(signed("alice", mid), mail_from="alice@sender.example").code == 250
    [d] = rig.postfix.wait_delivered(mid)
    line = next(x for x in d.raw.split(b"\n") if x.lower().startswith(b"authentication-results:"))
    assert line.startswith(b"Authentication-Results: "), line


def test_dmarc_quarantine_goes_to_the_hold_queue(rig: Rig) -> None:
    mid = "<held@quarantine.example>"
    before = set(rig.postfix.queued().get("hold", []))
    msg = make_message(from_="bob@quarantine.example", to=RCPT, message_id=mid)

    reply = rig.send(msg, mail_from="bob@quarantine.example", source_ip=OUTSIDE_IP,
                     helo="mail.outside.example")

    assert reply.stage == "eom" and reply.code == 250, str(reply)  # quarantine is not a refusal
    assert_not_delivered(rig, mid)
    new = set(rig.postfix.queued().get("hold", [])) - before
    assert len(new) == 1, rig.postfix.queued()


# --- refusals --------------------------------------------------------------------------------


def test_spoof_of_p_reject_domain_from_outside_gets_550_5_7_26_at_end_of_data(rig: Rig) -> None:
    mid = "<spoof@sender.example>"
    msg = make_message(from_="Alice <alice@sender.example>", to=RCPT, message_id=mid)

    reply = rig.send(msg, mail_from="alice@sender.example", source_ip=OUTSIDE_IP,
                     helo="mail.outside.example")

    assert_reply(reply, 550, "5.7.26")
    assert "DMARC" in reply.text
    assert_not_delivered(rig, mid)


def test_dns_temperror_on_dmarc_policy_gets_451_4_7_x(rig: Rig) -> None:
    mid = "<temp@tempfail.example>"
    msg = make_message(from_="carol@tempfail.example", to=RCPT, message_id=mid)

    reply = rig.send(msg, mail_from="carol@tempfail.example", helo="mail.tempfail.example")

    assert (reply.stage, reply.code) == ("eom", 451), str(reply)
    assert reply.text.startswith("4.7."), str(reply)
    assert_not_delivered(rig, mid)


@pytest.mark.parametrize("case", ["missing", "duplicate"])
def test_missing_or_duplicate_from_gets_550_5_7_x(rig: Rig, case: str) -> None:
    mid = f"<from-{case}@sender.example>"
    msg = make_message(from_="Alice <alice@sender.example>", to=RCPT, message_id=mid)
    if case == "missing":
        msg = msg.replace(b"From: Alice <alice@sender.example>\r\n", b"")
    else:
        msg = msg.replace(b"To:", b"From: mallory@outside.example\r\nTo:", 1)

    reply = rig.send(msg, mail_from="alice@sender.example")

    assert (reply.stage, reply.code) == ("eom", 550), str(reply)
    assert reply.text.startswith("5.7."), str(reply)
    assert_not_delivered(rig, mid)


# --- header forms a reader and the milter must agree on ---------------------------------------
# What Postfix 3.7 was seen to do with them: it hands "From :" and "From\t:" to milters under the
# bare name "From"; it counts "Authentication-Results :" among the Authentication-Results fields
# for smfi_chgheader; and it hands over, and delivers, a header value only up to its first NUL.


@pytest.mark.parametrize("colon", [b" :", b"\t:"], ids=["space", "tab"])
def test_from_with_white_space_before_the_colon_is_a_second_from(rig: Rig, colon: bytes) -> None:
    mid = f"<obs-from-{len(colon)}-{colon[0]}@outside.example>"
    msg = make_message(from_="mallory@outside.example", to=RCPT, message_id=mid,
                       extra_headers=(b"From" + colon + b" Alice <alice@sender.example>",))

    reply = rig.send(msg, mail_from="mallory@outside.example", source_ip=OUTSIDE_IP,
                     helo="mail.outside.example")

    assert (reply.stage, reply.code) == ("eom", 550), str(reply)
    assert reply.text.startswith("5.7.1"), str(reply)
    assert_not_delivered(rig, mid)


def test_forged_results_with_white_space_before_the_colon_are_deleted(rig: Rig) -> None:
    mid = "<obs-ar@sender.example>"
    # On top of the signed message: dkimpy's signer cannot parse the old form.
    msg = b"Authentication-Results : mx.test.example; dmarc=pass header.d=forged\r\n" + signed("alice", mid)

    reply = rig.send(msg, mail_from="alice@sender.example")

    assert reply.code == 250, str(reply)
    [d] = rig.postfix.wait_delivered(mid)
    assert b"forged" not in d.raw
    assert [authserv_id(v) for v in d.headers("Authentication-Results")] == [AUTHSERV_ID]


def test_a_nul_in_from_cuts_the_field_for_the_milter_and_the_reader_alike(rig: Rig) -> None:
    mid = "<nul-from@outside.example>"
    msg = make_message(from_="mallory@outside.example\x00, Alice <alice@sender.example>", to=RCPT,
                       message_id=mid)

    reply = rig.send(msg, mail_from="mallory@outside.example", source_ip=OUTSIDE_IP,
                     helo="mail.outside.example")

    # The milter judged the From Postfix handed over, and that is the From the mailbox gets.
    assert reply.code == 250, str(reply)
    [d] = rig.postfix.wait_delivered(mid)
    assert d.headers("From") == ["mallory@outside.example"]
    assert b"\x00" not in d.raw and b"alice@sender.example" not in d.raw
    [ar] = ours(d)
    assert "header.from=outside.example" in ar, ar


# --- failure and change of the milter --------------------------------------------------------


def test_nothing_is_lost_while_authmilter_is_down(rig: Rig) -> None:
    mid = "<while-down@sender.example>"
    msg = signed("alice", mid)
    rig.milter.stop()
    try:
        down = rig.send(msg, mail_from="alice@sender.example")
    finally:
        # Whatever happened, the rest of the module gets a milter on the configured port again.
        rig.restart_milter()

    # milter_default_action = tempfail: Postfix cannot reach the milter at CONNECT and refuses
    # the transaction with a 4xx, so the sender keeps the message and retries.
    assert 400 <= down.code < 500, str(down)
    assert_not_delivered(rig, mid)

    again = rig.send(msg, mail_from="alice@sender.example")

    assert again.stage == "eom" and again.code == 250, str(again)
    rig.postfix.wait_delivered(mid)
    rig.postfix.wait_queue_empty()
    assert len(rig.postfix.with_id(mid)) == 1


def test_sighup_during_a_stream_loses_and_duplicates_nothing(rig: Rig) -> None:
    threads_n, per_thread = 4, 10
    total = threads_n * per_thread
    hup_after = (4, 12, 20, 28)  # replies seen before each SIGHUP: every one lands mid-stream
    proc = rig.milter.proc
    assert proc is not None
    replies: dict[str, Reply] = {}
    lock = threading.Lock()
    progress = threading.Condition(lock)
    errors: list[BaseException] = []

    def stream(t: int) -> None:
        # One SMTP session per thread: Postfix keeps one milter connection per session, so a
        # reload hits connections that already have transactions behind and ahead of them.
        try:
            with rig.client() as c:
                for i in range(per_thread):
                    mid = f"<stream-{t}-{i}@sender.example>"
                    reply = c.send(signed("alice", mid), mail_from="alice@sender.example", rcpts=(RCPT,))
                    with progress:
                        replies[mid] = reply
                        progress.notify_all()
        except BaseException as e:
            with progress:
                errors.append(e)
                progress.notify_all()

    def reached(mark: int) -> bool:
        return len(replies) >= mark or bool(errors)

    reloads_before = rig.milter.log().count("reloaded")
    workers = [threading.Thread(target=stream, args=(t,), daemon=True) for t in range(threads_n)]
    for w in workers:
        w.start()
    sent_hups = 0
    deadline = time.monotonic() + 60
    for mark in hup_after:
        with progress:
            progress.wait_for(functools.partial(reached, mark),
                              timeout=max(0.0, deadline - time.monotonic()))
        os.kill(proc.pid, signal.SIGHUP)
        sent_hups += 1
        # Wait for this reload to show before the next SIGHUP, so none is merged with another.
        wait_until = time.monotonic() + 10
        while rig.milter.log().count("reloaded") < reloads_before + sent_hups:
            assert time.monotonic() < wait_until, f"no reload logged after SIGHUP {sent_hups}"
            time.sleep(0.02)
    for w in workers:
        w.join(max(0.0, deadline - time.monotonic()))

    assert not errors, errors
    assert not any(w.is_alive() for w in workers), "SMTP stream did not finish within 60s"
    assert len(replies) == total
    bad = {mid: str(r) for mid, r in replies.items() if (r.stage, r.code) != ("eom", 250)}
    assert not bad
    assert proc.poll() is None, "authmilter exited on SIGHUP"
    rig.postfix.wait_queue_empty()
    for mid in replies:
        assert len(rig.postfix.with_id(mid)) == 1, mid
    log = rig.milter.log()
    assert log.count("reloaded") - reloads_before == sent_hups == len(hup_after)
    # Every message of the stream got its own verdict line, none of them a failure.
    verdicts = [x for x in log.splitlines() if "helo=mail.sender.example" in x and "action=" in x]
    assert sum("action=accept" in x for x in verdicts) >= total


# --- installation ----------------------------------------------------------------------------

FAKE_APT = """#!/bin/sh
echo "$*" >> "{log}"
case "$*" in
  *update*) echo "W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease"; exit 0 ;;
esac
echo "E: Unable to locate package postfix" >&2
exit 100
"""


def test_install_failure_is_an_error_not_a_skip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Offline, apt cannot find the package even after an update: a clear error, never a skip.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(FAKE_APT.format(log=calls))
    (bin_dir / "debconf-set-selections").write_text("#!/bin/sh\ncat > /dev/null\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(postfix, "POSTFIX", tmp_path / "no" / "postfix")

    with pytest.raises(postfix.PostfixUnavailable, match="Unable to locate package postfix"):
        postfix.ensure_installed(timeout=60)

    lines = calls.read_text().splitlines()
    # apt's simulation, asked whether Postfix would remove another MTA, before and after: no.
    simulations = [line for line in lines if line.startswith("install -s ")]
    assert len(simulations) == 2
    verbs = [line.split()[2] for line in lines if line not in simulations]
    assert verbs == ["install", "update", "install"]  # update only once install said "unknown"


def test_another_mta_that_postfix_would_remove_is_a_skip_reason_and_nothing_is_installed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "apt.log"
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\n'
                                     'echo "Remv sendmail-bin [8.17.1.9-2+deb12u2]"\n'
                                     'echo "Inst postfix (3.7.11-0+deb12u1 Debian:12.15 [amd64])"\n')
    (bin_dir / "debconf-set-selections").write_text("#!/bin/sh\ncat > /dev/null\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(postfix, "POSTFIX", tmp_path / "no" / "postfix")
    with pytest.raises(postfix.PostfixClash, match="installing Postfix would remove sendmail-bin"):
        postfix.ensure_installed(timeout=60)
    assert [line.split()[:2] for line in calls.read_text().splitlines()] == [["install", "-s"]]
