"""The one interface every state store offers: two atomic read-modify-write operations.

Greylisting and rate limiting each need exactly one thing from shared state: "look at the record
for this key, update it, tell me what it said", done atomically even when several worker
processes (SQLite) or several MX hosts (Redis) ask about the same key at once. The arithmetic is
here, in plain functions over plain values, so every store computes the same answers; a store
only supplies the atomicity (a `BEGIN IMMEDIATE` transaction, a Lua script). The interface itself
is core/stateapi.py, since the core's checks ask a store as they ask DNS.

Time is the caller's `now` (seconds since the epoch, a float): the stores never read a clock for
the answers, only for housekeeping (Redis TTLs), so tests can step time by hand.
"""

from __future__ import annotations

import math

from authmilter.core.stateapi import GreyState, GreyStateName, RateState, StateStore, StoreError

__all__ = [
    "GreyState",
    "GreyStateName",
    "RateState",
    "StateStore",
    "StoreError",
    "bucket_step",
    "check_count_args",
    "check_grey_args",
    "check_rate_args",
    "count_step",
    "grey_refresh",
    "grey_step",
]

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


# A triplet that has passed is written back (one more pass, its lifetime restarted) at most once
# per GREY_REFRESH seconds, and a hundredth of the lifetime when that is shorter. Mail that keeps
# coming on one triplet (notifications, a busy list) then costs a read, not a write transaction
# per recipient; what is given up is an exact count of passes (nothing decides on it) and up to
# an hour of a 35-day lifetime.
GREY_REFRESH = 3600.0


def grey_refresh(lifetime: float) -> float:
    """How long a passed record's last write stands before the next pass is written."""
    return min(GREY_REFRESH, lifetime / 100)


def grey_step(record: tuple[float, int, float] | None, now: float, delay: float,
              retry_window: float, lifetime: float) -> tuple[GreyState, tuple[float, int, float] | None]:
    """(first_seen, passes, expires_at) before → the answer and the record to write (None: keep).

    The Lua script in store/redis.py is this function line by line."""
    if record is None or now >= record[2]:
        return GreyState("new", now, 0), (now, 0, now + lifetime)
    first, passes, expires = record
    if passes > 0:
        # When it was last written, from its expiry; a lifetime shortened since gives a time
        # still to come, and the record is written again with the new lifetime.
        written = expires - lifetime
        if written <= now < written + grey_refresh(lifetime):
            return GreyState("passed", first, passes), None
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


def count_step(record: tuple[int, float] | None, now: float, add: int,
               lifetime: float) -> tuple[int, tuple[int, float] | None]:
    """(value, expires_at) before → the value after adding `add`, and the record to write (None:
    keep). Adding 0 only reads; adding renews the lifetime."""
    value = 0 if record is None or now >= record[1] else record[0]
    if add == 0:
        return value, None
    value += add
    return value, (value, now + lifetime)


def check_count_args(add: int, lifetime: float) -> None:
    if add < 0:
        raise ValueError(f"a counter only counts up, not by {add}")
    if not (math.isfinite(lifetime) and lifetime > 0):
        raise ValueError(f"counter lifetime must be a positive number, not {lifetime}")
