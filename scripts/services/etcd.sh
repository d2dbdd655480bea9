#!/usr/bin/env bash
# Makes an etcd server available to the tests: installs `protobuf-compiler` and `libprotobuf-dev`
# (etcd-client runs protoc at build time, and its protos import google/protobuf/*.proto) and the Debian `etcd-server` package when they are missing, starts a
# throwaway single-member etcd on 127.0.0.1:2379 (client) / 127.0.0.1:2380 (peer) with a fresh
# data directory when nothing listens there, and prints `export DCRON_TEST_ETCD_ENDPOINTS=...`
# and `export PROTOC=...` on stdout (scripts/test evals them). Logs go to stderr.
# Idempotent: a second run finds the server listening and only prints the variables. An already
# set DCRON_TEST_ETCD_ENDPOINTS is respected (no server is started; packages are still checked
# because the build needs protoc and the harness-owned fault tests need the etcd binary).
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

# protoc and the well-known types for the build, the etcd binary for the harness-owned servers
# of the fault tests.
apt_install protobuf-compiler libprotobuf-dev etcd-server

protoc_bin="$(command -v protoc || echo /usr/bin/protoc)"
if [ -x "$protoc_bin" ]; then
  printf 'export PROTOC=%q\n' "$protoc_bin"
fi
etcd_bin="$(command -v etcd || echo /usr/bin/etcd)"
if [ -x "$etcd_bin" ]; then
  # The harness-owned servers of the fault and auth tests start this binary.
  printf 'export DCRON_TEST_ETCD_BIN=%q\n' "$etcd_bin"
fi

if [ -n "${DCRON_TEST_ETCD_ENDPOINTS:-}" ]; then
  log "etcd: using DCRON_TEST_ETCD_ENDPOINTS=$DCRON_TEST_ETCD_ENDPOINTS"
  printf 'export DCRON_TEST_ETCD_ENDPOINTS=%q\n' "$DCRON_TEST_ETCD_ENDPOINTS"
  exit 0
fi

host=127.0.0.1
port=2379
peer_port=2380

healthy() {
  # Cheap health check over the gRPC gateway; absent curl the open port has to do.
  if command -v curl >/dev/null 2>&1; then
    curl -fsS --max-time 2 "http://$host:$port/health" 2>/dev/null | grep -q '"health":"true"'
  else
    port_open "$host" "$port"
  fi
}

if port_open "$host" "$port"; then
  log "etcd: something already listens on $host:$port"
else
  if [ ! -x "$etcd_bin" ]; then
    log "etcd: no etcd binary at $etcd_bin"
    exit 1
  fi
  base="$DCRON_STATE_DIR/etcd"
  mkdir -p "$base"
  # A fresh data directory per start: the shared server only holds test namespaces. On tmpfs
  # when there is one: etcd syncs every write to disk, and a loaded CI machine's disk made
  # requests time out.
  data="$base/data"
  if [ -d /dev/shm ] && [ -w /dev/shm ]; then
    data="/dev/shm/dcron-test-etcd-data"
  fi
  rm -rf "$data"
  log "etcd: starting $etcd_bin on $host:$port (data in $data, log $base/etcd.log)"
  setsid nohup "$etcd_bin" \
    --name dcron-test \
    --data-dir "$data" \
    --listen-client-urls "http://$host:$port" \
    --advertise-client-urls "http://$host:$port" \
    --listen-peer-urls "http://$host:$peer_port" \
    --initial-advertise-peer-urls "http://$host:$peer_port" \
    --initial-cluster "dcron-test=http://$host:$peer_port" \
    --initial-cluster-state new \
    >"$base/etcd.log" 2>&1 </dev/null &
  echo $! >"$base/etcd.pid"
  if ! wait_port "$host" "$port" 30; then
    log "etcd: server did not start listening on $host:$port; see $base/etcd.log"
    tail -n 20 "$base/etcd.log" >&2 || true
    exit 1
  fi
fi

deadline=$((SECONDS + 20))
until healthy; do
  if [ $SECONDS -ge $deadline ]; then
    log "etcd: $host:$port is open but not healthy"
    exit 1
  fi
  sleep 0.2
done

printf 'export DCRON_TEST_ETCD_ENDPOINTS=%q\n' "$host:$port"
