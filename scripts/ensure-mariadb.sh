#!/usr/bin/env bash
# Makes sure the MariaDB the XA tests use answers (127.0.0.1:3306, root,
# empty password, as on the rust-svc machines); starts the installed server
# if it is stopped.
set -euo pipefail
ping() { mariadb-admin -uroot -h127.0.0.1 --connect-timeout=2 ping >/dev/null 2>&1; }
if ! ping; then
  if [ -x /usr/sbin/mariadbd ]; then
    echo "ensure-mariadb: starting mariadbd"
    start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd || true
  fi
  for _ in $(seq 1 60); do ping && break; sleep 0.5; done
fi
if ! ping; then
  echo "ensure-mariadb: no MariaDB answers on 127.0.0.1:3306" >&2
  exit 1
fi
echo "ensure-mariadb: $(mariadb -uroot -h127.0.0.1 -Nse 'select version()') on 127.0.0.1:3306"
