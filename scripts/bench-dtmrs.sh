#!/usr/bin/env bash
# Tandem against dtmrs, side by side (BENCHMARKS.md). Usage:
#   scripts/bench-dtmrs.sh saga [tandem-bench args...]   (issue 12)
#   scripts/bench-dtmrs.sh msg  [tandem-bench args...]   (issue 13)
#   scripts/bench-dtmrs.sh dtm  [tandem-bench args...]   (issue 16: the same DTM
#     client, the same 2-step saga, against Tandem's /api/dtmsvr and dtmrs)
# In one run, on the same PostgreSQL:
#   1. pgbench, one single-row INSERT per transaction, 8 clients (the server's
#      durable-commit rate, as scripts/bench.sh);
#   2. saga: tandem-bench --mode tcc --branches 2 (two-branch TCC, for
#      reference); msg: tandem-bench --mode msg-nats (one delivery to NATS
#      JetStream on NATS, default 127.0.0.1:4222) and --mode outbox (the SDK's
#      outbox relay to an HTTP consumer);
#   3. ROUNDS back-to-back pairs of
#        saga: tandem-bench --mode saga --branches 2   (Tandem, 2-step saga)
#              tandem-bench --mode dtmrs-saga ...       (the same saga, the same
#                clients and no-op participants, against dtmrs on a fresh database)
#        msg:  tandem-bench --mode msg --branches 1    (prepare, submit, delivered
#                to a no-op HTTP consumer)
#              tandem-bench --mode dtmrs-msg ...        (the same against dtmrs)
#      alternately;
# each with CLIENTS concurrent clients for SECS seconds (after a 2 s warm-up).
# Prints every figure (tx/s, p50, p99, errors, WAL flushes per transaction),
# the medians and the saga/dtmrs ratio.
#
# dtmrs (a Rust coordinator with DTM's HTTP API, crates.io) is installed by
# this script into target/dtmrs when absent:
#   cargo install dtmrs --version $DTMRS_VERSION --locked --root target/dtmrs/root --target-dir target/dtmrs/target
# or set DTMRS_BIN to an existing binary. It runs with its defaults (inline
# submit, pool of 32, 16 workers) and RUST_LOG=warn, as tandem-bench does.
#
# Environment: TANDEM_BENCH_PG (server, default postgres://postgres@127.0.0.1:5432),
# SECS (10), CLIENTS (32), ROUNDS (3), DTMRS_BIN, DTMRS_VERSION (0.13.0).
# Arguments go to every tandem-bench run (for example --dtm-poll-ms 2).
set -euo pipefail
cd "$(dirname "$0")/.."
kind="${1:-saga}"
case "$kind" in
  saga | dtm) branches=2 ;;
  msg) branches=1 ;;
  *) echo "usage: $0 saga|msg|dtm [tandem-bench args...]" >&2; exit 2 ;;
esac
shift || true
server="${TANDEM_BENCH_PG:-postgres://postgres@127.0.0.1:5432}"
secs="${SECS:-10}"
clients="${CLIENTS:-32}"
rounds="${ROUNDS:-3}"
dtmrs_version="${DTMRS_VERSION:-0.13.0}"
host=$(python3 -c "import sys,urllib.parse as u; p=u.urlparse(sys.argv[1]); print(p.hostname or '127.0.0.1', p.port or 5432, p.username or 'postgres')" "$server")
read -r pghost pgport pguser <<<"$host"
bash scripts/ensure-postgres.sh
cargo build --release --locked -p tandem-bench

if [ -z "${DTMRS_BIN:-}" ]; then
  DTMRS_BIN=target/dtmrs/root/bin/dtmrs
  if [ ! -x "$DTMRS_BIN" ]; then
    echo "== installing dtmrs $dtmrs_version into target/dtmrs (several minutes)"
    cargo install dtmrs --version "$dtmrs_version" --locked --root target/dtmrs/root --target-dir target/dtmrs/target
  fi
fi
[ -x "$DTMRS_BIN" ] || { echo "bench-dtmrs: no dtmrs binary at $DTMRS_BIN" >&2; exit 1; }

psql_admin() { psql -h "$pghost" -p "$pgport" -U "$pguser" -d postgres -qAt "$@"; }
fresh_db() { psql_admin -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"; }
# WAL flushes of the whole server so far (pg_stat_wal, PostgreSQL 14+).
wal_syncs() { psql_admin -c 'SELECT wal_sync FROM pg_stat_wal'; }

results=$(mktemp)
dtmrs_log=$(mktemp)
dtmrs_pid=
stop_dtmrs() {
  if [ -n "$dtmrs_pid" ]; then
    kill "$dtmrs_pid" 2>/dev/null || true
    wait "$dtmrs_pid" 2>/dev/null || true
    dtmrs_pid=
  fi
}
cleanup() {
  stop_dtmrs
  rm -f "$results" "$dtmrs_log"
  psql_admin -c 'DROP DATABASE IF EXISTS tandem_pgbench WITH (FORCE)' \
    -c 'DROP DATABASE IF EXISTS tandem_bench WITH (FORCE)' -c 'DROP DATABASE IF EXISTS tandem_dtmrs WITH (FORCE)' || true
}
trap cleanup EXIT

# measure LABEL TANDEM-BENCH-ARGS...: one tandem-bench run; appends its JSON
# (with its label and the server's WAL flushes per transaction) to $results.
measure() {
  local label="$1"
  shift
  local before after out
  before=$(wal_syncs)
  out=$(RUST_LOG=warn ./target/release/tandem-bench --branches "$branches" --concurrency "$clients" --duration-secs "$secs" \
    "$@" "${extra[@]}" 2>/dev/null | tail -1)
  after=$(wal_syncs)
  python3 - "$label" "$out" "$before" "$after" >>"$results" <<'PY'
import json, sys
label, out, before, after = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
out["label"] = label
out["wal_syncs_per_tx"] = round((after - before) / max(out.get("tx_total", 0), 1), 2)
print(json.dumps(out))
PY
  tail -1 "$results" | python3 -c "import json,sys; r=json.load(sys.stdin); print(f\"{r['label']:<12} {r['tx_per_sec']:>8.1f} tx/s  p50 {r['p50_ms']:>7.2f} ms  p99 {r['p99_ms']:>7.2f} ms  errors {r['errors']}  WAL flushes/tx {r['wal_syncs_per_tx']}\" + (f\"  polls/saga {r['query_polls_per_saga']}\" if 'query_polls_per_saga' in r else ''))"
}

# Starts dtmrs on a fresh database tandem_dtmrs on a free loopback port; sets dtm_url.
start_dtmrs() {
  fresh_db tandem_dtmrs
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  RUST_LOG=warn DTMRS_DB="$server/tandem_dtmrs" DTMRS_ADDR="127.0.0.1:$port" DTMRS_GRPC_ADDR=127.0.0.1:0 \
    "$DTMRS_BIN" >"$dtmrs_log" 2>&1 &
  dtmrs_pid=$!
  dtm_url="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do
    curl -fs "$dtm_url/health" >/dev/null 2>&1 && return 0
    kill -0 "$dtmrs_pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "bench-dtmrs: dtmrs did not start:" >&2
  cat "$dtmrs_log" >&2
  exit 1
}

extra=("$@")
echo "== machine: $(nproc) cores; PostgreSQL $(psql_admin -c 'show server_version'), fsync $(psql_admin -c 'show fsync'), synchronous_commit $(psql_admin -c 'show synchronous_commit'); dtmrs $DTMRS_BIN"

fresh_db tandem_pgbench
psql -h "$pghost" -p "$pgport" -U "$pguser" -d tandem_pgbench -q \
  -c 'CREATE TABLE t (id bigserial PRIMARY KEY, v int NOT NULL, at timestamptz NOT NULL DEFAULT now())'
script=$(mktemp)
echo 'INSERT INTO t (v) VALUES (1);' >"$script"
pg_tps=$(pgbench -h "$pghost" -p "$pgport" -U "$pguser" -n -c 8 -j 2 -T "$secs" -f "$script" tandem_pgbench 2>/dev/null \
  | awk '/^tps/ {print $3; exit}')
rm -f "$script"
psql_admin -c 'DROP DATABASE IF EXISTS tandem_pgbench WITH (FORCE)'
echo "pgbench      $pg_tps single-row inserts/s (8 clients)"

if [ "$kind" = saga ]; then
  fresh_db tandem_bench
  measure tcc --mode tcc --database-url "$server/tandem_bench"
elif [ "$kind" = dtm ]; then
  fresh_db tandem_bench
  measure native --mode saga --database-url "$server/tandem_bench"
else
  fresh_db tandem_bench
  measure msg-nats --mode msg-nats --database-url "$server/tandem_bench"
  fresh_db tandem_bench
  measure outbox --mode outbox --database-url "$server/tandem_bench"
fi

for round in $(seq 1 "$rounds"); do
  fresh_db tandem_bench
  if [ "$kind" = dtm ]; then
    measure "tandem-$round" --mode dtm-saga --database-url "$server/tandem_bench"
  else
    measure "tandem-$round" --mode "$kind" --database-url "$server/tandem_bench"
  fi
  start_dtmrs
  measure "dtmrs-$round" --mode "dtmrs-${kind/dtm/saga}" --dtm-url "$dtm_url"
  stop_dtmrs
done

python3 - "$pg_tps" "$results" "$kind" <<'PY'
import json, statistics, sys
pg = float(sys.argv[1])
rows = [json.loads(l) for l in open(sys.argv[2])]
kind = sys.argv[3]
def med(prefix, key):
    return statistics.median(r[key] for r in rows if r["label"].startswith(prefix))
print("== medians")
print("| run | tx/s | p50 ms | p99 ms | errors | WAL flushes/tx |")
print("|---|---|---|---|---|---|")
runs = {
    "saga": [("tcc (2 branches)", "tcc"), ("Tandem saga (2 steps)", "tandem-"), ("dtmrs saga (2 steps)", "dtmrs-")],
    "msg": [("Tandem msg to NATS JetStream", "msg-nats"), ("SDK outbox relay to HTTP", "outbox"),
            ("Tandem msg to HTTP", "tandem-"), ("dtmrs msg to HTTP", "dtmrs-")],
    "dtm": [("Tandem saga, POST /v1/sagas (2 steps)", "native"), ("Tandem saga, DTM client on /api/dtmsvr", "tandem-"),
            ("dtmrs saga, the same DTM client", "dtmrs-")],
}[kind]
for name, prefix in runs:
    errors = sum(r["errors"] for r in rows if r["label"].startswith(prefix))
    print(f"| {name} | {med(prefix, 'tx_per_sec'):.0f} | {med(prefix, 'p50_ms'):.1f} | {med(prefix, 'p99_ms'):.1f} "
          f"| {errors} | {med(prefix, 'wal_syncs_per_tx'):.2f} |")
ours = [r["tx_per_sec"] for r in rows if r["label"].startswith("tandem-")]
dtm = [r["tx_per_sec"] for r in rows if r["label"].startswith("dtmrs-")]
pairs = [s / d for s, d in zip(ours, dtm) if d > 0]
print(f"pgbench: {pg:.0f} inserts/s; Tandem {kind} = {med('tandem-', 'tx_per_sec') / pg:.3f} x pgbench")
print(f"{kind}/dtmrs per pair: " + ", ".join(f"{p:.2f}" for p in pairs)
      + f"; median {statistics.median(pairs):.2f}" if pairs else f"{kind}/dtmrs: no dtmrs figure")
PY
