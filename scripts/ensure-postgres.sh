#!/usr/bin/env bash
# Prints a Postgres URL that the tests can use, starting a server if needed.
#
# Order: $FLOTILLA_TEST_DATABASE_URL if set; a server already answering on
# 127.0.0.1:5432 with trust auth for user postgres; otherwise a throwaway
# cluster (trust auth, port 55432) under ${FLOTILLA_PG_DIR:-/tmp/flotilla-pg},
# installing Debian's postgresql package first if no server binaries exist.
# Diagnostics go to stderr; only the URL goes to stdout.
set -euo pipefail

log() { echo "ensure-postgres: $*" >&2; }

if [ -n "${FLOTILLA_TEST_DATABASE_URL:-}" ]; then
  echo "$FLOTILLA_TEST_DATABASE_URL"; exit 0
fi

answers() { # url
  command -v psql >/dev/null 2>&1 && psql "$1" -Atqc 'select 1' >/dev/null 2>&1
}

find_pg_bin() {
  local dir
  for dir in /usr/lib/postgresql/*/bin; do
    [ -x "$dir/pg_ctl" ] && { echo "$dir"; return 0; }
  done
  return 1
}

if ! command -v psql >/dev/null 2>&1 || ! find_pg_bin >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing postgresql from apt"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql postgresql-client >&2
  fi
fi

default_url="postgres://postgres@127.0.0.1:5432/postgres"
if [ "${FLOTILLA_PG_TRY_DEFAULT:-1}" = 1 ] && answers "$default_url"; then
  log "using the server on 127.0.0.1:5432"
  echo "$default_url"; exit 0
fi

bin=$(find_pg_bin) || { log "no PostgreSQL server binaries found and cannot install them"; exit 1; }
dir=${FLOTILLA_PG_DIR:-/tmp/flotilla-pg}
port=${FLOTILLA_PG_PORT:-55432}
url="postgres://postgres@127.0.0.1:$port/postgres"
if answers "$url"; then
  log "using the throwaway cluster on port $port"
  echo "$url"; exit 0
fi

# initdb refuses to run as root: run the cluster as the postgres user then.
run_as=()
if [ "$(id -u)" = 0 ]; then
  id postgres >/dev/null 2>&1 || useradd --system --home-dir "$dir" postgres
  run_as=(runuser -u postgres --)
fi
mkdir -p "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
if [ ! -f "$dir/data/PG_VERSION" ]; then
  log "creating a throwaway cluster in $dir/data"
  "${run_as[@]}" "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >&2
fi
log "starting the throwaway cluster on 127.0.0.1:$port"
"${run_as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
  -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=300 -c fsync=off" start >&2
answers "$url" || { log "the throwaway cluster does not answer; see $dir/server.log"; exit 1; }
echo "$url"
