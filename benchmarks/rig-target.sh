#!/usr/bin/env bash
# authmilter as a --target of the shared benchmark rig (../shared/bench), from the repository root:
#
#   bash ../shared/bench/run_peers.sh --target ours inet:127.0.0.1:9900 \
#       'bash benchmarks/rig-target.sh benchmarks/rig.toml'
#
# The rig's nsd is authoritative for the sender zones only and answers REFUSED for `_dmarc.bench`,
# a name an RFC 9989 DMARC tree walk must ask and must treat as a temporary error when refused. So
# our milter asks a stand-in for the Internet's DNS instead: our test DNS server (tests/dnsserver.py)
# on the rig's own zone files, NXDOMAIN (with the root's SOA) outside them. The rig does not charge
# nsd's CPU to a milter, so this server runs outside the milter's process tree (double fork) and
# prints its own CPU when it stops, in $MAILBENCH_RUN/authmilter-dns.log.
set -euo pipefail
config=${1:?usage: rig-target.sh CONFIG [DNS_PORT]}
dns_port=${2:-5354}
log="$MAILBENCH_RUN/authmilter-dns-$dns_port.log"
zones=()
for z in "$MAILBENCH_CORPUS"/zones/*.zone; do zones+=(--zone "$z"); done
# The DNS lists of rig-antispam.toml (names nobody else asks for).
for z in benchmarks/rig-zones/*.zone; do zones+=(--zone "$z"); done
: > "$log"
( setsid .venv/bin/python -m tests.dnsserver "${zones[@]}" --port "$dns_port" >> "$log" 2>&1 < /dev/null & echo $! > "$log.pid" )
dns_pid=$(cat "$log.pid")
for _ in $(seq 100); do grep -q READY "$log" && break; sleep 0.1; done
grep -q READY "$log" || { echo "DNS server did not start: $(cat "$log")" >&2; kill "$dns_pid" 2>/dev/null; exit 1; }

.venv/bin/python -m authmilter serve -c "$config" &
milter=$!
stop() { kill -TERM "$milter" 2>/dev/null || true; }
trap stop TERM INT
status=0
wait "$milter" || status=$?
if kill -0 "$milter" 2>/dev/null; then wait "$milter" || status=$?; fi  # the trap interrupted the first wait
kill -TERM "$dns_pid" 2>/dev/null || true
for _ in $(seq 50); do kill -0 "$dns_pid" 2>/dev/null || break; sleep 0.1; done
exit "$status"
