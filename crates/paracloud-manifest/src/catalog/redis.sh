#!/bin/sh
# The instances of a Redis service of the catalogue:
#   primary PERSISTENCE   the primary, its data on the volume at /data, kept as PERSISTENCE says:
#                         rdb (snapshots), aof (every write appended, flushed each second), none
#   replica PRIMARY       a replica of PRIMARY's address, its data its own (in memory)
#   ready                 the health check: the server answers (not while it loads its data)
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

replica() {
    primary=$1
    own_data
    server --replicaof "$primary" 6379 --save "" --appendonly no --replica-read-only yes
}

# Asked without the password, which the check needs not know: a server that takes commands
# answers NOAUTH, one that is still loading its data LOADING.
ready() {
    answer=$(/usr/bin/redis-cli -h 127.0.0.1 -p 6379 ping 2>&1) || true
    case "$answer" in
    PONG | NOAUTH*) ;;
    *)
        echo "$answer" >&2
        exit 1
        ;;
    esac
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
primary) primary "$@" ;;
replica) replica "$@" ;;
ready) ready ;;
*)
    echo "usage: $0 primary rdb|aof|none | replica PRIMARY | ready" >&2
    exit 2
    ;;
esac
