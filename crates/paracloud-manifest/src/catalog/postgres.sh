#!/bin/sh
# The instances of a PostgreSQL service of the catalogue:
#   primary WAL_MB KEEP_MB COMMITS
#                            the primary, its data on the volume at /var/lib/postgresql; its WAL
#                            kept within WAL_MB, of which KEEP_MB for replicas that fall behind;
#                            COMMITS `synchronous` (each waits until a replica applied it) or
#                            `local`
#   replica PRIMARY WAL_MB KEEP_MB
#                            a streaming replica seeded from PRIMARY's address, its data in the
#                            instance's own writable layer
#   ready [MAX_LAG_MS]       the health check: the server takes connections (a replica once it
#                            has replayed enough to be consistent); with MAX_LAG_MS, a replica
#                            also streams from the primary and is at most that far behind; it
#                            prints the server's figures for the platform's model:
#                            `load queries=N [lag_ms=M]`
#   position                 a replica's WAL position (bytes of WAL it has received), which the
#                            platform compares to choose the replica a failover promotes
#   fence                    in the primary a switchover moves: nothing (its fast shutdown is
#                            its fence, and its control file says where it ended)
#   receive                  in the successor of a switchover, once the old primary is fenced:
#                            nothing (the old primary's shutdown sends it the rest)
#   take-over                in the successor of a switchover, once the old primary stopped:
#                            replays all it wrote, is promoted, and its data becomes the volume's
# Switchover (`paracloud migrate` of the primary): the platform writes the old primary's address
# in the volume's `switchover-from` and starts the successor, which finds the volume locked by
# the old server: it copies the old primary into the volume's next data directory (`data.N`)
# and follows it as a standby, while the old one serves. The platform then stops the old
# primary (a fast shutdown sends its last WAL to its standbys) and runs `take-over` in the
# successor, which waits until it has replayed the old primary's shutdown checkpoint, promotes
# itself, names its directory in the volume's `current` and removes the old one. The volume
# holds two copies while the successor follows: `storage` must leave room for them.
# Failover: when the primary's data cannot start, the platform writes the address of its most
# advanced replica in the volume's `promote-from` and starts the primary again; the primary then
# sets its data aside (`data.failed`, the one of the last failover) and starts as a primary from
# a base backup of that replica.
# It starts as root inside the instance, gives the data to the postgres user and runs the server
# as that user.
set -eu

@COMMON@
bin=/usr/lib/postgresql/@VERSION@/bin
base=/var/lib/postgresql
data=$base/$(generation "$base" data)
user=${POSTGRES_USER:-postgres}
database=${POSTGRES_DB:-$user}
socket=/tmp

as_postgres() {
    setpriv --reuid=postgres --regid=postgres --clear-groups -- "$@"
}

own_data() {
    mkdir -p "$data"
    chown postgres:postgres "$base" "$data"
    chmod 700 "$data"
}

# The server, with the settings a primary and its replicas share (a replica refuses to follow a
# primary with more WAL senders than its own).
server() {
    wal_mb=$1
    keep_mb=$2
    shift 2
    exec setpriv --reuid=postgres --regid=postgres --clear-groups -- \
        "$bin/postgres" -D "$data" -c "listen_addresses=*" -c "unix_socket_directories=$socket" \
        -c wal_level=replica -c max_wal_senders=20 -c hot_standby=on \
        -c "max_wal_size=${wal_mb}MB" -c "wal_keep_size=${keep_mb}MB" "$@"
}

primary() {
    wal_mb=$1
    keep_mb=$2
    commits=$3
    mkdir -p "$base"
    lock_or_follow "$base"
    own_data
    if [ -s "$base/promote-from" ]; then
        promote "$(cat "$base/promote-from")"
    fi
    if [ ! -s "$data/PG_VERSION" ]; then
        new_cluster
    fi
    case "$commits" in
    # A commit waits until any one replica has applied it: it is on two servers, and readable
    # on that replica, before the client hears of it.
    synchronous)
        server "$wal_mb" "$keep_mb" -c "synchronous_standby_names=ANY 1 (*)" \
            -c synchronous_commit=remote_apply
        ;;
    *) server "$wal_mb" "$keep_mb" ;;
    esac
}

# A new cluster, made beside the data directory and moved there only once whole (with the dump
# of `restore` in it), so that a start cut short makes it again rather than keep half of it.
new_cluster() {
    made=$base/data.new
    rm -rf "$made"
    mkdir -p "$made"
    chown postgres:postgres "$made"
    chmod 700 "$made"
    echo "catalog: creating the database cluster" >&2
    password=$(mktemp)
    printf '%s\n' "$POSTGRES_PASSWORD" >"$password"
    chown postgres "$password"
    as_postgres "$bin/initdb" -D "$made" -U "$user" --pwfile="$password" \
        --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --locale=C >&2
    rm -f "$password"
    cat >"$made/pg_hba.conf" <<EOF
# Written by the catalogue: the instance's own processes over its socket; the application's
# instances and the replicas with the password.
local all all trust
host all all all scram-sha-256
host replication all all scram-sha-256
EOF
    if [ "$database" != postgres ]; then
        echo "CREATE DATABASE \"$database\";" |
            as_postgres "$bin/postgres" --single -D "$made" -j postgres >/dev/null
    fi
    if [ -f /restore.dump ]; then
        echo "catalog: restoring /restore.dump into $database" >&2
        as_postgres "$bin/pg_ctl" -D "$made" -w -l /tmp/restore.log \
            -o "-c listen_addresses= -c unix_socket_directories=$socket" start >&2
        as_postgres "$bin/pg_restore" -h "$socket" -U "$user" -d "$database" \
            --no-owner --exit-on-error /restore.dump
        as_postgres "$bin/pg_ctl" -D "$made" -w -m fast stop >&2
    fi
    # The data directory holds nothing (no PG_VERSION): rmdir says so if it does.
    rmdir "$data"
    mv "$made" "$data"
}

# The primary's data replaced by a base backup of the replica at ADDRESS, taken while it keeps
# serving reads: it holds every transaction the replica received, and starts as a primary (no
# standby.signal) on the same timeline, which the other replicas go on following. The old data
# is kept aside until the next failover; a copy cut short is made again at the next start.
promote() {
    address=$1
    echo "catalog: failover: the primary's data is set aside as data.failed; copying the replica at $address" >&2
    made=$base/data.new
    rm -rf "$made"
    mkdir -p "$made"
    chown postgres:postgres "$made"
    chmod 700 "$made"
    export PGPASSWORD="$POSTGRES_PASSWORD"
    if ! as_postgres "$bin/pg_basebackup" -h "$address" -p 5432 -U "$user" -D "$made" \
        -X stream -c fast -w; then
        echo "catalog: failover: cannot copy the replica at $address" >&2
        rm -rf "$made"
        exit 1
    fi
    rm -f "$made/standby.signal" "$made/recovery.signal"
    if [ -d "$data" ]; then
        rm -rf "$base/data.failed"
        mv "$data" "$base/data.failed"
    fi
    mv "$made" "$data"
    rm -f "$base/promote-from"
    echo "catalog: failover: promoted the copy of the replica at $address" >&2
}

# The successor of a switchover (see lock_or_follow): a copy of the old primary at ADDRESS in
# the volume's next data directory, started (by `primary`, with the primary's settings) as its
# standby.
follow() {
    address=$1
    current=$(generation "$base" data)
    next=$(next_generation "$current")
    remove_other_generations "$base" "$current"
    data=$base/$next
    own_data
    echo "catalog: switchover: copying the primary at $address into $next" >&2
    export PGPASSWORD="$POSTGRES_PASSWORD"
    if ! as_postgres "$bin/pg_basebackup" -h "$address" -p 5432 -U "$user" -D "$data" \
        -X stream -R -c fast -w; then
        echo "catalog: switchover: cannot copy the primary at $address" >&2
        rm -rf "$data"
        exit 1
    fi
}

# In the successor, once the old primary stopped: its control file says it shut down cleanly and
# where its shutdown checkpoint starts; once this standby replayed past it, it holds every
# transaction the old primary committed, and is promoted.
take_over() {
    [ -s "$base/next" ] || {
        echo "this server does not follow a primary for a switchover" >&2
        exit 1
    }
    next=$(cat "$base/next")
    state= checkpoint=
    while IFS=: read -r key value; do
        case $key in
        "Database cluster state") state=$(echo $value) ;;
        "Latest checkpoint location") checkpoint=$(echo $value) ;;
        esac
    done <<EOF
$("$bin/pg_controldata" -D "$data")
EOF
    if [ "$state" != "shut down" ] || [ -z "$checkpoint" ]; then
        echo "the old primary's data in $data was not shut down cleanly (${state:-no state})" >&2
        exit 1
    fi
    if ! retry_for 300 replayed_past "$checkpoint"; then
        echo "did not replay the old primary's shutdown checkpoint at $checkpoint within 30 s" >&2
        exit 1
    fi
    if [ "$(sql "SELECT pg_promote(true, 60)")" != t ]; then
        echo "the standby was not promoted within 60 s" >&2
        exit 1
    fi
    printf '%s\n' "$next" >"$base/current.new"
    mv "$base/current.new" "$base/current"
    rm -f "$base/next" "$base/switchover-from"
    # The old primary's data is behind this one's from now on; the volume keeps one copy.
    rm -rf "$data"
    echo "took over at $checkpoint"
}

# Whether the server has replayed past the WAL position LSN.
replayed_past() {
    [ "$(sql "SELECT pg_last_wal_replay_lsn() > '$1'::pg_lsn")" = t ]
}

# One value from the instance's server, over its socket.
sql() {
    "$bin/psql" -X -q -h "$socket" -U "$user" -d "$database" -tAc "$1"
}

replica() {
    primary=$1
    wal_mb=$2
    keep_mb=$3
    # A replica starts from a fresh copy of the primary.
    rm -rf "$data"
    own_data
    export PGPASSWORD="$POSTGRES_PASSWORD"
    until as_postgres "$bin/pg_basebackup" -h "$primary" -p 5432 -U "$user" -D "$data" \
        -X stream -R -c fast -w; do
        echo "catalog: cannot copy $primary yet; trying again" >&2
        rm -rf "$data"
        own_data
        sleep 1
    done
    server "$wal_mb" "$keep_mb"
}

# The time a replica's replay is behind what it received from the primary, in ms: 0 with
# nothing left to replay (an idle primary makes the last replayed transaction old, not the
# replica late), -1 when it does not stream from the primary.
lag_sql="SELECT CASE
    WHEN NOT pg_is_in_recovery() THEN 0
    WHEN (SELECT status FROM pg_stat_wal_receiver) IS DISTINCT FROM 'streaming' THEN -1
    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
    ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) * 1000, 0)::bigint
    END"

# The transactions the server has ended (committed or rolled back) since it started: the
# queries it ran, each statement outside an explicit transaction being one of its own.
queries_sql="SELECT sum(xact_commit + xact_rollback)::bigint FROM pg_stat_database"

ready() {
    if ! "$bin/pg_isready" -q -h "$socket" -p 5432 -U "$user" -d "$database"; then
        echo "the server takes no connections yet" >&2
        exit 1
    fi
    if ! figures=$("$bin/psql" -X -q -h "$socket" -U "$user" -d "$database" -tA -F ' ' \
        -c "SELECT ($queries_sql), ($lag_sql)"); then
        echo "cannot ask the server for its figures" >&2
        exit 1
    fi
    queries=${figures%% *}
    lag=${figures##* }
    if [ $# -eq 0 ]; then
        echo "load queries=$queries"
        exit 0
    fi
    max_lag_ms=$1
    if [ "$lag" = -1 ]; then
        echo "not streaming from the primary" >&2
        exit 1
    fi
    echo "load queries=$queries lag_ms=$lag"
    if [ "$lag" -gt "$max_lag_ms" ]; then
        echo "${lag} ms behind the primary, more than the ${max_lag_ms} ms of max_lag" >&2
        exit 1
    fi
}

position() {
    "$bin/psql" -X -q -h "$socket" -U "$user" -d "$database" -tAc \
        "SELECT pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery()
            THEN COALESCE(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())
            ELSE pg_current_wal_lsn() END, '0/0')::bigint"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
primary) primary "$@" ;;
replica) replica "$@" ;;
ready) ready "$@" ;;
position) position ;;
fence | receive) ;;
take-over) take_over ;;
*)
    echo "usage: $0 primary WAL_MB KEEP_MB synchronous|local | replica PRIMARY WAL_MB KEEP_MB | ready [MAX_LAG_MS] | position | fence | receive | take-over" >&2
    exit 2
    ;;
esac
