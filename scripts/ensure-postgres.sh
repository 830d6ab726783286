#!/usr/bin/env bash
# Makes sure the PostgreSQL the tests use answers (default 127.0.0.1:5432,
# user postgres, trust auth, as on the rust-svc machines). Starts the local
# Debian cluster if it is installed but stopped. Prints what it found.
set -euo pipefail

host="${PGHOST_FOR_TESTS:-127.0.0.1}"
port="${PGPORT_FOR_TESTS:-5432}"

ready() { pg_isready -q -h "$host" -p "$port" 2>/dev/null; }

if ! command -v pg_isready >/dev/null; then
  echo "ensure-postgres: pg_isready not found; install postgresql-client (apt-get install postgresql-client)" >&2
  exit 1
fi

if ! ready; then
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    version=$(ls /etc/postgresql | sort -n | tail -1)
    echo "ensure-postgres: starting local cluster $version/main"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  for _ in $(seq 1 60); do ready && break; sleep 0.5; done
fi

if ! ready; then
  echo "ensure-postgres: no PostgreSQL answers on $host:$port" >&2
  exit 1
fi
psql -h "$host" -p "$port" -U postgres -d postgres -Atqc 'select 1' >/dev/null
echo "ensure-postgres: PostgreSQL $(psql -h "$host" -p "$port" -U postgres -d postgres -Atqc 'show server_version') on $host:$port"
