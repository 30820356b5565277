# A throwaway PostgreSQL server on loopback for the suite's PostgreSQL tests.
#
# Sourced by .ci/run: `mediscale_pg_start` installs the Debian package if no server binaries are
# present. It then starts a server as an unprivileged user in a temp dir: 127.0.0.1 only, a free port,
# trust auth, fsync off. It creates the database `mediscale_test` and exports
# MEDISCALE_TEST_POSTGRES_URL (see tests/postgres.py). The server is stopped and removed on exit.
# If MEDISCALE_TEST_POSTGRES_URL is already set, that server is used and nothing is started.
#
# To check it by hand: `bash .ci/postgres.sh` starts a server, runs a query and stops it.

MEDISCALE_PG_SUPERUSER=mediscale
MEDISCALE_PG_DATABASE=mediscale_test

mediscale_pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [[ -n "$dir" && -x "$dir/initdb" && -x "$dir/pg_ctl" ]]; then
        echo "$dir"
    fi
}

mediscale_pg_install() {
    local sudo=""
    if [[ $(id -u) -ne 0 ]]; then
        sudo="sudo"
    fi
    echo "postgres: installing the postgresql package (apt)"
    # Only the binaries are needed: no 'main' cluster, so the package starts no service of its own.
    $sudo mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" | $sudo tee /etc/postgresql-common/createcluster.d/mediscale-ci.conf >/dev/null
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Use-Pty=0 postgresql >/dev/null
}

# Runs a command as the server's user: `postgres` (or `nobody`) when we are root, else ourselves.
mediscale_pg_as() {
    if [[ -n "${MEDISCALE_PG_USER:-}" ]]; then
        runuser -u "$MEDISCALE_PG_USER" -- "$@"
    else
        "$@"
    fi
}

mediscale_pg_stop() {
    if [[ -n "${MEDISCALE_PG_DIR:-}" && -d "$MEDISCALE_PG_DIR" ]]; then
        (cd "$MEDISCALE_PG_DIR" && mediscale_pg_as "$MEDISCALE_PG_BIN/pg_ctl" -D "$MEDISCALE_PG_DIR/data" \
            -m fast -w stop >/dev/null 2>&1) || true
        rm -rf "$MEDISCALE_PG_DIR"
        echo "postgres: stopped"
    fi
    MEDISCALE_PG_DIR=""
}

mediscale_pg_start() {
    if [[ -n "${MEDISCALE_TEST_POSTGRES_URL:-}" ]]; then
        echo "postgres: using MEDISCALE_TEST_POSTGRES_URL from the environment"
        return 0
    fi
    MEDISCALE_PG_BIN=$(mediscale_pg_bindir)
    if [[ -z "$MEDISCALE_PG_BIN" ]]; then
        mediscale_pg_install || return 1
        MEDISCALE_PG_BIN=$(mediscale_pg_bindir)
        if [[ -z "$MEDISCALE_PG_BIN" ]]; then
            echo "postgres: no server binaries in /usr/lib/postgresql/*/bin after installing" >&2
            return 1
        fi
    fi
    MEDISCALE_PG_USER=""
    if [[ $(id -u) -eq 0 ]]; then  # postgres refuses to run as root
        if id postgres >/dev/null 2>&1; then MEDISCALE_PG_USER=postgres; else MEDISCALE_PG_USER=nobody; fi
    fi
    MEDISCALE_PG_DIR=$(mktemp -d /tmp/mediscale-pg.XXXXXX)
    trap mediscale_pg_stop EXIT
    if [[ -n "$MEDISCALE_PG_USER" ]]; then
        chown "$MEDISCALE_PG_USER" "$MEDISCALE_PG_DIR"
    fi
    local port init_log="$MEDISCALE_PG_DIR/initdb.log" log="$MEDISCALE_PG_DIR/server.log"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    if ! (cd "$MEDISCALE_PG_DIR" && mediscale_pg_as "$MEDISCALE_PG_BIN/initdb" -D "$MEDISCALE_PG_DIR/data" \
        -U "$MEDISCALE_PG_SUPERUSER" --auth=trust -E UTF8 --no-locale --no-sync >"$init_log" 2>&1); then
        cat "$init_log" >&2
        return 1
    fi
    if ! (cd "$MEDISCALE_PG_DIR" && mediscale_pg_as "$MEDISCALE_PG_BIN/pg_ctl" -D "$MEDISCALE_PG_DIR/data" \
        -l "$log" -w -t 60 -o "-c listen_addresses=127.0.0.1 -p $port \
-c unix_socket_directories=$MEDISCALE_PG_DIR -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >/dev/null); then
        cat "$log" >&2 || true
        return 1
    fi
    "$MEDISCALE_PG_BIN/createdb" -h 127.0.0.1 -p "$port" -U "$MEDISCALE_PG_SUPERUSER" "$MEDISCALE_PG_DATABASE" \
        || return 1
    export MEDISCALE_TEST_POSTGRES_URL="postgresql+psycopg://$MEDISCALE_PG_SUPERUSER@127.0.0.1:$port/$MEDISCALE_PG_DATABASE"
    echo "postgres: $("$MEDISCALE_PG_BIN/postgres" --version) on 127.0.0.1:$port (MEDISCALE_TEST_POSTGRES_URL)"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then  # run directly: start, check, stop
    set -euo pipefail
    mediscale_pg_start
    "${MEDISCALE_PG_BIN:-$(mediscale_pg_bindir)}/psql" "${MEDISCALE_TEST_POSTGRES_URL/+psycopg/}" -tAc \
        "SELECT 'postgres: query ok, ' || current_user || ' on ' || current_database()"
fi
