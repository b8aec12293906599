#!/usr/bin/env bash
# Runs the whole pipeline on a machine that already has PostgreSQL and RabbitMQ: builds,
# migrates (creating the database if needed), then runs one worker, ingest and the console
# until Ctrl-C.
# Settings come from config/local.toml, overridden by environment variables. They connect as
# the local servers' `postgres` and `guest`, with a public Stripe secret: fine on a developer
# machine, nowhere else (docker-compose.yml shows a deployment's users and secrets).
set -euo pipefail
cd "$(dirname "$0")/.."
export WEBHOOKS_CONFIG="${WEBHOOKS_CONFIG:-config/local.toml}"

cargo build --release --locked --bin ingest --bin worker --bin hookctl --bin console
bin=target/release

"$bin/worker" migrate
"$bin/worker" &
worker_pid=$!
"$bin/ingest" &
ingest_pid=$!
# The console on http://127.0.0.1:3002, with a development-only operator `dev`, password
# `dev` (this hash is public: never use it anywhere else). Set CONSOLE_USERS for your own.
export CONSOLE_USERS="${CONSOLE_USERS:-dev:operator:\$argon2id\$v=19\$m=19456,t=2,p=1\$LgsM3ugNlbN+l/J7CGujEQ\$ea+uxLYrfQhftx4dCmtzbqLTIthBxUCFNfa1aUspB0E}"
export CONSOLE_WORKER_ADDRS="${CONSOLE_WORKER_ADDRS:-127.0.0.1:9090}"
"$bin/console" &
console_pid=$!

stop() {
  kill -TERM "$ingest_pid" "$worker_pid" "$console_pid" 2>/dev/null || true
  wait "$ingest_pid" "$worker_pid" "$console_pid" 2>/dev/null || true
}
trap stop INT TERM EXIT

echo "ingest on http://127.0.0.1:3000 (metrics on http://127.0.0.1:9091/metrics), worker metrics on http://127.0.0.1:9090/metrics"
echo "console on http://127.0.0.1:3002 (user dev, password dev, unless CONSOLE_USERS says otherwise)"
echo "send a test event: WEBHOOKS_CONFIG=config/local.toml $bin/hookctl send stripe checkout.session.completed --order <order id>"
wait -n "$ingest_pid" "$worker_pid" "$console_pid"
