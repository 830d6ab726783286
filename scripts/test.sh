#!/usr/bin/env bash
# The test command of the README: prepares PostgreSQL, then runs every test
# of the workspace (unit tests and the acceptance suites, which create and
# drop their own databases). Extra arguments go to cargo test. Ends with one
# summary line, "N passed, N failed", over all test binaries.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
export TANDEM_TEST_PG="${TANDEM_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
set +e
cargo test --workspace --locked "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "%d passed, %d failed\n", p, f }' "$log"
exit "$status"
