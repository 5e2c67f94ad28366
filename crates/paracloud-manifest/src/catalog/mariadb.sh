#!/bin/sh
# The instances of a MariaDB service of the catalogue:
#   primary COMMITS          the primary, its data on the volume at /var/lib/mysql; COMMITS
#                            `synchronous` (each waits until a replica has it in its relay log)
#                            or `local`
#   replica PRIMARY          a replica of PRIMARY's address, seeded from a dump of it, its data
#                            in the instance's own writable layer
#   ready [MAX_LAG_MS]       the health check: the server takes connections; with MAX_LAG_MS, a
#                            replica also replicates from the primary and is at most that far
#                            behind (MariaDB counts the lag in whole seconds); it prints the
#                            server's figures for the platform's model:
#                            `load queries=N [lag_ms=M]`
#   position                 a replica's position: the sequence number of the last transaction
#                            it received from the primary, which the platform compares to choose
#                            the replica a failover promotes
#   fence                    in the primary a switchover moves: no client writes any more (it is
#                            read-only and their connections are ended), its replicas have all
#                            it logged, and it prints its binary log's GTID position
#   receive [POSITION]       in the successor of a switchover, once the old primary is fenced:
#                            waits until it has received all up to POSITION, then stops
#                            receiving (while the old primary still answers: a replica waits 2 s
#                            to stop one that reconnects to a server that is gone)
#   take-over POSITION       in the successor of a switchover, once the old primary stopped:
#                            applies all up to POSITION, stops replicating and takes writes, and
#                            its data becomes the volume's
# Switchover (`paracloud migrate` of the primary): the platform writes the old primary's address
# in the volume's `switchover-from` and starts the successor, which finds the volume locked by
# the old server: it loads a copy of it into the volume's next data directory (`data.N`, which
# the volume's `current` names once it took over) and replicates from it under the next server
# id, logging what it applies, while the old one serves. The platform then runs `fence` in the
# old primary, stops it, and runs `take-over` in the successor.
# Failover: when the primary's data cannot start, the platform writes the address of its most
# advanced replica in the volume's `promote-from` and starts the primary again; the primary then
# has that replica apply all it received, sets its own data aside (`data.failed`, the one of the
# last failover), and starts as a primary from a copy of the replica, under a new server id, so
# that its transactions are never taken for the old primary's.
# It starts as root inside the instance, gives the data to the mysql user and runs the server as
# that user. Root connects over the server's socket with no password, as PostgreSQL's catalogue
# servers trust their socket: the health check and the dump capsule do (a capsule attaches from
# outside the instance's user namespace, where the server would take it for nobody, so the
# socket cannot check who connects); from elsewhere root gives MARIADB_ROOT_PASSWORD, as the
# replicas do.
set -eu

@COMMON@
base=/var/lib/mysql
data=$base/$(generation "$base" data)
share=/usr/share/mysql
# The server's socket, where the health check and the capsules find it; the servers the script
# runs for itself (to restore a dump, to seed a replica) listen on sockets of their own, so that
# the health check does not take them for the instance's server.
socket=/tmp/mysqld.sock
private=/tmp/private.sock
database=${MARIADB_DATABASE:-}
user=${MARIADB_USER:-}
newline='
'

as_mysql() {
    setpriv --reuid=mysql --regid=mysql --clear-groups -- "$@"
}

own_data() {
    mkdir -p "$data"
    chown mysql:mysql "$base" "$data"
    chmod 700 "$data"
}

# VALUE as an SQL string: quoted, its quotes, backslashes and line ends escaped (a line end would
# end a statement of `mariadbd --bootstrap`).
sql_string() {
    rest=$1
    quoted=
    while [ -n "$rest" ]; do
        char=${rest%"${rest#?}"}
        rest=${rest#?}
        case $char in
        "'" | \\) quoted="$quoted\\$char" ;;
        "$newline") quoted="$quoted\\n" ;;
        *) quoted="$quoted$char" ;;
        esac
    done
    printf "'%s'" "$quoted"
}

# NAME as an SQL name: quoted, its backquotes doubled; with `pattern`, its _ and % escaped too, for
# GRANT, where they would match any character.
sql_name() {
    rest=$1
    quoted=
    while [ -n "$rest" ]; do
        char=${rest%"${rest#?}"}
        rest=${rest#?}
        case $char in
        \`) quoted="$quoted\`\`" ;;
        _ | %) [ "${2:-}" = pattern ] && quoted="$quoted\\$char" || quoted="$quoted$char" ;;
        *) quoted="$quoted$char" ;;
        esac
    done
    printf '`%s`' "$quoted"
}

# InnoDB's redo log, the same for every server the script runs (a server resizes the log of data
# made with another): a third of the server's default, so that a failover's copy and the data it
# sets aside fit beside each other on a small volume.
redo_log=--innodb-log-file-size=32M

client() {
    /usr/bin/mariadb --no-defaults --user=root --max-allowed-packet=1G "$@"
}

# The server, with the settings a primary and its replicas share. It logs to stderr; it reads no
# option file, so the machine's own (in a test) changes nothing.
server() {
    exec setpriv --reuid=mysql --regid=mysql --clear-groups -- \
        /usr/sbin/mariadbd --no-defaults --log-basename=mariadb --datadir="$data" "$redo_log" \
        --socket="$socket" --port=3306 --bind-address=0.0.0.0 --skip-name-resolve \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci \
        --max-allowed-packet=1G --gtid-strict-mode=ON "$@"
}

# A server of the script's own on DIR, on its private socket and no network, in the background,
# its log in /tmp/private.log, until stop_private.
start_private() {
    rm -f /tmp/private.log
    # setpriv itself in the background (not as_mysql, a function: a subshell), so that $! is the
    # server's process.
    setpriv --reuid=mysql --regid=mysql --clear-groups -- \
        /usr/sbin/mariadbd --no-defaults --log-basename=mariadb --datadir="$1" "$redo_log" \
        --socket="$private" --skip-networking --skip-log-bin --skip-slave-start \
        --max-allowed-packet=1G --character-set-server=utf8mb4 \
        --collation-server=utf8mb4_general_ci 2>/tmp/private.log &
    private_pid=$!
    until /usr/bin/mariadb-admin --no-defaults --socket="$private" --user=root ping >/dev/null 2>&1
    do
        if ! kill -0 "$private_pid" 2>/dev/null; then
            cat /tmp/private.log >&2
            return 1
        fi
        sleep 0.1
    done
}

stop_private() {
    /usr/bin/mariadb-admin --no-defaults --socket="$private" --user=root shutdown 2>/dev/null ||
        kill "$private_pid" 2>/dev/null || true
    wait "$private_pid" || true
}

# The system tables of a new server in DIR (what mariadb-install-db does, without the shell tools
# it needs), then the statements on stdin; root@localhost is the instance's root over the socket.
bootstrap() {
    {
        printf '%s\n' "CREATE DATABASE IF NOT EXISTS mysql;" "USE mysql;" \
            "SET @auth_root_socket='root';"
        cat "$share/mysql_system_tables.sql" "$share/mysql_performance_tables.sql" \
            "$share/mysql_system_tables_data.sql" "$share/maria_add_gis_sp_bootstrap.sql" \
            "$share/mysql_sys_schema.sql"
        # Its rows for the machine's host name (of no use, and warned of at each start).
        printf '%s\n' "DELETE FROM mysql.proxies_priv WHERE Host <> 'localhost';"
        cat
    } | as_mysql /usr/sbin/mariadbd --no-defaults --bootstrap --datadir="$1" "$redo_log" \
        --log-warnings=0 --enforce-storage-engine= --skip-log-bin --max-allowed-packet=8M --net-buffer-length=16K \
        --character-set-server=utf8mb4 --collation-server=utf8mb4_general_ci >&2
}

primary() {
    commits=$1
    mkdir -p "$base"
    lock_or_follow "$base"
    own_data
    if [ -s "$base/promote-from" ]; then
        promote "$(cat "$base/promote-from")"
    fi
    if [ ! -d "$data/mysql" ]; then
        new_database
    fi
    # 1 for the first primary, one more after each failover and switchover (the replicas take
    # random ones).
    server_id=$(current_server_id)
    if [ -n "$following" ]; then
        server_id=$((server_id + 1))
    fi
    # Every commit is in the binary log on the volume before the client hears of it. The log is
    # kept a day: what a replica that lost its connection needs to go on from where it was (one
    # that starts copies the primary afresh).
    set -- --server-id="$server_id" --log-bin --binlog-format=ROW --sync-binlog=1 \
        --binlog-expire-logs-seconds=86400
    # A successor replicates read-only from the old primary, its binary log holding what it
    # applies, so that its replicas go on from the same GTIDs once it takes over. Its own
    # commits wait for replicas only once it has taken over: the transactions it applies would
    # wait for replicas it does not have yet.
    if [ -n "$following" ]; then
        set -- "$@" --read-only=ON --log-slave-updates=ON --rpl-semi-sync-slave-enabled=ON \
            --slave-net-timeout=10
        printf '%s\n' "$commits" >"$base/next-commits"
        commits=local
    fi
    case "$commits" in
    # A commit waits until a replica has it in its relay log (written after the primary's binary
    # log, before the primary's tables: AFTER_SYNC): it is on two servers before the client hears
    # of it. It waits up to a day for a replica to come back before the primary gives up and
    # commits alone (until a replica catches up), so that no start of a replica, however long
    # its copy, turns the waiting off.
    synchronous)
        server "$@" --rpl-semi-sync-master-enabled=ON \
            --rpl-semi-sync-master-wait-point=AFTER_SYNC \
            --rpl-semi-sync-master-timeout="$semi_sync_timeout" \
            --rpl-semi-sync-master-wait-no-slave=ON
        ;;
    local) server "$@" ;;
    *)
        echo "catalog: unknown commits $commits" >&2
        exit 2
        ;;
    esac
}

# A new database, made beside the data directory and moved there only once whole (with the dump
# of `restore` in it), so that a start cut short makes it again rather than keep half of it.
new_database() {
    password=${MARIADB_ROOT_PASSWORD:?the catalogue sets MARIADB_ROOT_PASSWORD}
    if [ -n "$user" ] &&
        { [ "$user" = root ] || [ -z "${MARIADB_PASSWORD:-}" ] || [ -z "$database" ]; }; then
        echo "catalog: MARIADB_USER needs MARIADB_PASSWORD and MARIADB_DATABASE;" \
            "it cannot be root" >&2
        exit 2
    fi
    if [ -f /restore.sql ] && [ -z "$database" ]; then
        echo "catalog: restoring /restore.sql needs MARIADB_DATABASE, the database it goes into" >&2
        exit 2
    fi
    made=$base/data.new
    rm -rf "$made"
    mkdir -p "$made"
    chown mysql:mysql "$made"
    chmod 700 "$made"
    echo "catalog: creating the database" >&2
    # Root from elsewhere with the password, with every right but writing to a read-only server:
    # a replica's clients cannot write to it even as root.
    {
        printf '%s\n' "FLUSH PRIVILEGES;" \
            "ALTER USER 'root'@'localhost' IDENTIFIED VIA mysql_native_password USING '';" \
            "CREATE USER 'root'@'%' IDENTIFIED BY $(sql_string "$password");" \
            "GRANT ALL ON *.* TO 'root'@'%' WITH GRANT OPTION;" \
            "REVOKE READ_ONLY ADMIN ON *.* FROM 'root'@'%';"
        if [ -n "$database" ]; then
            printf '%s\n' "CREATE DATABASE $(sql_name "$database");"
        fi
        if [ -n "$user" ]; then
            account="$(sql_string "$user")@'%'"
            printf '%s\n' \
                "CREATE USER $account IDENTIFIED BY $(sql_string "$MARIADB_PASSWORD");" \
                "GRANT ALL ON $(sql_name "$database" pattern).* TO $account;"
        fi
    } | bootstrap "$made"
    # A dump of one database (`mariadb-dump DATABASE`, as the dump capsule takes it: no CREATE
    # DATABASE, no USE), loaded into the database before the server takes connections from
    # elsewhere.
    if [ -f /restore.sql ]; then
        echo "catalog: restoring /restore.sql into $database" >&2
        start_private "$made"
        if ! client --socket="$private" --database="$database" </restore.sql; then
            stop_private
            echo "catalog: /restore.sql did not load" >&2
            exit 1
        fi
        stop_private
    fi
    # The data directory holds nothing: rmdir says so if it does.
    rmdir "$data"
    mv "$made" "$data"
}

# The primary's data replaced by a copy of the replica at ADDRESS, taken while it keeps serving
# reads, once it has applied every transaction it received (with AFTER_SYNC, a commit the old
# primary acknowledged may be in its relay log only). The old data is kept aside until the next
# failover; a copy cut short is made again at the next start.
promote() {
    address=$1
    password=${MARIADB_ROOT_PASSWORD:?the catalogue sets MARIADB_ROOT_PASSWORD}
    export MYSQL_PWD="$password"
    echo "catalog: failover: copying the replica at $address" >&2
    received=$(slave_field Gtid_IO_Pos --host="$address" --port=3306) || {
        echo "catalog: failover: cannot ask the replica at $address what it received" >&2
        exit 1
    }
    if [ -n "$received" ]; then
        applied=$(client --host="$address" --port=3306 --batch --skip-column-names \
            --execute="SELECT MASTER_GTID_WAIT($(sql_string "$received"), 600)") || applied=
        if [ "$applied" != 0 ]; then
            echo "catalog: failover: the replica at $address did not apply what it received ($received)" >&2
            exit 1
        fi
    fi
    made=$base/data.new
    rm -rf "$made"
    mkdir -p "$made"
    chown mysql:mysql "$made"
    chmod 700 "$made"
    if ! load_copy "$address" "$made"; then
        [ -z "${private_pid:-}" ] || stop_private
        rm -rf "$made"
        echo "catalog: failover: cannot copy the replica at $address" >&2
        exit 1
    fi
    stop_private
    private_pid=
    unset MYSQL_PWD
    if [ -d "$data" ]; then
        rm -rf "$base/data.failed"
        mv "$data" "$base/data.failed"
    fi
    mv "$made" "$data"
    previous=1
    if [ -s "$base/server-id" ]; then
        previous=$(cat "$base/server-id")
    fi
    echo "$((previous + 1))" >"$base/server-id"
    rm -f "$base/promote-from"
    echo "catalog: failover: promoted the copy of the replica at $address" >&2
}

# How long a synchronous commit waits for a replica, in ms: a day.
semi_sync_timeout=86400000

# The server id of the volume's primary: 1, then one more after each failover and switchover.
current_server_id() {
    if [ -s "$base/server-id" ]; then
        cat "$base/server-id"
    else
        echo 1
    fi
}

# The successor of a switchover (see lock_or_follow): a copy of the old primary at ADDRESS in
# the volume's next data directory, which replicates from it (the server is started by
# `primary`).
follow() {
    address=$1
    current=$(generation "$base" data)
    next=$(next_generation "$current")
    remove_other_generations "$base" "$current"
    data=$base/$next
    password=${MARIADB_ROOT_PASSWORD:?the catalogue sets MARIADB_ROOT_PASSWORD}
    export MYSQL_PWD="$password"
    echo "catalog: switchover: copying the primary at $address into $next" >&2
    if ! seed "$address"; then
        [ -z "${private_pid:-}" ] || stop_private
        rm -rf "$data"
        echo "catalog: switchover: cannot copy the primary at $address" >&2
        exit 1
    fi
    unset MYSQL_PWD
}

# In the primary a switchover moves: it takes no more writes from clients (read-only, which
# binds root from elsewhere too, made without READ_ONLY ADMIN; and every client connection
# ends, its open transaction rolled back), and once each replica has been sent all it logged,
# it says how far its binary log goes.
fence() {
    sql_on_socket "SET GLOBAL read_only = ON"
    for id in $(sql_on_socket "SELECT id FROM information_schema.processlist
        WHERE command NOT IN ('Binlog Dump', 'Daemon') AND id <> CONNECTION_ID()
        AND user <> 'system user'"); do
        sql_on_socket "KILL CONNECTION $id" 2>/dev/null || true
    done
    if ! retry_for 100 all_sent; then
        echo "its replicas were not sent all it logged within 10 s" >&2
        exit 1
    fi
    sql_on_socket "SELECT @@gtid_binlog_pos"
}

# Whether every binary log dump thread has sent its replica all the server logged.
all_sent() {
    [ -z "$(sql_on_socket "SELECT id FROM information_schema.processlist
        WHERE command = 'Binlog Dump' AND state NOT LIKE 'Master has sent all binlog%'")" ]
}

# In the successor, while the fenced old primary still runs: once it has received all up to
# POSITION (the sequence numbers of domain 0, the only one the catalogue's servers write in), it
# stops receiving.
receive() {
    position=${1:-}
    if [ -n "$position" ] && ! retry_for 300 received_up_to "${position##*-}"; then
        echo "did not receive the old primary's transactions up to $position within 30 s" >&2
        exit 1
    fi
    sql_on_socket "STOP SLAVE IO_THREAD"
}

# Whether the server has received the primary's transactions up to sequence number SEQUENCE.
received_up_to() {
    received=$(slave_field Gtid_IO_Pos --socket="$socket") || return 1
    received=${received%%,*}
    [ -n "$received" ] && [ "${received##*-}" -ge "$1" ]
}

# In the successor, once the old primary stopped: once it applied all up to POSITION, it holds
# every transaction the old primary committed; it stops replicating, takes writes, and its data
# and server id are the volume's.
take_over() {
    position=${1:-}
    [ -s "$base/next" ] || {
        echo "this server does not follow a primary for a switchover" >&2
        exit 1
    }
    next=$(cat "$base/next")
    if [ -n "$position" ] &&
        [ "$(sql_on_socket "SELECT MASTER_GTID_WAIT($(sql_string "$position"), 30)")" != 0 ]; then
        echo "did not apply the old primary's transactions up to $position within 30 s" >&2
        exit 1
    fi
    sql_on_socket "STOP SLAVE; RESET SLAVE ALL;"
    if [ "$(cat "$base/next-commits" 2>/dev/null)" = synchronous ]; then
        sql_on_socket "SET GLOBAL rpl_semi_sync_master_wait_point = AFTER_SYNC;
            SET GLOBAL rpl_semi_sync_master_timeout = $semi_sync_timeout;
            SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON;
            SET GLOBAL rpl_semi_sync_master_enabled = ON;"
    fi
    sql_on_socket "SET GLOBAL read_only = OFF"
    echo "$(($(current_server_id) + 1))" >"$base/server-id.new"
    mv "$base/server-id.new" "$base/server-id"
    printf '%s\n' "$next" >"$base/current.new"
    mv "$base/current.new" "$base/current"
    rm -f "$base/next" "$base/next-commits" "$base/switchover-from"
    # The old primary's data is behind this one's from now on; the volume keeps one copy.
    rm -rf "$data"
    echo "took over at $position"
}

# The rows of SQL on the instance's server, as root over its socket, tab-separated.
sql_on_socket() {
    client --socket="$socket" --batch --skip-column-names --execute="$1"
}

# FIELD of SHOW SLAVE STATUS, asked with the client's options that follow (nothing when the
# server replicates from nothing).
slave_field() {
    field=$1
    shift
    status=$(client "$@" --vertical --execute="SHOW SLAVE STATUS") || return 1
    while IFS=': ' read -r key value; do
        if [ "$key" = "$field" ]; then
            printf '%s\n' "$value"
        fi
    done <<EOF
$status
EOF
}

replica() {
    primary=$1
    password=${MARIADB_ROOT_PASSWORD:?the catalogue sets MARIADB_ROOT_PASSWORD}
    export MYSQL_PWD="$password"
    until seed "$primary"; do
        echo "catalog: cannot copy $primary yet; trying again" >&2
        [ -z "${private_pid:-}" ] || stop_private
        private_pid=
        sleep 1
    done
    unset MYSQL_PWD
    # The id differs from the primary's (1) and, but by a 1 in 4e9 chance, from the other
    # replicas': the primary drops a replica when another connects with its id.
    server --server-id="$server_id" --read-only=ON --rpl-semi-sync-slave-enabled=ON \
        --slave-net-timeout=10
}

# A fresh copy of the primary, from which it then replicates: see load_copy. Not under set -e
# (run as a condition): each step says when it fails.
seed() {
    until client --host="$1" --port=3306 --execute="SELECT 1" >/dev/null; do
        echo "catalog: $1 does not answer yet; trying again" >&2
        sleep 1
    done
    echo "catalog: copying $1" >&2
    rm -rf "$data" && own_data || return 1
    load_copy "$1" "$data" --gtid --master-data=1 || return 1
    server_id=$(client --socket="$private" --batch --skip-column-names \
        --execute="SELECT 2 + FLOOR(RAND() * 4294967294)") || return 1
    # The password goes on stdin (printf is the shell's), not on a command line.
    printf '%s\n' "CHANGE MASTER TO MASTER_HOST=$(sql_string "$1"), MASTER_PORT=3306,
        MASTER_USER='root', MASTER_PASSWORD=$(sql_string "$MYSQL_PWD"),
        MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;" | client --socket="$private" ||
        return 1
    stop_private
    private_pid=
    echo "catalog: copied $1; replicating from it" >&2
}

# An empty server in DIR that loads a dump of every database of the server at ADDRESS, taken in
# one transaction while that server keeps serving (with the dump's OPTIONS after): it is left
# running on the private socket for the caller to finish with. Not under set -e (run as a
# condition): each step says when it fails.
load_copy() {
    address=$1
    dir=$2
    shift 2
    echo | bootstrap "$dir" || return 1
    start_private "$dir" || return 1
    failed=/tmp/seed.failed
    rm -f "$failed"
    {
        /usr/bin/mariadb-dump --no-defaults --host="$address" --port=3306 --user=root \
            --max-allowed-packet=1G --all-databases --single-transaction --events "$@" ||
            echo >"$failed"
    } | client --socket="$private" || return 1
    [ ! -e "$failed" ] || return 1
}

ready() {
    # The statements clients sent the server since it started: the queries it ran.
    if ! questions=$(client --socket="$socket" --batch --skip-column-names \
        --execute="SHOW GLOBAL STATUS LIKE 'Questions'" 2>/dev/null); then
        echo "the server takes no connections yet" >&2
        exit 1
    fi
    queries=${questions##*[!0-9]}
    if [ $# -eq 0 ]; then
        echo "load queries=$queries"
        exit 0
    fi
    max_lag_ms=$1
    if ! status=$(client --socket="$socket" --vertical --execute="SHOW SLAVE STATUS"); then
        echo "cannot ask the server how far behind it is" >&2
        exit 1
    fi
    # A primary replicates from nothing: it is behind nothing.
    if [ -z "$status" ]; then
        echo "load queries=$queries"
        exit 0
    fi
    io= sql= behind= io_error= sql_error=
    while IFS=': ' read -r key value; do
        case $key in
        Slave_IO_Running) io=$value ;;
        Slave_SQL_Running) sql=$value ;;
        Seconds_Behind_Master) behind=$value ;;
        Last_IO_Error) io_error=$value ;;
        Last_SQL_Error) sql_error=$value ;;
        esac
    done <<EOF
$status
EOF
    if [ "$io" != Yes ]; then
        printf '%s\n' "not receiving from the primary ($io${io_error:+: $io_error})" >&2
        exit 1
    fi
    if [ "$sql" != Yes ]; then
        printf '%s\n' "not applying what the primary sends ($sql${sql_error:+: $sql_error})" >&2
        exit 1
    fi
    case $behind in
    '' | *[!0-9]*)
        echo "the server does not know how far behind it is ($behind)" >&2
        exit 1
        ;;
    esac
    echo "load queries=$queries lag_ms=$((behind * 1000))"
    if [ "$((behind * 1000))" -gt "$max_lag_ms" ]; then
        echo "${behind} s behind the primary, more than the ${max_lag_ms} ms of max_lag" >&2
        exit 1
    fi
}

position() {
    received=$(slave_field Gtid_IO_Pos --socket="$socket") || exit 1
    # domain-server-sequence (0-1-1234); the catalogue's servers write in domain 0 alone.
    first=${received%%,*}
    case $first in
    *-*-*) echo "${first##*-}" ;;
    *) echo 0 ;;
    esac
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
primary) primary "$@" ;;
replica) replica "$@" ;;
ready) ready "$@" ;;
position) position ;;
fence) fence ;;
receive) receive "$@" ;;
take-over) take_over "$@" ;;
*)
    echo "usage: $0 primary synchronous|local | replica PRIMARY | ready [MAX_LAG_MS] | position | fence | receive [POSITION] | take-over [POSITION]" >&2
    exit 2
    ;;
esac
