"""State shared across messages and hosts (greylisting, rate limits, report history): one small
interface with SQLite as the embedded default and Redis (and PostgreSQL for report history) where
several MX hosts share it. Nothing in core/ may import it; the shells hand the core what a store
answered.

- `base`: the `StateStore` protocol, its answers `GreyState` and `RateState`, `StoreError`
- `sqlite`: `SqliteStore(path)`, one file shared by the worker processes of one host
- `redis`: `RedisStore(url)` or `RedisStore(sentinels=..., service=...)`, shared by several hosts

The implementations are imported from their modules (redis-py is loaded only where Redis is used).
"""

from authmilter.store.base import GreyState, RateState, StateStore, StoreError

__all__ = ["GreyState", "RateState", "StateStore", "StoreError"]
