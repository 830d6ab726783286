#!/usr/bin/env bash
# The benchmark of BENCHMARKS.md. Measures, on the same PostgreSQL and in the
# same run: (1) pgbench, one single-row INSERT per transaction, 8 clients;
# (2) tandem-bench, two-branch TCC global transactions. Prints both and their
# ratio. Arguments go to tandem-bench (defaults: --mode tcc --branches 2
# --concurrency 32 --duration-secs 10).
set -euo pipefail
cd "$(dirname "$0")/.."
server="${TANDEM_BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
host=$(python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p.hostname or '127.0.0.1', p.port or 5432, p.username or 'postgres')" "$server")
read -r pghost pgport pguser <<<"$host"
bash scripts/ensure-postgres.sh
cargo build --release --locked -p tandem-bench

psql_admin() { psql -h "$pghost" -p "$pgport" -U "$pguser" -d postgres -qAt "$@"; }
psql_admin -c 'DROP DATABASE IF EXISTS tandem_pgbench' -c 'CREATE DATABASE tandem_pgbench'
psql -h "$pghost" -p "$pgport" -U "$pguser" -d tandem_pgbench -q \
  -c 'CREATE TABLE t (id bigserial PRIMARY KEY, v int NOT NULL, at timestamptz NOT NULL DEFAULT now())'
script=$(mktemp)
echo 'INSERT INTO t (v) VALUES (1);' >"$script"
echo "== pgbench: single-row INSERT per transaction, 8 clients, 10 s (fsync $(psql_admin -c 'show fsync'), synchronous_commit $(psql_admin -c 'show synchronous_commit'))"
pg_tps=$(pgbench -h "$pghost" -p "$pgport" -U "$pguser" -n -c 8 -j 2 -T 10 -f "$script" tandem_pgbench 2>/dev/null \
  | awk '/^tps/ {print $3; exit}')
rm -f "$script"
echo "pgbench tps: $pg_tps"

psql_admin -c 'DROP DATABASE IF EXISTS tandem_bench' -c 'CREATE DATABASE tandem_bench'
echo "== tandem-bench $*"
out=$(RUST_LOG=warn ./target/release/tandem-bench --mode tcc --branches 2 --concurrency 32 --duration-secs 10 \
  --database-url "$server/tandem_bench" "$@" | tail -1)
echo "$out"
python3 - "$pg_tps" "$out" <<'PY'
import json, sys
pg = float(sys.argv[1]); r = json.loads(sys.argv[2])
print(f"ratio: {r['tx_per_sec']:.0f} global transactions/s = {r['tx_per_sec'] / pg:.3f} x pgbench single-row inserts/s ({pg:.0f})")
PY
psql_admin -c 'DROP DATABASE IF EXISTS tandem_pgbench' -c 'DROP DATABASE IF EXISTS tandem_bench'
