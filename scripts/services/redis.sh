#!/usr/bin/env bash
# Makes a Redis server available to the tests: installs the Debian `redis-server` package when it
# is missing, starts a throwaway server on 127.0.0.1:6379 when nothing listens there, and prints
# `export DCRON_TEST_REDIS_URL=...` on stdout (scripts/test evals it). Logs go to stderr.
# Idempotent: a second run finds the server listening and only prints the URL. An already set
# DCRON_TEST_REDIS_URL is respected as is (nothing is installed or started).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

if [ -n "${DCRON_TEST_REDIS_URL:-}" ]; then
  log "redis: using DCRON_TEST_REDIS_URL=$DCRON_TEST_REDIS_URL"
  printf 'export DCRON_TEST_REDIS_URL=%q\n' "$DCRON_TEST_REDIS_URL"
  exit 0
fi

host=127.0.0.1
port=6379
url="redis://$host:$port"

# The harness-owned servers of the fault tests need the binary even when a server already runs.
apt_install redis-server || log "redis: could not install redis-server (tests that start their own server will skip)"

if port_open "$host" "$port"; then
  log "redis: something already listens on $host:$port"
else
  dir="$DCRON_STATE_DIR/redis"
  mkdir -p "$dir"
  server="$(command -v redis-server || echo /usr/bin/redis-server)"
  if [ ! -x "$server" ]; then
    log "redis: no redis-server binary and nothing listens on $host:$port"
    exit 1
  fi
  log "redis: starting $server on $host:$port (state in $dir)"
  # No persistence: this shared server only holds test namespaces.
  "$server" --bind "$host" --port "$port" --daemonize yes \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --save '' --appendonly no --maxmemory-policy noeviction >&2
  if ! wait_port "$host" "$port" 20; then
    log "redis: server did not start listening on $host:$port; see $dir/redis.log"
    tail -n 20 "$dir/redis.log" >&2 || true
    exit 1
  fi
fi

printf 'export DCRON_TEST_REDIS_URL=%q\n' "$url"
