#!/usr/bin/env bash
# The test command of the README: prepares PostgreSQL, then runs every test
# of the workspace (unit tests and the acceptance suites, which create and
# drop their own databases). Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/ensure-postgres.sh
export TANDEM_TEST_PG="${TANDEM_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
cargo test --workspace --locked "$@"
