#!/usr/bin/env bash
# Fuzzes a running coordinator from its own OpenAPI document with
# Schemathesis (`--checks all`: undocumented statuses, schema-valid requests
# refused, schema-invalid requests accepted, server errors, response shapes,
# and authentication ignored), with authentication on: an admin token made
# for the run, and at least 5,000 generated requests. Afterwards the state
# must still be consistent: every transaction listed is readable, and the
# coordinator's log holds no panic. Any failure fails the script. Schemathesis is installed from PyPI into
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
# 6 s, so 100 ms) small: commits whose callbacks go nowhere wait that long.
# Tokens and a callback key for this run only.
admin=$(target/debug/tandem token new --role admin --name fuzz 2>/dev/null)
token=$(printf '%s\n' "$admin" | sed -n 's/^token: //p')
export TANDEM_TOKENS="$(printf '%s\n' "$admin" | sed -n 's/^entry: //p')"
export TANDEM_CALLBACK_KEY="$(target/debug/tandem token key)"
RUST_LOG=warn target/debug/tandem serve --database-url "$pg/$db" --listen "127.0.0.1:$port" \
  --request-timeout-ms 6100 --lease-ms 15000 --recovery-interval-ms 1000 >"$log" 2>&1 &
server=$!
url="http://127.0.0.1:$port"
for _ in $(seq 1 100); do
  curl -sf "$url/readyz" >/dev/null && break
  sleep 0.1
done
export TANDEM_FUZZ_TOKEN="$token"
TANDEM_CALLBACK_URL_PATTERN=$(curl -sf "$url/openapi.json" | python3 -c \
  'import json, sys; print(json.load(sys.stdin)["components"]["schemas"]["RegisterBranchRequest"]["properties"]["callback_url"]["pattern"])')
export TANDEM_CALLBACK_URL_PATTERN
export SCHEMATHESIS_HOOKS=schemathesis_hooks PYTHONPATH=scripts TANDEM_TAKEOVER_MS=16000
set +e
report=$(mktemp)
"$venv/bin/schemathesis" run "$url/openapi.json" --checks all --no-color --max-examples 240 \
  --exclude-tag dtm "$@" | tee "$report"
status=${PIPESTATUS[0]}
# DTM's protocol (tag dtm) answers in DTM's shapes: a schema-valid request
# may still be one DTM refuses (a saga without steps, an unknown gid), so
# the acceptance and rejection checks do not apply; every other check does
# (no server error, every status and body as documented).
"$venv/bin/schemathesis" run "$url/openapi.json" --checks all --no-color --max-examples 120 \
  --include-tag dtm --exclude-checks positive_data_acceptance,negative_data_rejection "$@" | tee -a "$report"
dtm_status=${PIPESTATUS[0]}
[ "$status" = 0 ] && status=$dtm_status
set -e
generated=$(sed -n 's/^ *\([0-9][0-9]*\) generated.*/\1/p' "$report" | head -1)
rm -f "$report"
echo "schemathesis: ${generated:-0} requests generated"
if [ "$status" = 0 ] && [ "${generated:-0}" -lt 5000 ]; then
  echo "schemathesis generated fewer than 5,000 requests" >&2
  status=1
fi
# The state afterwards: every transaction listed is readable, no panic logged.
if ! TOKEN="$token" URL="$url" python3 - <<'PY'
import json, os, sys, urllib.request
url, token = os.environ["URL"], os.environ["TOKEN"]
def get(path):
    req = urllib.request.Request(url + path, headers={"Authorization": "Bearer " + token})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)
after, n = None, 0
while True:
    page = get("/v1/transactions?limit=500" + (f"&after={after}" if after else ""))
    for t in page["transactions"]:
        got = get(f"/v1/transactions/{t['xid']}")
        assert got["xid"] == t["xid"], got
        n += 1
    after = page.get("next")
    if not after:
        break
print(f"consistent: {n} transactions, each readable")
PY
then
  echo "the coordinator's state is not consistent after fuzzing" >&2
  status=1
fi
if grep -q "panicked" "$log"; then
  echo "the coordinator panicked during fuzzing" >&2
  status=1
fi
if [ "$status" != 0 ]; then
  echo "schemathesis found failures; the coordinator's log:" >&2
  tail -50 "$log" >&2
fi
exit "$status"
