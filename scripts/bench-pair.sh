#!/usr/bin/env bash
# One mode of tandem-bench against its local baseline, with 1 client
# (latency) and 16 clients (throughput), 10 s each (BENCHMARKS.md).
# Usage: scripts/bench-pair.sh <baseline mode> <mode> <participant server> [tandem-bench flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
baseline="$1" mode="$2" participants="$3"
shift 3
cargo build --release --locked -p tandem-bench
server="${TANDEM_BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
for clients in 1 16; do
  for m in "$baseline" "$mode"; do
    psql "$server/postgres" -qAtc 'DROP DATABASE IF EXISTS tandem_bench' -c 'CREATE DATABASE tandem_bench'
    printf '%-6s %2s clients: ' "$m" "$clients"
    RUST_LOG=warn ./target/release/tandem-bench --mode "$m" --concurrency "$clients" --duration-secs 10 \
      --participant-pg "$participants" --database-url "$server/tandem_bench" "$@" 2>/dev/null | tail -1
  done
done
psql "$server/postgres" -qAtc 'DROP DATABASE IF EXISTS tandem_bench'
