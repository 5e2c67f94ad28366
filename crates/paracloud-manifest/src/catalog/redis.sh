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
#   fence                 in the primary a switchover moves: pauses the clients' writes and
#                         prints the offset of its replication stream
#   receive OFFSET        in the successor of a switchover, once the old primary is fenced:
#                         waits until it has received the stream up to OFFSET
#   take-over OFFSET      in the successor of a switchover, once the old primary stopped: with
#                         the stream up to OFFSET, stops replicating, and its files become the
#                         volume's
# Switchover (`paracloud migrate` of the primary): the platform writes the old primary's address
# in the volume's `switchover-from` and starts the successor, which finds the volume locked by
# the old server: it replicates from it into the volume's next directory (`data.1`, `data.2`,
# ...), which the volume's `current` names once it took over (without `current`, the files are
# at the volume's top). The platform then runs `fence` in the old primary, `receive` in the
# successor, stops the old primary, and runs `take-over` in the successor.
# Failover: when the primary's data cannot start, the platform writes the address of its most
# advanced replica in the volume's `promote-from` and starts the primary again; the primary then
# sets its own files aside (`data.failed`, those of the last failover) and starts from a
# snapshot of that replica, written as its persistence keeps its data.
# It starts as root inside the instance, gives the data to the redis user and runs the server as
# that user. The password goes to the server on its command line, never into a file.
set -eu

@COMMON@
volume=/data
# The directory of the server's files: the volume's top before any switchover.
data=$volume/$(generation "$volume" .)

own_data() {
    mkdir -p "$data"
    chown redis:redis "$volume" "$data"
    chmod 700 "$volume" "$data"
}

# A new replica is copied at once, not after Redis's default wait of 5 s for others to copy
# in the same go. A stopped primary does not wait for its replicas to acknowledge the last of
# its stream (they acknowledge once a second): a switchover's take-over checks that its
# successor has all of it, and a restarted primary comes back on its own files.
server() {
    password=${REDIS_PASSWORD:?the catalogue sets REDIS_PASSWORD}
    exec setpriv --reuid=redis --regid=redis --clear-groups -- \
        /usr/bin/redis-server --bind 0.0.0.0 --port 6379 --protected-mode no --dir "$data" \
        --requirepass "$password" --masterauth "$password" --repl-diskless-sync-delay 0 \
        --shutdown-timeout 0 "$@"
}

primary() {
    persistence=$1
    mkdir -p "$volume"
    lock_or_follow "$volume"
    if [ -n "$following" ]; then
        following="--replicaof $(cat "$volume/switchover-from") 6379 --replica-read-only yes"
    fi
    own_data
    if [ -s "$volume/promote-from" ]; then
        promote "$(cat "$volume/promote-from")" "$persistence"
    fi
    # shellcheck disable=SC2086 # `following` is words of its own, or none.
    case "$persistence" in
    rdb) server --save "3600 1 300 100 60 10000" --appendonly no $following ;;
    aof) server --save "" --appendonly yes --appendfsync everysec $following ;;
    none) server --save "" --appendonly no $following ;;
    *)
        echo "catalog: unknown persistence $persistence" >&2
        exit 2
        ;;
    esac
}

# The successor of a switchover (see lock_or_follow): a replica of the old primary at ADDRESS
# (started by `primary`, with the primary's persistence) in the volume's next directory.
follow() {
    address=$1
    current=$(generation "$volume" .)
    next=$(next_generation "$current")
    remove_other_generations "$volume" "$current"
    data=$volume/$next
    rm -rf "$data"
    echo "catalog: switchover: replicating the primary at $address into $next" >&2
}

# In the primary a switchover moves: the clients' writes wait (for as long as the switchover
# may take), and what the stream holds so far is all there is to take over.
fence() {
    export REDISCLI_AUTH="${REDIS_PASSWORD:?the catalogue sets REDIS_PASSWORD}"
    /usr/bin/redis-cli -h 127.0.0.1 -p 6379 client pause 120000 write >/dev/null
    info_field master_repl_offset
}

# In the successor, once the old primary stopped: with the stream received up to OFFSET, it
# holds every write the old primary took; it stops replicating, and its files are the volume's.
take_over() {
    offset=${1:?take-over needs the offset the old primary reached}
    [ -s "$volume/next" ] || {
        echo "this server does not follow a primary for a switchover" >&2
        exit 1
    }
    next=$(cat "$volume/next")
    receive "$offset"
    /usr/bin/redis-cli -h 127.0.0.1 -p 6379 replicaof no one >/dev/null
    printf '%s\n' "$next" >"$volume/current.new"
    mv "$volume/current.new" "$volume/current"
    rm -f "$volume/next" "$volume/switchover-from"
    # The old primary's files are behind this one's from now on; the volume keeps one copy.
    case $data in
    "$volume/.") rm -rf "$volume/dump.rdb" "$volume/appendonlydir" ;;
    *) rm -rf "$data" ;;
    esac
    echo "took over at $offset"
}

# In the successor, while the fenced old primary still runs: waits until it has received the
# old primary's stream up to OFFSET.
receive() {
    offset=${1:?receive needs the offset the old primary reached}
    export REDISCLI_AUTH="${REDIS_PASSWORD:?the catalogue sets REDIS_PASSWORD}"
    if ! retry_for 300 received_up_to "$offset"; then
        echo "did not receive the old primary's stream up to $offset within 30 s" >&2
        exit 1
    fi
}

# Whether the server has received the primary's stream up to OFFSET.
received_up_to() {
    [ "$(info_field slave_repl_offset)" -ge "$1" ]
}

# One field of the instance's server's INFO replication (REDISCLI_AUTH set).
info_field() {
    info=$(/usr/bin/redis-cli -h 127.0.0.1 -p 6379 info replication) || exit 1
    found=
    while IFS=: read -r key value; do
        if [ "$key" = "$1" ]; then
            found=${value%"$(printf '\r')"}
        fi
    done <<EOF
$info
EOF
    echo "${found:-0}"
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
    rm -rf "$volume/data.failed"
    mkdir "$volume/data.failed"
    for old in "$data/dump.rdb" "$data/appendonlydir"; do
        if [ -e "$old" ]; then
            mv "$old" "$volume/data.failed/"
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
    chown -R redis:redis "$volume"
    rm -f "$volume/promote-from"
    echo "catalog: failover: promoted the copy of the replica at $address" >&2
}

replica() {
    primary=$1
    own_data
    server --replicaof "$primary" 6379 --save "" --appendonly no --replica-read-only yes
}

# A server that takes commands answers PONG, one that is still loading its data LOADING; a
# replica is ready once it has its primary's data (its link is up), not while it would answer
# from an empty or stale copy.
ready() {
    answer=$(printf 'PING\nINFO stats\nINFO replication\n' |
        REDISCLI_AUTH="${REDIS_PASSWORD:?the catalogue sets REDIS_PASSWORD}" \
            /usr/bin/redis-cli -h 127.0.0.1 -p 6379 2>&1) || true
    first= queries= role= link=
    cr=$(printf '\r')
    while IFS=: read -r key value; do
        if [ -z "$first" ]; then
            first=$key${value:+:$value}
        fi
        case $key in
        total_commands_processed) queries=${value%"$cr"} ;;
        role) role=${value%"$cr"} ;;
        master_link_status) link=${value%"$cr"} ;;
        esac
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
    if [ "$role" = slave ] && [ "$link" != up ]; then
        echo "not copied from the primary yet (its link is $link)" >&2
        exit 1
    fi
}

position() {
    export REDISCLI_AUTH="${REDIS_PASSWORD:?the catalogue sets REDIS_PASSWORD}"
    info_field slave_repl_offset
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
primary) primary "$@" ;;
replica) replica "$@" ;;
ready) ready ;;
position) position ;;
fence) fence ;;
receive) receive "$@" ;;
take-over) take_over "$@" ;;
*)
    echo "usage: $0 primary rdb|aof|none | replica PRIMARY | ready | position | fence | receive OFFSET | take-over OFFSET" >&2
    exit 2
    ;;
esac
