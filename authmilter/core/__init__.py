"""The no-I/O core: a transaction and a resolver in, frozen results and a verdict out.

Nothing in this package opens a socket, reads a file or imports pymilter. DNS is reached only
through the `Resolver` protocol in `dnsapi`, so every rule is testable with plain values.
"""
