#!/usr/bin/env bash
# XA against the same statements in one local transaction (BENCHMARKS.md):
# two-branch XA global transactions (one UPDATE per branch, each branch a
# real PREPARE TRANSACTION on the XA cluster, phase 2 over HTTP) and the two
# UPDATEs in one local transaction on the same server; with 1 client
# (latency) and 16 clients (throughput).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
bash scripts/xa-postgres.sh
cargo build --release --locked -p tandem-bench
server="${TANDEM_BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
for clients in 1 16; do
  for mode in local xa; do
    psql "$server/postgres" -qAtc 'DROP DATABASE IF EXISTS tandem_bench' -c 'CREATE DATABASE tandem_bench'
    printf '%-6s %2s clients: ' "$mode" "$clients"
    RUST_LOG=warn ./target/release/tandem-bench --mode "$mode" --branches 2 --concurrency "$clients" \
      --duration-secs 10 --database-url "$server/tandem_bench" 2>/dev/null | tail -1
  done
done
psql "$server/postgres" -qAtc 'DROP DATABASE IF EXISTS tandem_bench'
