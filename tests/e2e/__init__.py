"""End-to-end tests: a real private Postfix instance, a real authmilter and a real DNS server."""
