"""Hypothesis set-up shared by the property tests (`tests/unit/test_properties*.py`).

Profiles, chosen with HYPOTHESIS_PROFILE:

* `ci` (the default): derandomized, so the normal suite and CI run the same examples every time
  and a failure reproduces; no example database is written; no deadline (a slow machine must not
  turn into a failure).
* `dev`: random examples, for looking for new failures by hand (`HYPOTHESIS_PROFILE=dev`).

`budget(n)` is the number of examples a property gets: n in the normal suite, which keeps the whole
property suite well under 40 s on two cores, and n times AUTHMILTER_PROPERTY_SCALE when that is
set (e.g. 20 for a long run by hand).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

_COMMON: dict[str, Any] = {
    "deadline": None,
    "database": None,
    "print_blob": True,
    # Messages and records are large by design; generating them is not a health problem here.
    "suppress_health_check": [
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
}
settings.register_profile("ci", derandomize=True, **_COMMON)
settings.register_profile("dev", derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]

SCALE = max(1, int(os.environ.get("AUTHMILTER_PROPERTY_SCALE", "1") or "1"))


def budget(examples: int) -> settings:
    return settings(max_examples=examples * SCALE)


# --- shared strategies -------------------------------------------------------------------------------

LDH = "abcdefghijklmnopqrstuvwxyz0123456789"

# An LDH label: a letter or digit, then (optionally) letters, digits and hyphens ending in a
# letter or digit.
label = st.builds(
    lambda first, middle, last: first + middle + last if last else first,
    st.sampled_from(LDH),
    st.text(LDH + "-", max_size=10),
    st.sampled_from(LDH) | st.just(""),
)
domain = st.lists(label, min_size=2, max_size=4).map(".".join)
# RFC 5322 atext, for local parts and display-name atoms.
ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
atom = st.text(ATEXT, min_size=1, max_size=8)
dot_atom = st.lists(atom, min_size=1, max_size=3).map(".".join)
# Folding white space and comments, as written between tokens.
fws = st.sampled_from(["", " ", "\t", "  ", "\r\n ", "\r\n\t", " \r\n  "])
# Charsets: real ones, and ones Python refuses or has never heard of.
charset = st.sampled_from(
    [
        "utf-8",
        "UTF-8",
        "iso-8859-1",
        "us-ascii",
        "utf-7",
        "utf-16",
        "idna",
        "undefined",
        "unknown",
        "x-unknown",
        "rot13",
        "punycode",
        "base64",
        "hex",
        "zlib",
        "uu",
        "unicode_escape",
        "mbcs",
        "utf-8*en",
        "koi8-r",
        "iso-2022-jp",
        "cp65001",
    ]
) | st.text("abcdefghijklmnopqrstuvwxyz0123456789-_*'", min_size=1, max_size=12)
