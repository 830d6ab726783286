#!/usr/bin/env bash
# The long version of the fault-injection suite (tests/chaos): the same code
# as the short run of `cargo test`, sized by the environment. Defaults: at
# least 100,000 transfers (the faults stop there, or after CHAOS_SECONDS),
# a fault every 0.6-2.4 s (about 0.2 coordinator kills a second).
#
#   scripts/chaos-long.sh                                  # the defaults below
#   CHAOS_TRANSFERS=20000 CHAOS_SEED=42 scripts/chaos-long.sh
#   CHAOS_RELEASE=1 scripts/chaos-long.sh                  # optimized build
#
# Every CHAOS_* variable of tests/chaos/main.rs is passed through; the
# suite prints its seed first and its figures last, and exits non-zero on
# any invariant violation. Needs what the tests need: PostgreSQL on 5432,
# the XA cluster on 5433 (started here with scripts/xa-postgres.sh),
# MariaDB on 3306, root for the network namespace (without it the
# partition fault is skipped, and the suite says so).
set -euo pipefail
cd "$(dirname "$0")/.."

export CHAOS_TRANSFERS="${CHAOS_TRANSFERS:-100000}"
export CHAOS_SECONDS="${CHAOS_SECONDS:-2400}"
export CHAOS_CLIENTS="${CHAOS_CLIENTS:-8}"
export CHAOS_FAULT_MS="${CHAOS_FAULT_MS:-600-2400}"
export CHAOS_ACCOUNTS="${CHAOS_ACCOUNTS:-32}"
export TANDEM_TEST_PG="${TANDEM_TEST_PG:-postgres://postgres@127.0.0.1:5432}"
export TANDEM_TEST_XA_PG="${TANDEM_TEST_XA_PG:-postgres://postgres@127.0.0.1:5433}"

scripts/xa-postgres.sh

profile=()
dir=debug
[ -n "${CHAOS_RELEASE:-}" ] && { profile=(--release); dir=release; }
# Build only (cargo test would hold the build lock while the suite runs),
# then run copies of the two binaries: a build during the run must not
# replace the coordinator under it.
bin=$(cargo test "${profile[@]}" -p tandem-coordinator --test chaos --no-run --message-format=json 2>/dev/null |
  sed -n 's/.*"executable":"\([^"]*chaos[^"]*\)".*/\1/p' | tail -1)
if [ -z "$bin" ] || [ ! -x "$bin" ] || [ ! -x "target/$dir/tandem" ]; then
  echo "chaos-long: building the suite failed; run: cargo test -p tandem-coordinator --test chaos --no-run" >&2
  exit 2
fi
aside="target/chaos-long/$$"
mkdir -p "$aside"
cp "$bin" "$aside/chaos"
cp "target/$dir/tandem" "$aside/tandem"
trap 'rm -rf "$aside"' EXIT
export CHAOS_TANDEM_BIN="$PWD/$aside/tandem"
echo "chaos-long: $bin (copied to $aside); CHAOS_TRANSFERS=$CHAOS_TRANSFERS CHAOS_SECONDS=$CHAOS_SECONDS" \
  "CHAOS_CLIENTS=$CHAOS_CLIENTS CHAOS_FAULT_MS=$CHAOS_FAULT_MS CHAOS_ACCOUNTS=$CHAOS_ACCOUNTS${CHAOS_SEED:+ CHAOS_SEED=$CHAOS_SEED}"
"$aside/chaos"
