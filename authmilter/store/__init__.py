"""State shared across messages and hosts (greylisting, rate limits, report history): one small
interface with SQLite as the embedded default and Redis (and PostgreSQL for report history) where
several MX hosts share it. Empty until the anti-spam layer lands; nothing in core/ may import it,
the shells hand the core what a store answered."""
