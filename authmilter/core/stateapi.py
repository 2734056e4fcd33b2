"""What the core knows of shared state: the interface a store offers, as dnsapi is for DNS.

Greylisting and rate limiting each need one atomic read-modify-write from state that several
worker processes (SQLite) or several MX hosts (Redis) share; the checks in core/checks ask it
through this interface and the shell hands in a real store (authmilter/store). Time is always the
caller's `now`, so every answer is reproducible in a test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["GreyState", "GreyStateName", "RateState", "StateStore", "StoreError"]

GreyStateName = Literal["new", "early", "passed", "expired-restart"]


class StoreError(Exception):
    """The store cannot answer: down, unreachable, timed out, locked too long, full or corrupt.

    The caller decides what that means for the message (usually: do not greylist, do not limit,
    and say so in the log); the store never guesses."""


@dataclass(frozen=True, slots=True)
class GreyState:
    """What the greylisting record of a triplet said after this attempt was counted.

    state:
      "new"              no live record: one was created now (first attempt: defer)
      "early"            a record exists but `delay` has not yet passed since first_seen (defer)
      "passed"           retried within [first_seen + delay, first_seen + retry_window], or passed
                         before and the record is still alive (accept); passes counts these,
                         a repeat within an hour of the last one counted not again (store/base.py)
      "expired-restart"  never passed and the retry window closed: restarted from now (defer)
    """

    state: GreyStateName
    first_seen: float
    passes: int

    @property
    def passed(self) -> bool:
        return self.state == "passed"


@dataclass(frozen=True, slots=True)
class RateState:
    """The token bucket after this request: allowed (and `cost` tokens taken) or not.

    retry_after is 0.0 when allowed, else the seconds until the bucket holds `cost` tokens
    (math.inf when cost exceeds the burst and never can)."""

    allowed: bool
    tokens_left: float
    retry_after: float


class StateStore(Protocol):
    def greylist(self, key: str, now: float, delay: float, retry_window: float,
                 lifetime: float) -> GreyState:
        """Count one attempt of the triplet `key` and answer what its record says (see GreyState).

        A record lives `lifetime` seconds after its last change; once gone the next attempt is
        "new". Raises StoreError when the store cannot answer, ValueError on nonsense arguments."""
        ...

    def take_tokens(self, key: str, now: float, rate_per_s: float, burst: float,
                    cost: float = 1.0) -> RateState:
        """Refill the bucket `key` (at most `burst` tokens, `rate_per_s` per second) and take
        `cost` tokens if it holds that many. A missing bucket is a full one."""
        ...

    def count(self, key: str, now: float, add: int, lifetime: float) -> int:
        """Add `add` (0: only read) to the counter `key` and answer its value; a counter lives
        `lifetime` seconds after it last grew. Greylisting counts a client's passes with it."""
        ...

    def close(self) -> None:
        ...
