# Start a private PostgreSQL server for the tuner's distributed-worker tests.
#
#   source .ci/postgres.sh        # exports FACEKIT_TEST_POSTGRES_URL (what .ci/run does)
#   bash .ci/postgres.sh          # same, and prints the export line
#   bash .ci/postgres.sh stop     # stop the server (the data folder is kept)
#
# Installs Debian's postgresql package when its server binaries are missing (needs root and apt),
# then runs a throw-away cluster in $FACEKIT_PG_DIR (default /tmp/facekit-postgres) on 127.0.0.1,
# port 5432 or the next free one, as the postgres user when run as root. A database `facekit_test`
# owned by the role `facekit` (password `facekit`) is created once. Running it again reuses a
# server that is already up. Nothing here touches the system's own cluster.

_facekit_postgres() {
    local dir=${FACEKIT_PG_DIR:-/tmp/facekit-postgres}
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bin" ] || [ ! -x "$bin/pg_ctl" ]; then
        if [ "$(id -u)" != 0 ]; then
            echo "postgres.sh: PostgreSQL's server is not installed and this is not root: apt-get install postgresql" >&2
            return 1
        fi
        echo "postgres.sh: installing postgresql (apt-get)" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2 || return 1
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi

    # As root, the server runs as the postgres user (initdb and postgres refuse to run as root).
    local -a as_owner=()
    if [ "$(id -u)" = 0 ]; then
        as_owner=(runuser -u postgres --)
    fi

    if [ "${1:-}" = stop ]; then
        "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -m fast stop >&2
        return $?
    fi

    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        "${as_owner[@]}" "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 >"$dir/initdb.log" 2>&1 \
            || { cat "$dir/initdb.log" >&2; return 1; }
    fi

    local port
    if "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        port=$(cat "$dir/port")
    else
        port=${FACEKIT_PG_PORT:-5432}
        while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do  # something listens there: next port
            port=$((port + 1))
        done
        echo "$port" >"$dir/port"
        mkdir -p "$dir/sock" && [ "$(id -u)" = 0 ] && chown postgres: "$dir/sock"
        "${as_owner[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-p $port -k $dir/sock -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >&2 \
            || { tail -n 20 "$dir/server.log" >&2; return 1; }
    fi

    local psql=("${as_owner[@]}" "$bin/psql" -h "$dir/sock" -p "$port" -U postgres -v ON_ERROR_STOP=1 -qtA)
    if [ "$("${psql[@]}" -d postgres -c "SELECT 1 FROM pg_roles WHERE rolname = 'facekit'")" != 1 ]; then
        "${psql[@]}" -d postgres -c "CREATE ROLE facekit LOGIN PASSWORD 'facekit'" || return 1
    fi
    if [ "$("${psql[@]}" -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'facekit_test'")" != 1 ]; then
        "${psql[@]}" -d postgres -c "CREATE DATABASE facekit_test OWNER facekit" || return 1
    fi
    export FACEKIT_TEST_POSTGRES_URL="postgresql://facekit:facekit@127.0.0.1:$port/facekit_test"
    echo "postgres.sh: PostgreSQL $("$bin/postgres" --version | awk '{print $3}') up: FACEKIT_TEST_POSTGRES_URL=$FACEKIT_TEST_POSTGRES_URL" >&2
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # executed, not sourced
    set -euo pipefail
    _facekit_postgres "$@"
    [ "${1:-}" = stop ] || echo "export FACEKIT_TEST_POSTGRES_URL=$FACEKIT_TEST_POSTGRES_URL"
else
    _facekit_postgres "$@"
fi
