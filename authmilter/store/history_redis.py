"""Report history in Redis (optionally found through Sentinel), shared by several MX hosts: the
`HistoryStore` of store/history.py, with SqliteHistory's semantics.

Layout, per UTC day D (keys under the store's prefix):

- `history:D:rec`: hash, record id -> the JSON line (`core.history.dumps`), kept once
- `history:D:all`: sorted set of the day's record ids
- `history:D:dom:<domain>`: sorted set of the ids reportable to one policy domain, so that a
  report reads only its domain's records
- `history:D:domains`: set of the day's policy domains
- `history:days`: sorted set of the days held (score: the day's first second), so that a time
  range walks only the days it touches, and prune finds the old ones

A record id is `<time, 12 digits>:<random>`. Every sorted set has score 0, so Redis orders it by
the id, that is by time; a range of times is a range of ids (ZRANGE BYLEX), read in batches from
the last id seen: no batch is skipped or repeated when records are appended meanwhile, and a
day of a million messages never sits in memory. The random part keeps two identical records of
one second apart.

Reports are claimed with HSETNX in `report:D:id` (one winner across hosts), their status is in
`report:D:status`; a destination is the hash `destination:<uri>`; a lock is the hash
`lock:<name>` (holder, expiry), taken and released by Lua scripts that judge expiry by the
caller's `now`, as the greylist scripts of store/redis.py do, with a TTL for housekeeping only.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import redis
import redis.exceptions
import redis.sentinel

from authmilter.core.history import HistoryRecord, dumps
from authmilter.store.base import StoreError
from authmilter.store.history import read_record
from authmilter.store.redis import connect

__all__ = ["RedisHistory"]

DAY = 86400
BATCH = 2000  # ids per ZRANGE (and fields per HMGET) when reading or pruning

CLAIM_LUA = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], 'claimed')
  return 1
end
return 0
"""

STATUS_LUA = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
end
return 0
"""

# ARGV: holder, now, expires, ttl in ms. Held by another while its expiry is still to come.
ACQUIRE_LUA = """
local f = redis.call('HMGET', KEYS[1], 'holder', 'expires')
if f[1] and f[1] ~= ARGV[1] and tonumber(f[2]) and tonumber(f[2]) > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'expires', ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.max(1, tonumber(ARGV[4])))
return 1
"""

RELEASE_LUA = """
if redis.call('HGET', KEYS[1], 'holder') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
return 0
"""


def _day(t: int) -> tuple[str, int]:
    start = t - t % DAY
    return time.strftime("%Y-%m-%d", time.gmtime(start)), start


def _at(t: int) -> bytes:
    """The id prefix of second `t`: every id of that second sorts after it, before t + 1's."""
    return f"{t:012d}:".encode()


class RedisHistory:
    def __init__(self, url: str = "", *, sentinels: Sequence[tuple[str, int]] = (), service: str = "",
                 prefix: str = "authmilter:", timeout: float = 1.0, password_file: str = "",
                 expire_days: int = 0) -> None:
        """`url` (redis://, rediss://, unix://) or `sentinels` with `service`, as RedisStore.
        `expire_days` > 0 gives each day's keys a TTL of that many days past the day, a net for
        when nothing prunes any more; it must exceed the retention, which prune() enforces."""
        password = None
        if password_file:
            try:
                password = Path(password_file).read_text().strip()
            except OSError as exc:
                raise StoreError(f"{password_file}: {exc.strerror or exc}") from None
        if bool(url) == bool(sentinels):
            raise ValueError("a Redis history needs either a url or sentinels (with a service name)")
        if sentinels and not service:
            raise ValueError("a Redis history with sentinels needs the service (master) name")
        self.prefix = prefix
        self._expire = expire_days * DAY
        self._client = connect(url, sentinels=sentinels, service=service, timeout=timeout,
                               password=password)
        self._claim = self._client.register_script(CLAIM_LUA)
        self._status = self._client.register_script(STATUS_LUA)
        self._acquire = self._client.register_script(ACQUIRE_LUA)
        self._release = self._client.register_script(RELEASE_LUA)

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    def _days(self, since: int, until: int) -> list[tuple[str, int]]:
        """The days held that overlap [since, until), oldest first."""
        if until <= since:
            return []
        days = cast(list[tuple[bytes, float]], self._client.zrangebyscore(
            self._key("history", "days"), since - DAY + 1, until - 1, withscores=True))
        return [(_text(d), int(s)) for d, s in days]

    # --- HistoryStore ---------------------------------------------------------------------------

    def append(self, records: Sequence[HistoryRecord]) -> None:
        if not records:
            return
        try:
            # MULTI/EXEC: a batch is written whole or not at all, like SQLite's transaction.
            pipe = self._client.pipeline(transaction=True)
            touched: dict[str, int] = {}
            days: dict[str, int] = {}
            for r in records:
                day, start = _day(r.time)
                rid = _at(r.time) + secrets.token_hex(5).encode()
                pipe.hset(self._key("history", day, "rec"), rid, dumps(r))
                pipe.zadd(self._key("history", day, "all"), {rid: 0})
                keys = [self._key("history", day, "rec"), self._key("history", day, "all")]
                if r.reportable and r.policy:
                    domain = r.policy.domain.lower()
                    pipe.zadd(self._key("history", day, "dom", domain), {rid: 0})
                    pipe.sadd(self._key("history", day, "domains"), domain)
                    keys += [self._key("history", day, "dom", domain), self._key("history", day, "domains")]
                for key in keys:
                    touched[key] = start
                days[day] = start
            pipe.zadd(self._key("history", "days"), days)
            if self._expire:
                for key, start in touched.items():
                    pipe.expireat(key, start + DAY + self._expire)
            pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise _error(exc) from None

    def records(self, since: int, until: int, policy_domain: str | None = None) -> Iterator[HistoryRecord]:
        try:
            for day, start in self._days(since, until):
                zkey = (self._key("history", day, "all") if policy_domain is None
                        else self._key("history", day, "dom", policy_domain.lower()))
                low = b"[" + _at(max(since, start))
                high = b"(" + _at(min(until, start + DAY))
                while True:
                    ids = self._ids(zkey, low, high)
                    if not ids:
                        break
                    for text in self._client.hmget(self._key("history", day, "rec"), ids):
                        if text is None:
                            continue  # pruned since the ids were read
                        record = read_record(_text(text))
                        if record is not None:
                            yield record
                    if len(ids) < BATCH:
                        break
                    low = b"(" + ids[-1]
        except redis.exceptions.RedisError as exc:
            raise _error(exc) from None

    def policy_domains(self, since: int, until: int) -> list[str]:
        found: set[str] = set()
        try:
            for day, start in self._days(since, until):
                candidates = sorted(_text(d) for d in self._client.smembers(self._key("history", day,
                                                                                      "domains")))
                low = b"[" + _at(max(since, start))
                high = b"(" + _at(min(until, start + DAY))
                # A day only partly in the range, or partly pruned, lists domains that have no
                # record in it: count each one's records in the range.
                pipe = self._client.pipeline(transaction=False)
                for domain in candidates:
                    pipe.zlexcount(self._key("history", day, "dom", domain), low, high)
                found.update(d for d, n in zip(candidates, pipe.execute(), strict=True) if n)
        except redis.exceptions.RedisError as exc:
            raise _error(exc) from None
        return sorted(found)

    def prune(self, before: int) -> int:
        removed = 0
        days_key = self._key("history", "days")
        try:
            for raw in self._client.zrangebyscore(days_key, "-inf", before - DAY):
                day = _text(raw)
                removed += int(self._client.zcard(self._key("history", day, "all")))
                domains = [_text(d) for d in self._client.smembers(self._key("history", day, "domains"))]
                # UNLINK frees a big day's memory in the background instead of blocking the server.
                self._client.unlink(*(self._key("history", day, k) for k in ("rec", "all", "domains")),
                                    *(self._key("history", day, "dom", d) for d in domains))
                self._client.zrem(days_key, day)
            day, start = _day(before)
            if start < before and self._client.zscore(days_key, day) is not None:
                removed += self._prune_part(day, before)
        except redis.exceptions.RedisError as exc:
            raise _error(exc) from None
        return removed

    def _prune_part(self, day: str, before: int) -> int:
        """Remove the records of `day` older than `before`, a second of that day."""
        all_key, rec_key = self._key("history", day, "all"), self._key("history", day, "rec")
        high = b"(" + _at(before)
        removed = 0
        while True:
            ids = self._ids(all_key, b"-", high)
            if not ids:
                break
            pipe = self._client.pipeline(transaction=True)
            pipe.hdel(rec_key, *ids)
            pipe.zrem(all_key, *ids)
            removed += int(pipe.execute()[1])
        domains = [_text(d) for d in self._client.smembers(self._key("history", day, "domains"))]
        pipe = self._client.pipeline(transaction=False)
        for domain in domains:
            pipe.zremrangebylex(self._key("history", day, "dom", domain), b"-", high)
        pipe.execute()
        return removed

    def claim_report(self, domain: str, day: str, report_id: str, now: float) -> bool:
        return self._script(self._claim, [self._key("report", day, "id"), self._key("report", day, "status")],
                            [domain.lower(), report_id]) == 1

    def reports(self, day: str) -> dict[str, tuple[str, str]]:
        try:
            pipe = self._client.pipeline(transaction=True)
            pipe.hgetall(self._key("report", day, "id"))
            pipe.hgetall(self._key("report", day, "status"))
            ids, statuses = pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise _error(exc) from None
        status = {_text(d): _text(s) for d, s in statuses.items()}
        return {_text(d): (_text(i), status.get(_text(d), "claimed")) for d, i in ids.items()}

    def set_report_status(self, domain: str, day: str, status: str) -> None:
        self._script(self._status, [self._key("report", day, "id"), self._key("report", day, "status")],
                     [domain.lower(), status])

    def destination(self, uri: str) -> tuple[int, float]:
        try:
            failures, next_attempt = self._client.hmget(self._key("destination", uri),
                                                        ["failures", "next_attempt"])
            return int(failures or 0), float(next_attempt or 0.0)
        except redis.exceptions.RedisError as exc:
            raise _error(exc) from None
        except ValueError as exc:
            raise StoreError(f"history redis: destination {uri}: {exc}") from None

    def record_delivery(self, uri: str, ok: bool, now: float, next_attempt: float) -> None:
        key = self._key("destination", uri)
        try:
            if ok:
                self._client.delete(key)
                return
            pipe = self._client.pipeline(transaction=True)
            pipe.hincrby(key, "failures", 1)
            pipe.hset(key, "next_attempt", repr(float(next_attempt)))
            pipe.execute()
        except redis.exceptions.RedisError as exc:
            raise _error(exc) from None

    def acquire_lock(self, name: str, holder: str, ttl: float, now: float) -> bool:
        args = [holder, repr(float(now)), repr(float(now + ttl)), str(int(ttl * 1000) + 1)]
        return self._script(self._acquire, [self._key("lock", name)], args) == 1

    def release_lock(self, name: str, holder: str) -> None:
        self._script(self._release, [self._key("lock", name)], [holder])

    def close(self) -> None:
        try:
            self._client.close()
        except redis.exceptions.RedisError as exc:
            raise _error(exc) from None

    def _ids(self, key: str, low: bytes, high: bytes) -> list[bytes]:
        """The first BATCH ids of a day's sorted set in the lexical range (low, high)."""
        return cast(list[bytes], self._client.zrange(key, low, high, bylex=True, offset=0, num=BATCH))

    def _script(self, script: Any, keys: list[str], args: list[str]) -> int:
        try:
            return int(script(keys=keys, args=args))
        except redis.exceptions.RedisError as exc:
            raise _error(exc) from None


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _error(exc: redis.exceptions.RedisError) -> StoreError:
    # ConnectionError, TimeoutError, MasterNotFoundError, OOM, READONLY ...: none names a password.
    return StoreError(f"history redis: {type(exc).__name__}: {exc}")

