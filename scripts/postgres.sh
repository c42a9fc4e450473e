#!/usr/bin/env bash
# A throwaway PostgreSQL on 127.0.0.1 for the exactly-once sink's test and benchmark.
#
#   scripts/postgres.sh start   install PostgreSQL from the distribution's packages if it is
#                               absent (Debian/Ubuntu: apt-get), create a fresh data directory,
#                               start the server and wait until it answers; prints the URL
#   scripts/postgres.sh stop    stop the server this script started, by its pid
#   scripts/postgres.sh url     print the DATABASE_URL
#
# The pid and logs live under .postgres/ (ignored by git), and so does the data directory (new
# at every start), except as root: PostgreSQL refuses to run as root, so the server then runs
# as the `postgres` user (created by the package), who may not be allowed into the checkout
# (a CI checkout under a private temporary directory): its data directory is then a fresh
# directory under /tmp that it owns, removed by `stop`. POSTGRES_PORT (default 5433, beside a
# system PostgreSQL on 5432) chooses the port.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
home="$root/.postgres"
pidfile="$home/postgres.pid"
# Where the data directory of the running server is (see above).
datafile="$home/data-dir"
port="${POSTGRES_PORT:-5433}"
url="postgres://postgres@127.0.0.1:$port/postgres"

die() {
  echo "postgres.sh: $*" >&2
  exit 1
}

# The directory of initdb and postgres: on PATH, or where Debian's packages put them.
find_bin() {
  if command -v initdb >/dev/null && command -v postgres >/dev/null; then
    # The package's own directory (symbolic links may lead there): it holds pg_isready too.
    dirname "$(readlink -f "$(command -v initdb)")"
    return
  fi
  local found
  found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"
  [[ -n "$found" ]] && echo "$found"
}

install_postgres() {
  command -v apt-get >/dev/null || die "PostgreSQL is not installed and apt-get is not available"
  echo "postgres.sh: installing PostgreSQL from the distribution's packages"
  local sudo=""
  [[ "$(id -u)" -ne 0 ]] && sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >/dev/null
}

# Runs a command as the user the server runs as (from /, which that user may enter).
as_owner() {
  if [[ "$(id -u)" -eq 0 ]]; then
    (cd / && runuser -u postgres -- "$@")
  else
    "$@"
  fi
}

start() {
  if [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    die "already running (pid $(cat "$pidfile")); stop it first"
  fi
  local bin
  bin="$(find_bin)" || true
  if [[ -z "$bin" ]]; then
    install_postgres
    bin="$(find_bin)" || die "PostgreSQL was installed but initdb was not found"
  fi
  mkdir -p "$home"
  local data
  if [[ "$(id -u)" -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
    data="$(mktemp -d /tmp/kafka-actors-postgres.XXXXXX)"
    chown postgres "$data"
  else
    data="$home/data"
    rm -rf "$data"
  fi
  echo "$data" >"$datafile"
  as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >"$home/initdb.log" 2>&1 \
    || { cat "$home/initdb.log" >&2; die "initdb failed"; }
  # Only TCP on 127.0.0.1, the socket in the data directory: nothing outside this machine.
  # Durable settings as shipped (fsync on): the benchmark's commits cost what they cost.
  as_owner "$bin/postgres" -D "$data" -h 127.0.0.1 -p "$port" -k "$data" \
    >"$home/server.log" 2>&1 &
  local launcher=$!
  for _ in $(seq 1 60); do
    # The server's own pid (not the launcher's, which may be runuser's): the first line of
    # its postmaster.pid.
    if [[ -s "$data/postmaster.pid" ]]; then
      head -1 "$data/postmaster.pid" >"$pidfile"
    fi
    if [[ -f "$pidfile" ]] && "$bin/pg_isready" -h 127.0.0.1 -p "$port" -q 2>/dev/null; then
      echo "postgres.sh: PostgreSQL on $url (pid $(cat "$pidfile"))"
      return
    fi
    kill -0 "$launcher" 2>/dev/null || { cat "$home/server.log" >&2; die "the server exited"; }
    sleep 0.5
  done
  cat "$home/server.log" >&2
  die "the server did not answer within 30 s"
}

stop() {
  [[ -f "$pidfile" ]] || return 0
  local pid data
  pid="$(cat "$pidfile")"
  data="$(cat "$datafile" 2>/dev/null || true)"
  if kill -0 "$pid" 2>/dev/null; then
    # SIGINT: PostgreSQL's fast shutdown.
    kill -INT "$pid"
    for _ in $(seq 1 60); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
  fi
  rm -f "$pidfile" "$datafile"
  # A data directory of its own under /tmp (as root) goes with the server.
  if [[ "$data" == /tmp/kafka-actors-postgres.* ]]; then
    rm -rf "$data"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$url" ;;
  *) die "usage: $0 start|stop|url" ;;
esac
