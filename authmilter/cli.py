"""The `authmilter` command: serve, check."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from authmilter.app import build_app
from authmilter.config import Config, ConfigError, load_config
from authmilter.core.message import split_message
from authmilter.core.model import Transaction
from authmilter.report import verdict_to_dict

log = logging.getLogger("authmilter")

EXIT_CONFIG = 78  # EX_CONFIG from sysexits.h: systemd and operators read it as "fix the config"
EXIT_USAGE = 64


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as e:
        print(f"authmilter: config error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _setup_logging(config.log_level)
    # Imported here so that `check` works where libmilter is not installed.
    import Milter

    from authmilter import milter

    app = build_app(config)
    log.info("starting on %s (config %s)", config.socket, config.path)
    try:
        milter.run(app)
    except Milter.milter.error as e:
        log.error("cannot serve on %s: %s", config.socket, e)
        return 1
    log.info("stopped")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config)
    _setup_logging("warning" if not args.verbose else "debug")
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
    )
    app = build_app(config)
    verdict = app.evaluate(tx)
    if args.json:
        print(json.dumps(verdict_to_dict(verdict), indent=2))
    else:
        if verdict.authentication_results:
            print(f"Authentication-Results: {verdict.authentication_results}")
        for d in verdict.header_deletes:
            print(f"(deleted forged Authentication-Results #{d.occurrence})")
        reply = f" {verdict.reply.code} {verdict.reply.status} {verdict.reply.text}" if verdict.reply else ""
        print(f"action: {verdict.action.value}{reply}")
        if verdict.errors:
            print(f"error: {verdict.reason}: {verdict.errors[-1].strip().splitlines()[-1]}")
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
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.add_argument("-v", "--verbose", action="store_true", help="debug logging to stderr")
    c.add_argument("message", help="the message file (.eml), or - for standard input")
    c.set_defaults(func=cmd_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rc: int = args.func(args)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
