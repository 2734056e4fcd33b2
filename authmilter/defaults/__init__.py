"""What ships with the program: the default policy and the sample config.

The files here are links to policies/default.toml and etc/authmilter.toml in the source tree (a
wheel holds copies), so that `pip install authmilter` alone gives a config that protects.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).parent
DEFAULT_POLICY = HERE / "policies" / "default.toml"
SAMPLE_CONFIG = HERE / "authmilter.toml"
SYSTEM_CONFIG = Path("/etc/authmilter/authmilter.toml")  # what commands read without -c
