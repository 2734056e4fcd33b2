"""Interoperability tests: other implementations (OpenDKIM, ...) judge what we produce."""
