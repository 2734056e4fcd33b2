"""The checks: one module each, a function of the transaction's facts and the resolver that
returns frozen results (core.model.results) and never raises for bad input.

iprev (RFC 8601 forward-confirmed reverse DNS) and helo (what the HELO name says), both of the
connection rather than the message; spf (RFC 7208, MAIL FROM and HELO), dkim (RFC 6376/8301/8463,
every signature), arc (RFC 8617 chain validation), author (the RFC5322.From domain), dmarc
(RFC 9989, from the others' results). `core.evaluate` runs them in that order, the order their
inputs need. dnslists (RFC 5782 DNSBL/DNSWL and domain lists) is built but not yet in the pipeline.
"""
