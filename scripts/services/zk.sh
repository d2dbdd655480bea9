#!/usr/bin/env bash
# ZooKeeper for the dcron-registry-zk tests. Installs the Debian package `zookeeper` when it is
# missing, starts a standalone server on 127.0.0.1:2181 (data under $DCRON_STATE_DIR/zk) when
# nothing listens there, and prints `export DCRON_TEST_ZK_CONNECT=...` on stdout (everything else
# goes to stderr). Idempotent: a running server is reused. systemd is not used.
#
# Server settings the registry's tests rely on:
#   tickTime=500, minSessionTimeout=1000  short sessions, so lease-expiry tests finish quickly;
#   extendedTypesEnabled=true             TTL znodes collect expired claims; the container
#                                         check interval stays at ZooKeeper's default (60 s):
#                                         the registry never relies on it (expired claims count
#                                         as absent at once).
#   admin server off, 4lw whitelist ruok/srvr.
set -euo pipefail
cd "$(dirname "$0")/../.."
source scripts/lib.sh

if [ -n "${DCRON_TEST_ZK_CONNECT:-}" ]; then
  log "zk: using DCRON_TEST_ZK_CONNECT=$DCRON_TEST_ZK_CONNECT"
  printf 'export DCRON_TEST_ZK_CONNECT=%q\n' "$DCRON_TEST_ZK_CONNECT"
  exit 0
fi

HOST=127.0.0.1
PORT=2181

zk_ruok() {
  # Four-letter word over bash's /dev/tcp: prints the server's answer (imok when healthy).
  local reply=""
  if exec 3<>"/dev/tcp/$HOST/$PORT" 2>/dev/null; then
    printf 'ruok' >&3
    reply="$(timeout 2 cat <&3 2>/dev/null || true)"
    exec 3<&- 3>&- || true
  fi
  printf '%s' "$reply"
}

if port_open "$HOST" "$PORT"; then
  log "zk: something already listens on $HOST:$PORT; reusing it"
else
  apt_install zookeeper || { log "zk: cannot install zookeeper"; exit 0; }
  ZK_JAR=/usr/share/java/zookeeper.jar
  if [ ! -f "$ZK_JAR" ]; then
    log "zk: $ZK_JAR not found; the ZooKeeper tests will skip"
    exit 0
  fi
  CP="$ZK_JAR"
  # A logging binding so the server log is not empty (optional).
  [ -f /usr/share/java/slf4j-simple.jar ] && CP="$CP:/usr/share/java/slf4j-simple.jar"

  ZK_DIR="$DCRON_STATE_DIR/zk"
  mkdir -p "$ZK_DIR/data"
  cat >"$ZK_DIR/zoo.cfg" <<EOF
tickTime=500
initLimit=10
syncLimit=5
dataDir=$ZK_DIR/data
clientPort=$PORT
clientPortAddress=$HOST
minSessionTimeout=1000
maxSessionTimeout=60000
maxClientCnxns=0
extendedTypesEnabled=true
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat,cons
autopurge.purgeInterval=1
autopurge.snapRetainCount=3
EOF
  log "zk: starting ZooKeeper on $HOST:$PORT (log $ZK_DIR/zookeeper.log)"
  nohup java -Xmx256m -Dzookeeper.jmx.log4j.disable=true \
    -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "$CP" org.apache.zookeeper.server.quorum.QuorumPeerMain "$ZK_DIR/zoo.cfg" \
    >"$ZK_DIR/zookeeper.log" 2>&1 </dev/null &
  echo $! >"$ZK_DIR/zookeeper.pid"
  if ! wait_port "$HOST" "$PORT" 60; then
    log "zk: server did not open $HOST:$PORT within 60 s; see $ZK_DIR/zookeeper.log"
    tail -n 20 "$ZK_DIR/zookeeper.log" >&2 || true
    exit 0
  fi
fi

deadline=$((SECONDS + 30))
until [ "$(zk_ruok)" = "imok" ]; do
  if [ $SECONDS -ge $deadline ]; then
    log "zk: $HOST:$PORT does not answer ruok with imok"
    break
  fi
  sleep 0.2
done

printf 'export DCRON_TEST_ZK_CONNECT=%q\n' "$HOST:$PORT"
