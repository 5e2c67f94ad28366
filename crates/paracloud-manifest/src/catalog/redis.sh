#!/bin/sh
# The instances of a Redis service of the catalogue:
#   primary PERSISTENCE   the primary, its data on the volume at /data, kept as PERSISTENCE says:
#                         rdb (snapshots), aof (every write appended, flushed each second), none
#   replica PRIMARY       a replica of PRIMARY's address, its data its own (in memory)
#   ready                 the health check: the server answers (not while it loads its data);
#                         it prints the server's figures for the platform's model:
#                         `load queries=N` (the commands it processed, its replicas counting
#                         those of the primary's stream)
#   position              a replica's position: the offset of the primary's replication stream
#                         it has received, which the platform compares to choose the replica a
#                         failover promotes
# Failover: when the primary's data cannot start, the platform writes the address of its most
# advanced replica in the volume's `promote-from` and starts the primary again; the primary then
# sets its own files aside (`data.failed`, those of the last failover) and starts from a
# snapshot of that replica, written as its persistence keeps its data.
# It starts as root inside the instance, gives the data to the redis user and runs the server as
# that user. The password goes to the server on its command line, never into a file.
set -eu

@COMMON@
data=/data

own_data() {
    mkdir -p "$data"
    chown redis:redis "$data"
    chmod 700 "$data"
}

server() {
    password=${REDIS_PASSWORD:?the catalogue sets REDIS_PASSWORD}
    exec setpriv --reuid=redis --regid=redis --clear-groups -- \
        /usr/bin/redis-server --bind 0.0.0.0 --port 6379 --protected-mode no --dir "$data" \
        --requirepass "$password" --masterauth "$password" "$@"
}

primary() {
    persistence=$1
    own_data
    hold_lock "$data"
    if [ -s "$data/promote-from" ]; then
        promote "$(cat "$data/promote-from")" "$persistence"
    fi
    case "$persistence" in
    rdb) server --save "3600 1 300 100 60 10000" --appendonly no ;;
    aof) server --save "" --appendonly yes --appendfsync everysec ;;
    none) server --save "" --appendonly no ;;
    *)
        echo "catalog: unknown persistence $persistence" >&2
        exit 2
        ;;
    esac
}

# The primary's files replaced by a snapshot of the replica at ADDRESS (an RDB it makes for the
# asking, as for a replica of its own, while it keeps serving reads): dump.rdb, or with `aof`
# the base of a new append-only file. The old files are kept aside until the next failover; a
# copy cut short is made again at the next start.
promote() {
    address=$1
    persistence=$2
    echo "catalog: failover: copying the replica at $address" >&2
    made=$data/copy.rdb
    rm -f "$made"
    export REDISCLI_AUTH="${REDIS_PASSWORD:?the catalogue sets REDIS_PASSWORD}"
    # A replica cut off from its primary makes no snapshot for others (NOMASTERLINK): it stops
    # replicating first, keeping what it has (it is renewed from the new primary afterwards).
    if ! /usr/bin/redis-cli -h "$address" -p 6379 replicaof no one >&2 ||
        ! /usr/bin/redis-cli -h "$address" -p 6379 --rdb "$made" >&2; then
        rm -f "$made"
        echo "catalog: failover: cannot copy the replica at $address" >&2
        exit 1
    fi
    rm -rf "$data/data.failed"
    mkdir "$data/data.failed"
    for old in "$data/dump.rdb" "$data/appendonlydir"; do
        if [ -e "$old" ]; then
            mv "$old" "$data/data.failed/"
        fi
    done
    case "$persistence" in
    # Redis 7 loads an append-only file, not dump.rdb, once `appendonly` is on: the copy becomes
    # the base of one, as a rewrite would make it.
    aof)
        aof=$data/appendonlydir
        mkdir "$aof"
        mv "$made" "$aof/appendonly.aof.1.base.rdb"
        : >"$aof/appendonly.aof.1.incr.aof"
        printf '%s\n' "file appendonly.aof.1.base.rdb seq 1 type b" \
            "file appendonly.aof.1.incr.aof seq 1 type i" >"$aof/appendonly.aof.manifest"
        ;;
    *) mv "$made" "$data/dump.rdb" ;;
    esac
    unset REDISCLI_AUTH
    chown -R redis:redis "$data"
    rm -f "$data/promote-from"
    echo "catalog: failover: promoted the copy of the replica at $address" >&2
}

replica() {
    primary=$1
    own_data
    server --replicaof "$primary" 6379 --save "" --appendonly no --replica-read-only yes
}

# Asked without the password, which the check needs not know: a server that takes commands
# answers NOAUTH, one that is still loading its data LOADING.
ready() {
    answer=$(printf 'PING\nINFO stats\n' |
        REDISCLI_AUTH="${REDIS_PASSWORD:?the catalogue sets REDIS_PASSWORD}" \
            /usr/bin/redis-cli -h 127.0.0.1 -p 6379 2>&1) || true
    first= queries=
    while IFS=: read -r key value; do
        if [ -z "$first" ]; then
            first=$key${value:+:$value}
        fi
        if [ "$key" = total_commands_processed ]; then
            queries=${value%"$(printf '\r')"}
        fi
    done <<EOF
$answer
EOF
    case "$first" in
    PONG) ;;
    *)
        echo "$first" >&2
        exit 1
        ;;
    esac
    if [ -n "$queries" ]; then
        echo "load queries=$queries"
    fi
}

position() {
    info=$(REDISCLI_AUTH="${REDIS_PASSWORD:?the catalogue sets REDIS_PASSWORD}" \
        /usr/bin/redis-cli -h 127.0.0.1 -p 6379 info replication) || exit 1
    offset=
    while IFS=: read -r key value; do
        if [ "$key" = slave_repl_offset ]; then
            offset=${value%"$(printf '\r')"}
        fi
    done <<EOF
$info
EOF
    echo "${offset:-0}"
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
primary) primary "$@" ;;
replica) replica "$@" ;;
ready) ready ;;
position) position ;;
*)
    echo "usage: $0 primary rdb|aof|none | replica PRIMARY | ready | position" >&2
    exit 2
    ;;
esac
