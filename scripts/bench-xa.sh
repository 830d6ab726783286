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
exec bash scripts/bench-pair.sh local xa postgres://postgres@127.0.0.1:5433 --branches 2
