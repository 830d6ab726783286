#!/usr/bin/env bash
# Makes sure the brokers the message tests use answer: NATS with JetStream on
# 127.0.0.1:4222 and RabbitMQ on 127.0.0.1:5672 (guest/guest), as on the
# rust-svc machines; starts the installed servers if they are stopped.
set -euo pipefail
open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_for() { for _ in $(seq 1 120); do open "$1" && return 0; sleep 0.5; done; return 1; }
if ! open 4222; then
  echo "ensure-brokers: starting nats-server with JetStream"
  store=$(mktemp -d /tmp/tandem-nats-XXXXXX)
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- -js -a 127.0.0.1 -p 4222 -sd "$store"
  wait_for 4222 || { echo "ensure-brokers: no NATS on 127.0.0.1:4222" >&2; exit 1; }
fi
if ! open 5672; then
  echo "ensure-brokers: starting rabbitmq-server"
  start-stop-daemon --start --oknodo --background --exec /usr/sbin/rabbitmq-server
  wait_for 5672 || { echo "ensure-brokers: no RabbitMQ on 127.0.0.1:5672" >&2; exit 1; }
fi
echo "ensure-brokers: NATS on 127.0.0.1:4222, RabbitMQ on 127.0.0.1:5672"
