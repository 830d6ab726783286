#!/usr/bin/env bash
# The Python virtual environment of the DTM compatibility tests (tests/dtm):
# the unmodified dtmcli from PyPI, pinned (tests/dtm/python/requirements.txt),
# in target/dtmcli-venv. Idempotent: does nothing once installed.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/dtmcli-venv
req=tests/dtm/python/requirements.txt
stamp="$venv/.installed-$(sha256sum "$req" | cut -c1-16)"
if [ -f "$stamp" ]; then
  exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
touch "$stamp"
echo "ensure-dtmcli: $("$venv/bin/pip" show dtmcli | sed -n 's/^Version: /dtmcli /p') in $venv"
