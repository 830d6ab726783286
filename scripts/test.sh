#!/usr/bin/env bash
# The test command of the README: prepares PostgreSQL, then runs every test
# of the workspace (unit tests and the acceptance suites, which create and
# drop their own databases), then fuzzes the HTTP API from its OpenAPI
# document (scripts/schemathesis.sh). Extra arguments go to cargo test. Ends with one
# summary line, "N passed, N failed", over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
bash scripts/xa-postgres.sh
bash scripts/ensure-mariadb.sh
bash scripts/ensure-brokers.sh
bash scripts/ensure-chromium.sh
# The unmodified dtmcli from PyPI, for the DTM compatibility tests (tests/dtm).
bash scripts/ensure-dtmcli.sh
export TANDEM_TEST_PG="${TANDEM_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
export TANDEM_TEST_XA_PG="${TANDEM_TEST_XA_PG:-postgres://postgres@127.0.0.1:${TANDEM_XA_PG_PORT:-5433}}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
# The HTTP API against its own OpenAPI document (Schemathesis, --checks all).
if ! bash scripts/schemathesis.sh; then
  echo "schemathesis: the coordinator and its OpenAPI document disagree (above)" >&2
  status=1
fi
# The suite must leave no prepared transaction of ours on any server.
for server in "$TANDEM_TEST_PG" "$TANDEM_TEST_XA_PG"; do
  left=$(psql "$server/postgres" -Atqc "SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'tandem|%' OR gid LIKE 'tandem3|%'")
  if [ "$left" != 0 ]; then
    echo "prepared transactions left on $server: $left" >&2
    psql "$server/postgres" -Atqc "SELECT gid, database, prepared FROM pg_prepared_xacts" >&2
    status=1
  fi
done
left=$(mariadb -uroot -h127.0.0.1 -Nse 'XA RECOVER' | awk '$1 == 5522509' | wc -l)
if [ "$left" != 0 ]; then
  echo "prepared XA branches left on MariaDB: $left" >&2
  status=1
fi
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
