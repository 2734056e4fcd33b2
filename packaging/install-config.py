"""Writes the sample config as the package installs it: `install-config.py SAMPLE OUT`.

Two top-level keys get the package's values: the socket in the unit's RuntimeDirectory, and the
policy by its absolute path (a relative path in the repository's sample would point outside
/etc/authmilter once installed). Everything else, comments included, stays as it is.
"""

from __future__ import annotations

import re
import sys
import tomllib

SETTINGS = {
    "socket": '"unix:/run/authmilter/authmilter.sock"',
    "policy": '["/etc/authmilter/policies/default.toml"]',
}


def packaged(text: str) -> str:
    # Top-level keys must stay above the first [table].
    table = re.search(r"^\[", text, re.M)
    head, rest = (text[:table.start()], text[table.start():]) if table else (text, "")
    for key, value in SETTINGS.items():
        line = f"{key} = {value}"
        active = re.compile(rf"^{key}\s*=.*$", re.M)
        commented = re.search(rf"^#\s*{key}\s*=.*$", head, re.M)
        if active.search(head):
            head = active.sub(line, head, count=1)
        elif commented:
            # Beside the sample's commented-out example, where a reader looks for it.
            head = head[:commented.end()] + "\n" + line + head[commented.end():]
        else:
            head = head.rstrip("\n") + f"\n\n{line}\n\n"
    result = head + rest
    data = tomllib.loads(result)
    for key, value in SETTINGS.items():
        if data.get(key) != tomllib.loads(f"v = {value}")["v"]:
            raise SystemExit(f"install-config: {key} did not come out as {value}")
    return result


def main(argv: list[str]) -> int:
    sample, out = argv[1:]
    with open(sample, encoding="utf-8") as f:
        text = f.read()
    with open(out, "w", encoding="utf-8") as f:
        f.write(packaged(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
