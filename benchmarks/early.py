"""CPU of the early stages (MAIL FROM and RCPT TO) per message, in one process, without the milter
(with --eom, of end of message too).

`App.early` for the envelope of every message of the shared rig's corpus (../shared/bench, made by
its first run in $MAILBENCH_HOME, /var/lib/mailbench by default), with rig.toml and with
rig-antispam.toml, against our test DNS server on the rig's zones. One lap warms the DNS cache
and the greylisting store (delay 0, so the measured laps pass, as in the rig); three measured
laps follow. What the figures leave out, and the rig's do not: libmilter, the GIL hand-overs
among its threads, cache misses in a second worker, end of message.

    .venv/bin/python -m benchmarks.early
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from authmilter.app import App, load_app
from authmilter.core.decision.rules import Stage
from authmilter.core.evaluate import NOTHING_KNOWN
from authmilter.core.message import split_message
from authmilter.core.model import Transaction

HERE = Path(__file__).resolve().parent
MTA = "mx.bench.test"


def _config(source: Path, out: Path, dns_port: int) -> Path:
    """`source` with its policy files made absolute, its store in `out`'s directory and our DNS port."""
    text = source.read_text()
    policy = re.search(r"^policy = \[(.*)\]$", text, re.M)
    if policy:
        files = [str((source.parent / p.strip().strip('"')).resolve()) for p in policy.group(1).split(",")]
        text = text.replace(policy.group(0), "policy = [" + ", ".join(f'"{f}"' for f in files) + "]")
    text = re.sub(r"^path = .*$", f'path = "{out.parent / "early.db"}"', text, flags=re.M)
    text = re.sub(r"^port = .*$", f"port = {dns_port}", text, flags=re.M)
    out.write_text(text)
    return out


def lap(app: App, messages: Sequence[dict[str, Any]],
        bodies: dict[str, tuple[Any, bytes]] | None = None) -> float:
    """CPU milliseconds per message for MAIL FROM and each RCPT TO of every message, and with
    `bodies` (file -> headers, body) end of message too."""
    started = time.process_time()
    for m in messages:
        envelope = {"client_ip": m["client_ip"], "helo": m["helo"], "mail_from": m["mail_from"],
                    "client_host": m["client_host"], "queue_id": "Q", "macros": {"j": MTA}}
        _, known = app.early(Transaction(rcpts=(), **envelope), Stage.MAIL, known=NOTHING_KNOWN, mta_j=MTA)
        for rcpt in m["rcpts"]:
            _, known = app.early(Transaction(rcpts=(rcpt,), **envelope), Stage.RCPT, rcpt=rcpt,
                                 known=known, mta_j=MTA)
        if bodies is not None:
            headers, body = bodies[m["file"]]
            app.evaluate(Transaction(rcpts=tuple(m["rcpts"]), headers=headers, body=body, **envelope),
                         mta_j=MTA, known=known, trace=False)  # as the milter asks
    return (time.process_time() - started) / len(messages) * 1000


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    home = Path(os.environ.get("MAILBENCH_HOME", "/var/lib/mailbench"))
    p.add_argument("--corpus", type=Path, default=home / "corpus")
    p.add_argument("--port", type=int, default=5398, help="for our test DNS server (default 5398)")
    p.add_argument("--eom", action="store_true", help="end of message too (App.evaluate on the message)")
    p.add_argument("configs", nargs="*", type=Path,
                   default=[HERE / "rig.toml", HERE / "rig-antispam.toml"])
    a = p.parse_args(argv)
    manifest = a.corpus / "manifest.json"
    if not manifest.exists():
        print(f"{manifest}: no rig corpus; run ../shared/bench/run_peers.sh once first", file=sys.stderr)
        return 2
    messages = json.loads(manifest.read_text())["messages"]
    bodies = None
    if a.eom:
        bodies = {m["file"]: split_message((a.corpus / m["file"]).read_bytes()) for m in messages}
    zones = sorted((a.corpus / "zones").glob("*.zone")) + sorted((HERE / "rig-zones").glob("*.zone"))
    command = [sys.executable, "-m", "tests.dnsserver", "--port", str(a.port)]
    for zone in zones:
        command += ["--zone", str(zone)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
    try:
        ready = server.stdout.readline() if server.stdout else ""
        if not ready.startswith("READY"):
            print(f"DNS server did not start: {ready!r}", file=sys.stderr)
            return 1
        for source in a.configs:
            with tempfile.TemporaryDirectory() as tmp:
                app = load_app(str(_config(source, Path(tmp) / source.name, a.port)))
                lap(app, messages, bodies)
                laps = [lap(app, messages, bodies) for _ in range(3)]
                stages = "all stages" if bodies is not None else "early stages"
                print(f"{source.name:24} {stages} {' '.join(f'{x:.3f}' for x in laps)} ms/msg "
                      f"({len(messages)} messages, {sum(len(m['rcpts']) for m in messages)} recipients)")
                app.resolver.close()
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
