"""The shared store: Redis (optionally found through Sentinel), for several MX hosts at once.

Each operation is one Lua script (EVALSHA, falling back to EVAL once the server forgot it, both
by redis-py's `register_script`), so the read-modify-write is atomic on the server. The scripts
are `grey_step` and `bucket_step` of store/base.py, line by line; numbers cross as strings with
17 significant digits, since Lua turns a returned float into an integer.

Keys are `<prefix>grey:<key>`, `<prefix>rate:<key>` and `<prefix>count:<key>`, hashes with a
TTL: `lifetime` for a greylisting record and a counter, the time until the bucket is full again
for a rate bucket. The scripts judge
expiry by the caller's `now` as well, so the answers do not depend on when Redis reclaims a key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, cast

import redis
import redis.exceptions
import redis.sentinel

from authmilter.store.base import (
    GreyState,
    GreyStateName,
    RateState,
    StoreError,
    check_count_args,
    check_grey_args,
    check_rate_args,
    grey_refresh,
)

GREYLIST_LUA = """
local key = KEYS[1]
local now, delay = tonumber(ARGV[1]), tonumber(ARGV[2])
local window, lifetime = tonumber(ARGV[3]), tonumber(ARGV[4])
local refresh = tonumber(ARGV[5])
local function num(x) return string.format('%.17g', x) end
local f = redis.call('HMGET', key, 'first_seen', 'passes', 'expires_at')
local first, passes, expires = tonumber(f[1]), tonumber(f[2]), tonumber(f[3])
local state
if first == nil or passes == nil or expires == nil or now >= expires then
  first, passes, state = now, 0, 'new'
elseif passes > 0 then
  local written = expires - lifetime
  if written <= now and now < written + refresh then
    return {'passed', num(first), tostring(passes)}
  end
  passes, state = passes + 1, 'passed'
elseif now < first + delay then
  return {'early', num(first), '0'}
elseif now <= first + window then
  passes, state = 1, 'passed'
else
  first, passes, state = now, 0, 'expired-restart'
end
redis.call('HSET', key, 'first_seen', num(first), 'passes', tostring(passes),
           'expires_at', num(now + lifetime))
redis.call('PEXPIRE', key, math.max(1, math.ceil(lifetime * 1000)))
return {state, num(first), tostring(passes)}
"""

BUCKET_LUA = """
local key = KEYS[1]
local now, rate, burst, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local function num(x) return string.format('%.17g', x) end
local f = redis.call('HMGET', key, 'tokens', 'updated_at')
local tokens, updated = tonumber(f[1]), tonumber(f[2])
if tokens == nil or updated == nil then
  tokens = burst
else
  tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
end
local allowed, wait = 0, '0'
if tokens >= cost then
  tokens, allowed = tokens - cost, 1
elseif cost > burst then
  wait = 'inf'
else
  wait = num((cost - tokens) / rate)
end
redis.call('HSET', key, 'tokens', num(tokens), 'updated_at', num(now))
redis.call('PEXPIRE', key, math.max(1, math.ceil((burst - tokens) / rate * 1000)))
return {allowed, num(tokens), wait}
"""

COUNT_LUA = """
local key = KEYS[1]
local now, add, lifetime = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local f = redis.call('HMGET', key, 'value', 'expires_at')
local value, expires = tonumber(f[1]), tonumber(f[2])
if value == nil or expires == nil or now >= expires then value = 0 end
if add == 0 then return {tostring(value), '0', '0'} end
value = value + add
redis.call('HSET', key, 'value', tostring(value), 'expires_at', string.format('%.17g', now + lifetime))
redis.call('PEXPIRE', key, math.max(1, math.ceil(lifetime * 1000)))
return {tostring(value), '0', '0'}
"""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def connect(url: str, *, sentinels: Sequence[tuple[str, int]] = (), service: str = "",
            timeout: float = 1.0, password: str | None = None, sentinel_password: str | None = None,
            db: int = 0) -> redis.Redis:
    """A client from `url` (redis://host:port/db, rediss://, unix://), or for the master that
    `sentinels` know as `service`; `timeout` bounds connecting and each command. Nothing is
    connected until the first command. Every Redis store (greylisting, history) connects so."""
    try:
        if url:
            client: redis.Redis = redis.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout, password=password, db=db)
            return client
        sentinel = redis.sentinel.Sentinel(
            list(sentinels), socket_timeout=timeout, socket_connect_timeout=timeout,
            sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout,
                             "password": sentinel_password})
        master: redis.Redis = sentinel.master_for(service, socket_timeout=timeout,
                                                  socket_connect_timeout=timeout, password=password, db=db)
        return master
    except (redis.exceptions.RedisError, ValueError) as e:
        raise StoreError(f"redis: {e}") from e


class RedisStore:
    def __init__(self, url: str | None = None, *, sentinels: Sequence[tuple[str, int]] = (),
                 service: str | None = None, prefix: str = "authmilter:", timeout: float = 1.0,
                 password: str | None = None, sentinel_password: str | None = None,
                 db: int = 0) -> None:
        """Either `url` (redis://host:port/db, rediss://, unix://) or `sentinels` with the
        `service` name their master is monitored under. `timeout` bounds connecting and each
        command; no connection is made until the first operation."""
        if bool(url) == bool(sentinels):
            raise ValueError("RedisStore needs either a url or sentinels (with a service name)")
        if sentinels and not service:
            raise ValueError("RedisStore with sentinels needs the service (master) name")
        self.prefix = prefix
        self._client = connect(url or "", sentinels=sentinels, service=service or "", timeout=timeout,
                               password=password, sentinel_password=sentinel_password, db=db)
        self._greylist = self._client.register_script(GREYLIST_LUA)
        self._bucket = self._client.register_script(BUCKET_LUA)
        self._count = self._client.register_script(COUNT_LUA)

    def _run(self, script: Any, key: str, args: list[float]) -> list[Any]:
        try:
            answer = script(keys=[key], args=[repr(float(a)) for a in args])
        except redis.exceptions.RedisError as e:
            # ConnectionError, TimeoutError, MasterNotFoundError, OOM (maxmemory), READONLY ...
            raise StoreError(f"redis: {type(e).__name__}: {e}") from e
        if not isinstance(answer, list) or len(answer) != 3:
            raise StoreError(f"redis: unexpected script answer {answer!r}")
        return answer

    def greylist(self, key: str, now: float, delay: float, retry_window: float,
                 lifetime: float) -> GreyState:
        check_grey_args(delay, retry_window, lifetime)
        state, first, passes = self._run(self._greylist, self.prefix + "grey:" + key,
                                         [now, delay, retry_window, lifetime, grey_refresh(lifetime)])
        name = _text(state)
        if name not in ("new", "early", "passed", "expired-restart"):
            raise StoreError(f"redis: unexpected greylist state {name!r}")
        return GreyState(cast(GreyStateName, name), float(_text(first)), int(_text(passes)))

    def take_tokens(self, key: str, now: float, rate_per_s: float, burst: float,
                    cost: float = 1.0) -> RateState:
        check_rate_args(rate_per_s, burst, cost)
        allowed, tokens, wait = self._run(self._bucket, self.prefix + "rate:" + key,
                                          [now, rate_per_s, burst, cost])
        retry = math.inf if _text(wait) == "inf" else float(_text(wait))
        return RateState(int(_text(allowed)) == 1, float(_text(tokens)), retry)

    def count(self, key: str, now: float, add: int, lifetime: float) -> int:
        check_count_args(add, lifetime)
        value, _, _ = self._run(self._count, self.prefix + "count:" + key, [now, add, lifetime])
        return int(float(_text(value)))

    def close(self) -> None:
        try:
            self._client.close()
        except redis.exceptions.RedisError as e:
            raise StoreError(f"redis: {e}") from e
