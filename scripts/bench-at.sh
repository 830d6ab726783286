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
exec bash scripts/bench-pair.sh local1 at "${TANDEM_BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
