# Two servers must never share a primary's data: the lock on DIR/lock is taken on fd 9, which the
# server and its processes inherit, so it is held for as long as any of them runs. When another
# server holds it and DIR/switchover-from names it, this one is the successor of a switchover:
# `follow` (the script's own) copies that server into the volume's next data directory, and the
# lock is taken in the background once that server has stopped; `following` is then `yes`.
# Otherwise it waits for the lock. A switchover's files are forgotten once the lock is this
# server's at once: the old primary is gone, or the switchover never ended.
lock_or_follow() {
    exec 9>>"$1/lock"
    following=
    if flock -n 9; then
        rm -f "$1/switchover-from" "$1/next" "$1/next-commits"
    elif [ -s "$1/switchover-from" ]; then
        follow "$(cat "$1/switchover-from")"
        printf '%s\n' "$next" >"$1/next"
        following=yes
        flock 9 &
    else
        echo "catalog: another server holds $1; waiting for it to stop" >&2
        flock 9
    fi
}

# The data directory in use under DIR: the one DIR/current names after a switchover, DEFAULT
# before any.
generation() {
    if [ -s "$1/current" ]; then
        cat "$1/current"
    else
        echo "$2"
    fi
}

# The data directory after the one named CURRENT: data, then data.1, data.2, ...
next_generation() {
    case $1 in
    data | .) echo data.1 ;;
    *) echo "data.$((${1#data.} + 1))" ;;
    esac
}

# Removes the data directories of earlier primaries under DIR, but CURRENT's.
remove_other_generations() {
    for old in "$1"/data "$1"/data.[0-9]*; do
        if [ -d "$old" ] && [ "$old" != "$1/$2" ]; then
            rm -rf "$old"
        fi
    done
}

# Runs the command that follows until it succeeds, every 0.1 s, for at most TENTHS tenths of a
# second; fails when it has not.
retry_for() {
    tenths=$1
    shift
    waited=0
    until "$@"; do
        if [ "$waited" -ge "$tenths" ]; then
            return 1
        fi
        sleep 0.1
        waited=$((waited + 1))
    done
}
