#!/usr/bin/env bash
# Fuzzes a running coordinator from its own OpenAPI document with
# Schemathesis (`--checks all`: undocumented statuses, schema-valid requests
# refused, schema-invalid requests accepted, server errors, response shapes).
# Any failure fails the script. Schemathesis is installed from PyPI into
# target/schemathesis-venv on first use. scripts/schemathesis_hooks.py says
# which generated requests it adjusts, and why.
set -euo pipefail
cd "$(dirname "$0")/.."
pg="${TANDEM_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
venv=target/schemathesis-venv
version=4.32.5
if ! "$venv/bin/schemathesis" --version 2>/dev/null | grep -q "$version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$version"
fi
cargo build --locked --quiet -p tandem-coordinator --bin tandem
db="tandem_schemathesis_$$"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=$(mktemp)
psql "$pg/postgres" -qc "CREATE DATABASE $db"
cleanup() {
  [ -n "${server:-}" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  psql "$pg/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -f "$log"
}
trap cleanup EXIT
# A short request timeout keeps wait_ms (at most the request timeout minus
# 6 s) small: commits whose callbacks go nowhere wait that long.
RUST_LOG=warn target/debug/tandem serve --database-url "$pg/$db" --listen "127.0.0.1:$port" \
  --request-timeout-ms 7000 --lease-ms 15000 --recovery-interval-ms 1000 >"$log" 2>&1 &
server=$!
url="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -sf "$url/readyz" >/dev/null && break
  sleep 0.1
done
export SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH=scripts TANDEM_TAKEOVER_MS=16000
set +e
"$venv/bin/schemathesis" run "$url/openapi.json" --checks all --no-color "$@"
status=$?
set -e
if [ "$status" != 0 ]; then
  echo "schemathesis found failures; the coordinator's log:" >&2
  tail -50 "$log" >&2
fi
exit "$status"
