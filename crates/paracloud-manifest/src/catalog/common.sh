# Two servers must never share a primary's data: the lock on DIR/lock is taken on fd 9, which the
# server and its processes inherit, so it is held for as long as any of them runs.
hold_lock() {
    exec 9>>"$1/lock"
    if ! flock -n 9; then
        echo "catalog: another server holds $1; waiting for it to stop" >&2
        flock 9
    fi
}
