"""The `authmilter` command: serve the milter, check a message, and the tools around them."""

from __future__ import annotations

import argparse
import dataclasses
import email.utils
import importlib.metadata
import ipaddress
import json
import logging
import os
import pwd
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from authmilter.app import App, AppHolder, build_app
from authmilter.core.decision import explain
from authmilter.core.message import split_message
from authmilter.core.model import Header, Transaction, Verdict
from authmilter.defaults import SAMPLE_CONFIG, SYSTEM_CONFIG
from authmilter.files.access import (
    SERVICE_USER,
    AccessUnknown,
    Account,
    find_account,
    service_account,
    unreadable_as,
)
from authmilter.files.config import ConfigError, load_config, parse_workers, worker_count
from authmilter.files.policy import PolicyError, lint, load_policy
from authmilter.files.signing import SigningError
from authmilter.observe.logs import setup_logging
from authmilter.observe.metrics import enable_multiprocess
from authmilter.observe.verdicts import verdict_to_dict
from authmilter.store.history import HistoryStore
from authmilter.store.sqlite import SqliteStore

log = logging.getLogger("authmilter")

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h: systemd and operators read it as "fix the config"
EXIT_USAGE = 64


def _config_path(given: str | None) -> str:
    """-c, else the system-wide config; exits 78 saying what to do when that is missing."""
    if given:
        return given
    if not SYSTEM_CONFIG.exists():
        print(f"authmilter: no config: {SYSTEM_CONFIG} (read when -c is not given) does not exist.\n"
              f"  Start from the sample: authmilter sample-config > {SYSTEM_CONFIG}\n"
              "  or name a config file with -c FILE.", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG)
    return str(SYSTEM_CONFIG)


def _load(path: str | None, *, serving: bool = False, workers: int | str | None = None) -> App:
    """`serving`: for `serve`, the one command that keeps metrics and writes the history."""
    path = _config_path(path)
    try:
        config = load_config(path)
        if workers is not None:  # serve --workers overrides the file
            config = dataclasses.replace(config, workers=workers)
        if serving:
            # Before the app is built: what loading it warns about (a key that cannot be read)
            # goes out in the configured format and target, like every later line.
            setup_logging(config.log_level, config.log_format, config.log_target, config.syslog_socket)
        metrics_dir = None
        if serving and config.metrics_listen and worker_count(config.workers) > 1:
            metrics_dir = enable_multiprocess()
        return build_app(config, with_metrics=serving, with_history=serving, metrics_dir=metrics_dir)
    except ConfigError as e:
        print(f"authmilter: config error: {e}", file=sys.stderr)
    except PolicyError as e:
        print(f"authmilter: policy error:\n{e}", file=sys.stderr)
    except SigningError as e:
        print(f"authmilter: signing error:\n{e}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def cmd_serve(args: argparse.Namespace) -> int:
    app = _load(args.config, serving=True, workers=args.workers)
    config = app.config
    workers = worker_count(config.workers)
    log.info("starting on %s (config %s, %d policy rules, %d worker%s)", config.socket, config.path,
             len(app.policy.rules), workers, "" if workers == 1 else "s")
    # Imported here so that `check` and `policy lint` work where libmilter is not installed.
    if workers == 1:
        from authmilter.milter import adapter as milter

        rc = milter.run(AppHolder(app))
    else:
        from authmilter.milter import pool

        rc = pool.supervise(AppHolder(app), workers)
    log.info("stopped")
    return rc


def _workers_arg(text: str) -> int | str:
    try:
        return parse_workers(int(text) if text.strip().isdigit() else text.strip())
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _envelope(args: argparse.Namespace, headers: Sequence[Header]) -> tuple[str, str, tuple[str, ...]]:
    """HELO, MAIL FROM and RCPT TO: as given, or assumed from the message, saying so on stderr."""
    def field(name: str) -> str:
        return ", ".join(h.value.decode("utf-8", "replace") for h in headers
                         if h.name.decode("ascii", "replace").strip().lower() == name)

    assumed: list[str] = []
    helo = args.helo
    if helo is None:
        helo = f"[{args.client_ip}]"
        assumed.append(f"--helo {helo} (the client's address literal)")
    if args.mail_from is None:
        found = [a for _, a in email.utils.getaddresses([field("from")]) if "@" in a]
        mail_from = found[0] if found else ""
        why = "the From field" if found else "the null sender: the From field has no address"
        assumed.append(f"--mail-from {mail_from or '<>'} ({why})")
    else:
        mail_from = args.mail_from.strip()
        if mail_from.startswith("<") and mail_from.endswith(">"):
            mail_from = mail_from[1:-1]
    rcpts = tuple(args.rcpt or ())
    if not rcpts:
        rcpts = tuple(dict.fromkeys(a for _, a in email.utils.getaddresses([field("to"), field("cc")])
                                    if "@" in a))
        assumed.append(f"--rcpt {' '.join(rcpts) or '(none)'} (the To and Cc fields)")
    if assumed:
        print("authmilter: assumed " + "; ".join(assumed), file=sys.stderr)
    return helo, mail_from, rcpts


def cmd_check(args: argparse.Namespace) -> int:
    app = _load(args.config)
    setup_logging("debug" if args.verbose else "warning")
    try:
        raw = Path(args.message).read_bytes() if args.message != "-" else sys.stdin.buffer.read()
    except OSError as e:
        print(f"authmilter: cannot read {args.message}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    notes: list[str] = []
    headers, body = split_message(raw, notes)
    for note in notes:
        print(f"authmilter: note: {note}", file=sys.stderr)
    helo, mail_from, rcpts = _envelope(args, headers)
    tx = Transaction(
        client_ip=args.client_ip,
        helo=helo,
        mail_from=mail_from,
        rcpts=rcpts,
        headers=headers,
        body=body,
        queue_id="check",
        macros={"{auth_authen}": args.auth_user or "", "{daemon_name}": args.daemon or ""},
    )
    verdict = _check_with_store(app, tx, args.store)
    if args.json:
        print(json.dumps(verdict_to_dict(verdict), indent=2))
    else:
        if verdict.authentication_results:
            print(f"Authentication-Results: {verdict.authentication_results}")
        for ins in verdict.header_inserts:
            if ins.name != "Authentication-Results":
                print(f"{ins.name}: {ins.value}")
        if verdict.signing is not None:
            s = verdict.signing
            print(f"signing ({verdict.outbound}): {s.status}" + (f": {s.reason}" if s.reason else ""))
        for d in verdict.header_deletes:
            print(f"(deleted forged Authentication-Results #{d.occurrence})")
        reply = f" {verdict.reply.code} {verdict.reply.status} {verdict.reply.text}" if verdict.reply else ""
        print(f"action: {verdict.action.value}{reply}")
        for rcpt, r in verdict.rejected_rcpts:
            print(f"rcpt {rcpt}: refused at RCPT: {r.code} {r.status} {r.text}")
        if verdict.errors:
            print(f"error: {verdict.reason}: {verdict.errors[-1].strip().splitlines()[-1]}")
    if args.explain:
        if verdict.decision is None:
            print("\nexplain: no policy decision was made (fail-safe)")
        else:
            print()
            for line in explain(verdict.decision):
                print(line)
        for line in _antispam_lines(verdict, args.store):
            print(line)
    return 0


def _check_with_store(app: App, tx: Transaction, which: str) -> Verdict:
    """`check` counts greylisting and rate limits in a fresh, empty store unless told to use the
    configured one: a look at a message must not let its sender through greylisting later."""
    if which == "configured" or app.store is None:
        return app.evaluate_transaction(tx)
    with tempfile.TemporaryDirectory(prefix="authmilter-check-") as scratch:
        store = SqliteStore(Path(scratch) / "state.db")
        try:
            return app.evaluate_transaction(tx, store=store)
        finally:
            store.close()


def _antispam_lines(verdict: Verdict, which: str) -> list[str]:
    res = verdict.results
    if res is None:
        return []
    lines: list[str] = []
    if res.dnslists is not None:
        lines.append("dns lists:")
        for r in res.dnslists.results:
            kind = "allow" if r.allow else "block"
            what = f" {', '.join(r.codes)}" if r.codes else ""
            means = f" ({'; '.join(r.meanings)})" if r.meanings else ""
            why = f": {r.reason}" if r.reason else ""
            lines.append(f"  {r.list_name} ({kind}, {r.identity}) {r.queried}: {r.status}{what}{means}{why}")
    store = ("the configured store" if which == "configured"
             else "a fresh, empty store; --store configured counts in the real one")
    if res.greylist:
        lines.append(f"greylisting ({store}):")
        for g in res.greylist:
            wait = f", retry in {g.wait:.0f} s" if g.deferred else ""
            lines.append(f"  {g.rcpt}: {g.state}{wait}" + (f" [{g.key}]" if g.key else "")
                         + (f": {g.error}" if g.error else ""))
    if res.rates:
        lines.append(f"rate limits ({store}):")
        for rate in res.rates:
            state = "exceeded" if rate.exceeded else (
                f"not counted: {rate.error}" if rate.error else "within")
            lines.append(f"  {rate.limit} [{rate.key}]: {state}, {rate.tokens_left:.1f} tokens left")
    return ["", *lines] if lines else []


def cmd_policy_lint(args: argparse.Namespace) -> int:
    # Files named together are one set, read in order as the milter reads a config's `policy`.
    # A folder's *.toml are each linted on their own: a folder of policies (policies/examples)
    # holds alternatives, not one set; `lint -c CONFIG` checks the set a config really uses.
    sets: list[list[str]] = []
    named: list[str] = []
    for given in args.files:
        if Path(given).is_dir():
            found = sorted(str(p) for p in Path(given).glob("*.toml") if p.is_file())
            if not found:
                print(f"authmilter: policy lint: {given} is a folder with no *.toml file", file=sys.stderr)
                return EXIT_USAGE
            sets += [[f] for f in found]
        else:
            named.append(given)
    if named:
        sets.insert(0, named)
    if not sets and args.config:
        try:
            sets = [list(load_config(args.config).policy_files)]
        except ConfigError as e:
            print(f"authmilter: config error: {e}", file=sys.stderr)
            return EXIT_CONFIG
    files = [f for group in sets for f in group]
    if not files:
        print("authmilter: policy lint: name policy files or folders, or a config with -c", file=sys.stderr)
        return EXIT_USAGE
    problems = [p for group in sets for p in lint(group)]
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(files)} file(s)")
    return 0


def _key_account(name: str | None) -> Account | None:
    """The account keys are made and checked for: --user, else the service's when run as root.

    Raises ValueError naming an account that does not exist.
    """
    if name is None:
        return service_account()
    account = find_account(name)
    if account is None:
        raise ValueError(f"--user {name}: no such account")
    return account


def cmd_genkey(args: argparse.Namespace) -> int:
    # Imported here, like the milter, so that the other commands do not pay for key tooling.
    from authmilter.files.keys import KeyToolError, generate_key

    if args.type == "ed25519" and args.bits is not None:
        print("authmilter: genkey: --bits applies to RSA keys only", file=sys.stderr)
        return EXIT_USAGE
    try:
        owner = _key_account(args.user)
    except ValueError as e:
        print(f"authmilter: genkey: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        key = generate_key(args.domain, args.selector, args.type, args.bits or 2048, args.out, owner)
    except KeyToolError as e:
        print(f"authmilter: genkey: {e}", file=sys.stderr)
        return 1
    # stdout is only the record, so it can go straight into a zone file. Flushed before the
    # hint on stderr, so that piped or captured together they come out in this order.
    print(key.zone_text, flush=True)
    who = owner.name if owner is not None else pwd.getpwuid(os.geteuid()).pw_name
    print(f"authmilter: wrote {key.path} ({key.algorithm}, owner {who}, mode 0600). Publish the record "
          f"above, then add to the signing file:\n\n[keys.NAME]\ndomain = \"{key.domain}\"\n"
          f"selector = \"{key.selector}\"\nfile = \"{key.path}\"", file=sys.stderr)
    if owner is None and os.geteuid() == 0:
        print(f"authmilter: warning: the key is root's: no account {SERVICE_USER} exists here, so the "
              "milter's account cannot read it. Make keys with --user ACCOUNT (the account the milter "
              "runs as), or chown the file to it.", file=sys.stderr)
    elif owner is not None and (problem := _unreadable(owner, [key.path])):
        print(f"authmilter: warning: {problem}", file=sys.stderr)
    return 0


def _unreadable_keys(account: Account | None, paths: list[str]) -> dict[str, str]:
    """{path: why the milter's account cannot read it}, saying on stderr whom that was asked of.

    testkey loads the keys as whoever runs it; the milter reads them as its own account.
    """
    me = pwd.getpwuid(os.geteuid()).pw_name
    if account is None:
        if os.geteuid() == 0:
            print(f"authmilter: note: no account {SERVICE_USER} here: keys were read as root only; "
                  "--user ACCOUNT checks them as the account the milter runs as", file=sys.stderr)
        elif me != SERVICE_USER:
            print(f"authmilter: note: keys were read as {me}; the milter reads them as its own account "
                  f"({SERVICE_USER} in the shipped unit): run testkey as root, or with --user",
                  file=sys.stderr)
        return {}
    try:
        failed = unreadable_as(account, paths)
    except AccessUnknown as e:
        print(f"authmilter: note: keys were read as {me}: {e}", file=sys.stderr)
        return {}
    return {path: f"the milter's account {account.name} cannot read {path}: {reason}; chown "
                  f"{account.name} it (genkey --user does), and check every directory above it"
            for path, reason in failed.items()}


def _unreadable(account: Account, paths: list[str]) -> str:
    """Why `account` cannot read one of `paths` ("" when it can read them all, or cannot be asked)."""
    try:
        failed = unreadable_as(account, paths)
    except AccessUnknown:
        return ""
    return "; ".join(f"{account.name} cannot read {path}: {reason} (check the file and every directory "
                     "above it)" for path, reason in failed.items())


def cmd_testkey(args: argparse.Namespace) -> int:
    from authmilter.dns import DnsResolver
    from authmilter.files.keys import check_published
    from authmilter.files.signing import SigningError, load_signing

    try:
        config = load_config(_config_path(args.config))
    except ConfigError as e:
        print(f"authmilter: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    path = args.signing or config.signing_file
    if not path:
        print("authmilter: testkey: the config names no signing file (signing = ...); "
              "give one with --signing", file=sys.stderr)
        return EXIT_USAGE
    try:
        signing, warnings = load_signing(path)
    except SigningError as e:
        print(f"authmilter: signing error:\n{e}", file=sys.stderr)
        return EXIT_CONFIG
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    try:
        account = _key_account(args.user)
    except ValueError as e:
        print(f"authmilter: testkey: {e}", file=sys.stderr)
        return EXIT_USAGE
    unreadable = _unreadable_keys(account, [k.source for k in signing.keys.values() if k.source])
    # The resolver the milter would use, uncached: each record is asked for once anyway.
    dns = config.dns
    resolver = DnsResolver(nameservers=list(dns.nameservers), port=dns.port, timeout=dns.timeout)
    names = sorted(set(signing.keys) | set(signing.unavailable))
    failed = 0
    for name in names:
        key = signing.keys.get(name)
        if key is None:
            print(f"FAIL {name}: key unavailable: {signing.unavailable[name]}")
            failed += 1
            continue
        if key.source in unreadable:
            print(f"FAIL {name}: {unreadable[key.source]}")
            failed += 1
            continue
        check = check_published(key, resolver)
        for note in check.warnings:
            print(f"warning: {name}: {note}", file=sys.stderr)
        print(f"{'ok' if check.ok else 'FAIL'} {name}: {check.reason}")
        failed += not check.ok
    if failed:
        print(f"{failed} of {len(names)} key(s) failed", file=sys.stderr)
        return 1
    print(f"ok: {len(names)} key(s) published and matching")
    return 0


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def _since_arg(text: str) -> int:
    """"7d", "36h", "2w" back from now, or a UTC date YYYY-MM-DD: seconds since the epoch."""
    import datetime as dt
    import time

    t = text.strip().lower()
    if t[:-1].isdigit() and t[-1:] in _UNITS:
        return int(time.time()) - int(t[:-1]) * _UNITS[t[-1]]
    try:
        day = dt.datetime.strptime(t, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a duration like 7d, 36h, 2w, or a "
                                         "UTC date YYYY-MM-DD") from None
    return int(day.timestamp())


def _day_arg(text: str) -> str:
    import datetime as dt

    try:
        return dt.datetime.strptime(text.strip(), "%Y-%m-%d").strftime("%Y-%m-%d")
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a UTC date YYYY-MM-DD") from None


def _history_store(args: argparse.Namespace) -> tuple[App, HistoryStore] | int:
    from authmilter.app import open_history
    from authmilter.store.base import StoreError

    app = _load(args.config)
    setup_logging("warning")
    if not app.config.history.enabled:
        print(f"authmilter: {app.config.path}: [history] enabled = false: nothing is recorded",
              file=sys.stderr)
        return EXIT_CONFIG
    try:
        return app, open_history(app.config.history, app.config.store)
    except StoreError as e:
        print(f"authmilter: history: {e}", file=sys.stderr)
        return 1


def cmd_policy_preview(args: argparse.Namespace) -> int:
    import time

    from authmilter.reports.preview import Previewer, render_text
    from authmilter.store.base import StoreError

    try:
        draft = load_policy(args.files)
    except PolicyError as e:
        print(f"authmilter: policy error:\n{e}", file=sys.stderr)
        return EXIT_CONFIG
    opened = _history_store(args)
    if isinstance(opened, int):
        return opened
    _, history = opened
    until = args.until if args.until is not None else int(time.time()) + 1
    previewer = Previewer(draft, args.since, until, tuple(str(f) for f in args.files))
    try:
        previewer.add_all(history.records(args.since, until))
    except StoreError as e:
        print(f"authmilter: history: {e}", file=sys.stderr)
        return 1
    summary = previewer.summary()
    if args.json:
        print(json.dumps(dataclasses.asdict(summary), indent=2))
    else:
        sys.stdout.write(render_text(summary))
    if args.html:
        from authmilter.reports.preview_html import render_html

        Path(args.html).write_text(render_html(summary), encoding="utf-8")
        print(f"authmilter: wrote {args.html}", file=sys.stderr)
    return 0


def cmd_report_send(args: argparse.Namespace) -> int:
    import datetime as dt

    from authmilter.reports.send import send_day, smtp_deliver
    from authmilter.store.base import StoreError

    opened = _history_store(args)
    if isinstance(opened, int):
        return opened
    app, history = opened
    settings = app.config.reports
    if not settings.aggregate:
        print(f"authmilter: {app.config.path}: [reports] aggregate = false: nothing to send",
              file=sys.stderr)
        return 0
    if not (settings.org_name and settings.email):
        print(f"authmilter: {app.config.path}: [reports] needs org_name and email (who the "
              "reports come from)", file=sys.stderr)
        return EXIT_CONFIG
    day = args.day or (dt.datetime.now(dt.UTC) - dt.timedelta(days=1)).strftime("%Y-%m-%d")
    try:
        outcomes = send_day(history, app.resolver, settings, day,
                            deliver=smtp_deliver(settings.smtp), signing=app.signing,
                            dry_run=args.dry_run, domains=args.domain or ())
    except (StoreError, ValueError) as e:
        print(f"authmilter: report send: {e}", file=sys.stderr)
        return 1
    failed = 0
    for o in outcomes:
        print(f"{day} {o.domain}: {o.status} (report {o.report_id}, {o.messages} messages, {o.rows} rows)")
        for uri, what in o.destinations:
            print(f"  {uri}: {what}")
        if args.out and o.report is not None:
            Path(args.out, o.report.filename).write_bytes(o.report.gz)
            print(f"  wrote {Path(args.out, o.report.filename)}")
        failed += o.status.startswith("failed")
    if not outcomes:
        print(f"{day}: no reportable messages recorded")
    return 1 if failed else 0


def cmd_sample_config(args: argparse.Namespace) -> int:
    sys.stdout.write(SAMPLE_CONFIG.read_text())
    return 0


def _ip_arg(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IPv4 or IPv6 address") from None


def _version() -> str:
    try:
        return importlib.metadata.version("authmilter")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "(not installed)"


class _Parser(argparse.ArgumentParser):
    """Usage errors exit 64 (EX_USAGE), as the config errors exit 78: sysexits.h, not argparse's 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="authmilter", description=__doc__)
    p.add_argument("--version", action="version", version=f"authmilter {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    s = sub.add_parser("serve", help="run the milter")
    s.add_argument("-c", "--config", help=f"TOML config file (default {SYSTEM_CONFIG})")
    s.add_argument("--workers", type=_workers_arg, metavar="N",
                   help='worker processes, or "auto" for one per CPU (overrides the config\'s workers)')
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check", help="evaluate one message as the milter would")
    c.add_argument("-c", "--config", help=f"TOML config file (default {SYSTEM_CONFIG})")
    c.add_argument("--client-ip", required=True, type=_ip_arg, help="SMTP client address")
    c.add_argument("--helo", help="HELO/EHLO name (default: the client's address literal, [IP])")
    c.add_argument("--mail-from",
                   help='MAIL FROM address, "" for the null sender (default: the From field\'s address)')
    c.add_argument("--rcpt", action="append",
                   help="RCPT TO address, repeatable (default: the To and Cc fields' addresses)")
    c.add_argument("--auth-user", help="act as if the client authenticated (SASL) as this user")
    c.add_argument("--daemon", help="the MTA daemon name ({daemon_name}) the message came in on")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--explain", action="store_true", help="show each rule, each fact and what decided")
    c.add_argument("--store", choices=("fresh", "configured"), default="fresh",
                   help="greylisting and rate limits: count in a fresh, empty store (default) or in "
                        "the configured one, as the milter would")
    c.add_argument("-v", "--verbose", action="store_true", help="debug logging to stderr")
    c.add_argument("message", help="the message file (.eml), or - for standard input")
    c.set_defaults(func=cmd_check)

    pol = sub.add_parser("policy", help="policy file tools")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    lint_p = psub.add_parser("lint", help="validate policy files; exit 1 with file:line errors")
    lint_p.add_argument("-c", "--config", help="lint the policy files this config names")
    lint_p.add_argument("files", nargs="*", help="policy files, or folders (their *.toml)")
    lint_p.set_defaults(func=cmd_policy_lint)
    prev = psub.add_parser("preview", help="decide the recorded traffic again under draft policy files")
    prev.add_argument("-c", "--config", help=f"TOML config file, for its [history] (default {SYSTEM_CONFIG})")
    prev.add_argument("--since", type=_since_arg, default="7d",
                      help="from: a duration back from now (7d, 36h) or a UTC date (default 7d)")
    prev.add_argument("--until", type=_since_arg, help="to (default: now)")
    prev.add_argument("--json", action="store_true", help="print the summary as JSON")
    prev.add_argument("--html", metavar="FILE", help="also write a one-page report with charts")
    prev.add_argument("files", nargs="+", help="the draft's policy files, in order")
    prev.set_defaults(func=cmd_policy_preview)

    rep = sub.add_parser("report", help="DMARC reports from the recorded history")
    rsub = rep.add_subparsers(dest="report_command", required=True)
    send_p = rsub.add_parser("send", help="send one UTC day's aggregate reports (default: yesterday)")
    send_p.add_argument("-c", "--config", help=f"TOML config file (default {SYSTEM_CONFIG})")
    send_p.add_argument("--day", type=_day_arg, help="the UTC day, YYYY-MM-DD (default: yesterday)")
    send_p.add_argument("--domain", action="append", help="only this policy domain (repeatable)")
    send_p.add_argument("--dry-run", action="store_true",
                        help="build and check the reports, send nothing, claim nothing")
    send_p.add_argument("--out", metavar="DIR", help="also write each report's .xml.gz here")
    send_p.set_defaults(func=cmd_report_send)

    sc = sub.add_parser("sample-config", help="print the sample config, every key with its default")
    sc.set_defaults(func=cmd_sample_config)

    g = sub.add_parser("genkey",
                       help="make a DKIM key the milter can read (mode 0600) and print its DNS TXT record")
    g.add_argument("--domain", required=True, help="the signing domain (d=)")
    g.add_argument("--selector", required=True, help="the selector (s=)")
    g.add_argument("--type", choices=("rsa", "ed25519"), default="rsa", help="key type (default rsa)")
    g.add_argument("--bits", type=int, help="RSA key size: 2048 (default), 3072 or 4096")
    g.add_argument("--out", default=".", help="directory for DOMAIN.SELECTOR.pem (default: here)")
    g.add_argument("--user", metavar="ACCOUNT",
                   help=f"the account that will own the key, the one the milter runs as (root only; "
                        f"default for root: {SERVICE_USER}, when that account exists)")
    g.set_defaults(func=cmd_genkey)

    t = sub.add_parser("testkey", help="check that each signing key's DNS record matches the key")
    t.add_argument("-c", "--config",
                   help=f"TOML config file, for its [dns] and signing file (default {SYSTEM_CONFIG})")
    t.add_argument("--signing", help="the signing file, instead of the one the config names")
    t.add_argument("--user", metavar="ACCOUNT",
                   help=f"check that this account can read each key (default for root: {SERVICE_USER}, "
                        "when that account exists)")
    t.set_defaults(func=cmd_testkey)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
