#!/usr/bin/env bash
# AT against the same statement in a plain local transaction (BENCHMARKS.md):
# a global transaction with one AT branch running one one-row UPDATE (before
# image, the UPDATE, after image, branch registration with its global lock,
# undo row, local commit; then the global commit with its HTTP callback), and
# that UPDATE alone in a local transaction; with 1 client (latency) and 16
# clients (throughput). Both on the same PostgreSQL server.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
cargo build --release --locked -p tandem-bench
server="${TANDEM_BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
for clients in 1 16; do
  for mode in local1 at; do
    psql "$server/postgres" -qAtc 'DROP DATABASE IF EXISTS tandem_bench' -c 'CREATE DATABASE tandem_bench'
    printf '%-6s %2s clients: ' "$mode" "$clients"
    RUST_LOG=warn ./target/release/tandem-bench --mode "$mode" --concurrency "$clients" \
      --participant-pg "$server" --duration-secs 10 --database-url "$server/tandem_bench" 2>/dev/null | tail -1
  done
done
psql "$server/postgres" -qAtc 'DROP DATABASE IF EXISTS tandem_bench' -c 'DROP DATABASE IF EXISTS tandem_bench_p0'
