#!/usr/bin/env bash
# Makes a 3-master Redis Cluster available to the tests: starts (when nothing listens there)
# `redis-server --cluster-enabled yes` on 127.0.0.1:7001..7003, each with its own directory
# under $DCRON_STATE_DIR/redis-cluster, joins them with `redis-cli --cluster create` (no
# replicas), waits for `cluster_state:ok`, and prints
# `export DCRON_TEST_REDIS_CLUSTER_URLS=...` on stdout (scripts/test evals it). Logs go to stderr.
# Idempotent: a second run finds the cluster up and only prints the URLs. An already set
# DCRON_TEST_REDIS_CLUSTER_URLS is respected as is (nothing is started).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

if [ -n "${DCRON_TEST_REDIS_CLUSTER_URLS:-}" ]; then
  log "redis-cluster: using DCRON_TEST_REDIS_CLUSTER_URLS=$DCRON_TEST_REDIS_CLUSTER_URLS"
  printf 'export DCRON_TEST_REDIS_CLUSTER_URLS=%q\n' "$DCRON_TEST_REDIS_CLUSTER_URLS"
  exit 0
fi

host=127.0.0.1
ports=(7001 7002 7003)
urls=""
for p in "${ports[@]}"; do urls="${urls:+$urls,}redis://$host:$p"; done

apt_install redis-server redis-tools || log "redis-cluster: could not install redis-server"
server="$(command -v redis-server || echo /usr/bin/redis-server)"
cli="$(command -v redis-cli || echo /usr/bin/redis-cli)"
if [ ! -x "$server" ] || [ ! -x "$cli" ]; then
  log "redis-cluster: no redis-server or redis-cli binary"
  exit 1
fi

started=0
for p in "${ports[@]}"; do
  if port_open "$host" "$p"; then
    log "redis-cluster: something already listens on $host:$p"
    continue
  fi
  dir="$DCRON_STATE_DIR/redis-cluster/$p"
  mkdir -p "$dir"
  # A fresh node each time: a cluster config left by an earlier run names node ids and slots
  # of a cluster that no longer exists.
  rm -f "$dir/nodes.conf"
  log "redis-cluster: starting $server on $host:$p (state in $dir)"
  "$server" --bind "$host" --port "$p" --daemonize yes --cluster-enabled yes \
    --cluster-config-file "$dir/nodes.conf" --cluster-node-timeout 5000 \
    --dir "$dir" --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" \
    --save '' --appendonly no --maxmemory-policy noeviction >&2
  if ! wait_port "$host" "$p" 20; then
    log "redis-cluster: server did not start listening on $host:$p; see $dir/redis.log"
    tail -n 20 "$dir/redis.log" >&2 || true
    exit 1
  fi
  started=1
done

state() { "$cli" -h "$host" -p "${ports[0]}" cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_state://p'; }
slots() { "$cli" -h "$host" -p "${ports[0]}" cluster info 2>/dev/null | tr -d '\r' | sed -n 's/^cluster_slots_assigned://p'; }

if [ "$(slots)" != "16384" ]; then
  if [ "$started" = 0 ]; then
    log "redis-cluster: the servers on ports ${ports[*]} are not a formed cluster; forming one"
  fi
  nodes=()
  for p in "${ports[@]}"; do nodes+=("$host:$p"); done
  log "redis-cluster: redis-cli --cluster create ${nodes[*]}"
  "$cli" --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >&2
fi

deadline=$((SECONDS + 30))
until [ "$(state)" = "ok" ]; do
  if [ $SECONDS -ge $deadline ]; then
    log "redis-cluster: cluster_state did not become ok within 30 s"
    "$cli" -h "$host" -p "${ports[0]}" cluster info >&2 || true
    exit 1
  fi
  sleep 0.2
done
log "redis-cluster: cluster_state:ok on ${ports[*]}"

printf 'export DCRON_TEST_REDIS_CLUSTER_URLS=%q\n' "$urls"
