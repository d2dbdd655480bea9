#!/usr/bin/env bash
# PostgreSQL for the dcron-registry-postgres tests. Finds the server binaries (installs Debian's
# `postgresql` package when they are missing, as root), and when no server of ours answers,
# `initdb`s a throwaway cluster under $DCRON_STATE_DIR/postgres (as the `postgres` user when run
# as root), starts it with `pg_ctl` on a free loopback port, and creates the database
# `dcron_test`. Prints `export DCRON_TEST_POSTGRES_URL=...` and `export DCRON_TEST_POSTGRES_BIN=...`
# (the binaries, for the tests that start servers of their own) on stdout; logs go to stderr.
# Idempotent: a second run finds the running server and only prints the variables. An already
# set DCRON_TEST_POSTGRES_URL is respected as is. With DCRON_TEST_REQUIRE=1 a server that cannot
# be made available is a failure (exit 1); otherwise the tests skip.
set -euo pipefail
source "$(dirname "$0")/../lib.sh"

fail() {
  log "postgres: $*"
  if [ "${DCRON_TEST_REQUIRE:-}" = "1" ]; then exit 1; fi
  exit 0
}

# The newest installed server's binary directory, if any.
find_bindir() {
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/postgres" ]; then
      printf '%s' "$d"
      return 0
    fi
  done
  return 1
}

bindir="$(find_bindir || true)"
if [ -z "$bindir" ]; then
  apt_install postgresql || true
  bindir="$(find_bindir || true)"
fi
if [ -n "$bindir" ]; then
  printf 'export DCRON_TEST_POSTGRES_BIN=%q\n' "$bindir"
fi

if [ -n "${DCRON_TEST_POSTGRES_URL:-}" ]; then
  log "postgres: using DCRON_TEST_POSTGRES_URL (credentials not shown)"
  printf 'export DCRON_TEST_POSTGRES_URL=%q\n' "$DCRON_TEST_POSTGRES_URL"
  exit 0
fi
[ -n "$bindir" ] || fail "no PostgreSQL server binaries (and could not install postgresql)"

# Runs a command as the `postgres` user when we are root (the server refuses to run as root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

host=127.0.0.1
dir="$DCRON_STATE_DIR/postgres"
data="$dir/data"
portfile="$dir/port"
mkdir -p "$dir"
if [ "$(id -u)" -eq 0 ]; then chown postgres: "$dir"; fi

url_for() { printf 'postgres://postgres@%s:%s/dcron_test' "$host" "$1"; }

# A server of ours from an earlier run that still answers: reuse it.
if [ -f "$portfile" ] && [ -f "$data/postmaster.pid" ]; then
  port="$(cat "$portfile")"
  if as_pg "$bindir/pg_isready" -q -h "$host" -p "$port" -t 3; then
    log "postgres: reusing the server on $host:$port (data in $data)"
    printf 'export DCRON_TEST_POSTGRES_URL=%q\n' "$(url_for "$port")"
    exit 0
  fi
fi

if [ ! -f "$data/PG_VERSION" ]; then
  rm -rf "$data"
  log "postgres: initdb $data"
  as_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
    { tail -n 20 "$dir/initdb.log" >&2; fail "initdb failed"; }
fi

# A free loopback port: the one used before when it is free, else the first free one from 55432.
port=""
if [ -f "$portfile" ] && ! port_open "$host" "$(cat "$portfile")"; then
  port="$(cat "$portfile")"
fi
if [ -z "$port" ]; then
  for p in $(seq 55432 55532); do
    if ! port_open "$host" "$p"; then port="$p"; break; fi
  done
fi
[ -n "$port" ] || fail "no free port in 55432-55532"
printf '%s' "$port" >"$portfile"

# A throwaway server: no fsync, room for the many pools the parallel tests open.
log "postgres: starting $bindir/postgres on $host:$port (log $dir/server.log)"
as_pg "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start -o \
  "-c listen_addresses=$host -p $port -c unix_socket_directories=$data -c max_connections=500 -c fsync=off -c synchronous_commit=off -c full_page_writes=off" >&2 ||
  { tail -n 20 "$dir/server.log" >&2 || true; fail "the server did not start"; }

if ! as_pg "$bindir/psql" -h "$host" -p "$port" -U postgres -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = 'dcron_test'" | grep -q 1; then
  as_pg "$bindir/createdb" -h "$host" -p "$port" -U postgres dcron_test ||
    fail "createdb dcron_test failed"
fi

printf 'export DCRON_TEST_POSTGRES_URL=%q\n' "$(url_for "$port")"
