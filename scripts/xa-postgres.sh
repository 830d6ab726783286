#!/usr/bin/env bash
# Starts (creating it on first use) a PostgreSQL cluster for XA tests: the
# machine's own cluster has max_prepared_transactions = 0, and that setting
# needs a server restart, so XA gets its own cluster on another port
# (default 127.0.0.1:5433, trust auth, max_prepared_transactions = 64).
# Idempotent: does nothing if the cluster already answers.
set -euo pipefail

port="${TANDEM_XA_PG_PORT:-5433}"
data="${TANDEM_XA_PGDATA:-/var/tmp/tandem-pg-xa}"
bin="${TANDEM_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}"

ready() { pg_isready -q -h 127.0.0.1 -p "$port" 2>/dev/null; }
if ready; then
  echo "xa-postgres: already running on 127.0.0.1:$port"
  exit 0
fi
if [ ! -x "$bin/initdb" ]; then
  echo "xa-postgres: initdb not found (set TANDEM_PG_BIN to PostgreSQL's bin directory)" >&2
  exit 1
fi

# PostgreSQL refuses to run as root: run its tools as the postgres user when we are root.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

if [ ! -f "$data/PG_VERSION" ]; then
  mkdir -p "$data"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$data"
  as_pg "$bin/initdb" -D "$data" -U postgres --auth=trust --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  echo "xa-postgres: created cluster in $data"
fi
sockdir=/var/run/postgresql
[ -w "$sockdir" ] || sockdir=/tmp
as_pg "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
  -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$sockdir -c max_prepared_transactions=64 -c max_connections=200" \
  start >/dev/null
ready
echo "xa-postgres: running on 127.0.0.1:$port ($(psql -h 127.0.0.1 -p "$port" -U postgres -Atqc 'show max_prepared_transactions') prepared transactions)"
