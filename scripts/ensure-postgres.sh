#!/usr/bin/env bash
# Starts (or reuses) a throwaway PostgreSQL for the ledger tests and prints its URL on standard
# output; everything else goes to standard error. Installs Debian's `postgresql` with apt-get
# when it is missing (CI runs as root on a clean machine). Idempotent: a cluster already
# running on the port is reused, and its database is created only once.
#   export OFFPEAK_TEST_POSTGRES_URL="$(bash scripts/ensure-postgres.sh)"
# Settings (environment): OFFPEAK_TEST_PG_PORT (default 55432, away from the usual 5432),
# OFFPEAK_TEST_PG_DIR (default /tmp/offpeak-test-pg), OFFPEAK_TEST_PG_DB (default offpeak_test).
set -euo pipefail
port=${OFFPEAK_TEST_PG_PORT:-55432}
dir=${OFFPEAK_TEST_PG_DIR:-/tmp/offpeak-test-pg}
db=${OFFPEAK_TEST_PG_DB:-offpeak_test}
log() { echo "ensure-postgres: $*" >&2; }

pg_bin() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  d=$(dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)")
  [ -x "$d/initdb" ] && echo "$d"
}

bin=$(pg_bin || true)
if [ -z "$bin" ]; then
  bash "$(dirname "$0")/apt-install.sh" ensure-postgres postgresql PostgreSQL
  bin=$(pg_bin)
fi

# The server refuses to run as root: as root, run it as the `postgres` user the package made.
if [ "$(id -u)" -eq 0 ]; then
  user=postgres
  as_owner() { runuser -u postgres -- "$@"; }
else
  user=$(id -un)
  as_owner() { "$@"; }
fi

if ! "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
  if [ ! -f "$dir/PG_VERSION" ]; then
    log "creating a throwaway cluster in $dir"
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$dir"
    chmod 700 "$dir"
    # Trust on loopback only: a test database nobody else can reach, holding nothing.
    as_owner "$bin/initdb" -D "$dir" -U "$user" --auth=trust --encoding=UTF8 --locale=C.UTF-8 >&2
  fi
  log "starting PostgreSQL on 127.0.0.1:$port"
  as_owner "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >&2
fi

if ! "$bin/psql" -h 127.0.0.1 -p "$port" -U "$user" -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
  "$bin/createdb" -h 127.0.0.1 -p "$port" -U "$user" "$db" >&2
fi
echo "postgres://$user@127.0.0.1:$port/$db"
