"""The one interface every state store offers: two atomic read-modify-write operations.

Greylisting and rate limiting each need exactly one thing from shared state: "look at the record
for this key, update it, tell me what it said", done atomically even when several worker
processes (SQLite) or several MX hosts (Redis) ask about the same key at once. The arithmetic is
here, in plain functions over plain values, so every store computes the same answers; a store
only supplies the atomicity (a `BEGIN IMMEDIATE` transaction, a Lua script).

Time is the caller's `now` (seconds since the epoch, a float): the stores never read a clock for
the answers, only for housekeeping (Redis TTLs), so tests can step time by hand.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Protocol

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
                         before and the record is still alive (accept); passes counts these
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

    def close(self) -> None:
        ...


# --- the arithmetic every store shares ------------------------------------------------------------

def check_grey_args(delay: float, retry_window: float, lifetime: float) -> None:
    if not (math.isfinite(delay) and math.isfinite(retry_window) and math.isfinite(lifetime)):
        raise ValueError("greylist delay, retry_window and lifetime must be finite")
    if not 0 <= delay <= retry_window <= lifetime:
        raise ValueError(f"greylist needs 0 <= delay ({delay}) <= retry_window ({retry_window})"
                         f" <= lifetime ({lifetime})")


def check_rate_args(rate_per_s: float, burst: float, cost: float) -> None:
    if not (math.isfinite(rate_per_s) and rate_per_s > 0):
        raise ValueError(f"rate_per_s must be a positive number, not {rate_per_s}")
    if not (math.isfinite(burst) and burst > 0):
        raise ValueError(f"burst must be a positive number, not {burst}")
    if not (math.isfinite(cost) and cost >= 0):
        raise ValueError(f"cost must be a number >= 0, not {cost}")


def grey_step(record: tuple[float, int, float] | None, now: float, delay: float,
              retry_window: float, lifetime: float) -> tuple[GreyState, tuple[float, int, float] | None]:
    """(first_seen, passes, expires_at) before → the answer and the record to write (None: keep).

    The Lua script in store/redis.py is this function line by line."""
    if record is None or now >= record[2]:
        return GreyState("new", now, 0), (now, 0, now + lifetime)
    first, passes, _ = record
    if passes > 0:
        return GreyState("passed", first, passes + 1), (first, passes + 1, now + lifetime)
    if now < first + delay:
        return GreyState("early", first, 0), None
    if now <= first + retry_window:
        return GreyState("passed", first, 1), (first, 1, now + lifetime)
    return GreyState("expired-restart", now, 0), (now, 0, now + lifetime)


def bucket_step(record: tuple[float, float] | None, now: float, rate_per_s: float, burst: float,
                cost: float) -> tuple[RateState, tuple[float, float, float]]:
    """(tokens, updated_at) before → the answer and (tokens, updated_at, full_at) to write.

    full_at is when the bucket is full again: from then on a missing record means the same."""
    tokens = burst if record is None else min(burst, record[0] + max(0.0, now - record[1]) * rate_per_s)
    if tokens >= cost:
        tokens -= cost
        state = RateState(True, tokens, 0.0)
    else:
        wait = math.inf if cost > burst else (cost - tokens) / rate_per_s
        state = RateState(False, tokens, wait)
    return state, (tokens, now, now + (burst - tokens) / rate_per_s)
