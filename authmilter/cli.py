"""The `authmilter` command: serve, check."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from authmilter.app import App, AppHolder, build_app
from authmilter.config import ConfigError, load_config
from authmilter.core.message import split_message
from authmilter.core.model import Transaction
from authmilter.core.policy import explain
from authmilter.logsetup import setup_logging
from authmilter.policyfile import PolicyError, lint
from authmilter.report import verdict_to_dict

log = logging.getLogger("authmilter")

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h: systemd and operators read it as "fix the config"
EXIT_USAGE = 64


def _load(path: str, *, with_metrics: bool = False) -> App:
    try:
        return build_app(load_config(path), with_metrics=with_metrics)
    except ConfigError as e:
        print(f"authmilter: config error: {e}", file=sys.stderr)
    except PolicyError as e:
        print(f"authmilter: policy error:\n{e}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def cmd_serve(args: argparse.Namespace) -> int:
    app = _load(args.config, with_metrics=True)
    config = app.config
    setup_logging(config.log_level, config.log_format, config.log_target, config.syslog_socket)
    # Imported here so that `check` and `policy lint` work where libmilter is not installed.
    from authmilter import milter

    log.info("starting on %s (config %s, %d policy rules)", config.socket, config.path,
             len(app.policy.rules))
    rc = milter.run(AppHolder(app))
    log.info("stopped")
    return rc


def cmd_check(args: argparse.Namespace) -> int:
    app = _load(args.config)
    setup_logging("debug" if args.verbose else "warning")
    try:
        raw = Path(args.message).read_bytes() if args.message != "-" else sys.stdin.buffer.read()
    except OSError as e:
        print(f"authmilter: cannot read {args.message}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    headers, body = split_message(raw)
    mail_from = args.mail_from.strip()
    if mail_from.startswith("<") and mail_from.endswith(">"):
        mail_from = mail_from[1:-1]
    tx = Transaction(
        client_ip=args.client_ip,
        helo=args.helo,
        mail_from=mail_from,
        rcpts=tuple(args.rcpt or ()),
        headers=headers,
        body=body,
        queue_id="check",
        macros={"{auth_authen}": args.auth_user or "", "{daemon_name}": args.daemon or ""},
    )
    verdict = app.evaluate_transaction(tx)
    if args.json:
        print(json.dumps(verdict_to_dict(verdict), indent=2))
    else:
        if verdict.authentication_results:
            print(f"Authentication-Results: {verdict.authentication_results}")
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
    return 0


def cmd_policy_lint(args: argparse.Namespace) -> int:
    files = list(args.files)
    if not files and args.config:
        try:
            files = list(load_config(args.config).policy_files)
        except ConfigError as e:
            print(f"authmilter: config error: {e}", file=sys.stderr)
            return EXIT_CONFIG
    if not files:
        print("authmilter: policy lint: name policy files, or a config with -c", file=sys.stderr)
        return EXIT_USAGE
    problems = lint(files)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{len(problems)} problem(s) in {len(files)} file(s)", file=sys.stderr)
        return 1
    print(f"ok: {len(files)} file(s)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="authmilter", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the milter")
    s.add_argument("-c", "--config", required=True, help="TOML config file")
    s.set_defaults(func=cmd_serve)

    c = sub.add_parser("check", help="evaluate one message as the milter would")
    c.add_argument("-c", "--config", required=True, help="TOML config file")
    c.add_argument("--client-ip", required=True, help="SMTP client address")
    c.add_argument("--helo", required=True, help="HELO/EHLO name")
    c.add_argument("--mail-from", required=True, help='MAIL FROM address ("" for the null sender)')
    c.add_argument("--rcpt", action="append", help="RCPT TO address (repeatable)")
    c.add_argument("--auth-user", help="act as if the client authenticated (SASL) as this user")
    c.add_argument("--daemon", help="the MTA daemon name ({daemon_name}) the message came in on")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("--explain", action="store_true", help="show each rule, each fact and what decided")
    c.add_argument("-v", "--verbose", action="store_true", help="debug logging to stderr")
    c.add_argument("message", help="the message file (.eml), or - for standard input")
    c.set_defaults(func=cmd_check)

    pol = sub.add_parser("policy", help="policy file tools")
    psub = pol.add_subparsers(dest="policy_command", required=True)
    lint_p = psub.add_parser("lint", help="validate policy files; exit 1 with file:line errors")
    lint_p.add_argument("-c", "--config", help="lint the policy files this config names")
    lint_p.add_argument("files", nargs="*", help="policy files")
    lint_p.set_defaults(func=cmd_policy_lint)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
