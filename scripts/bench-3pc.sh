#!/usr/bin/env bash
# Three-phase commit against two-phase commit (BENCHMARKS.md): two-branch
# global transactions, one UPDATE per branch, each branch a real PREPARE
# TRANSACTION on the XA cluster. XA: phase 1 by the participant, then commit;
# 3PC: CanCommit (a SELECT), PreCommit (the UPDATE and PREPARE), DoCommit, all
# driven by the coordinator. 1 client (latency) and 16 clients (throughput).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
bash scripts/xa-postgres.sh
exec bash scripts/bench-pair.sh xa 3pc postgres://postgres@127.0.0.1:5433 --branches 2
