"""DMARC reporting (RFC 9990 aggregate, RFC 9991 failure reports) and policy preview over recorded
traffic. Empty until the reports land; it reads the history kept by `authmilter.store`."""
