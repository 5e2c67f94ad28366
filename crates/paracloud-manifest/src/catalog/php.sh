#!/bin/sh
# The instances of a PHP web tier of the catalogue:
#   serve [DIR...]  nginx on port 80 in front of php-fpm, serving the application's directory
#                   at /srv/app; sessions kept in the Redis of PARACLOUD_SESSIONS (a
#                   session.save_path) when it is set, else as files in /var/lib/php/sessions,
#                   the service's own volume that all its instances share; each DIR (the
#                   application's writable volumes) given to www-data, who runs the scripts
# It starts as root inside the instance; nginx and php-fpm run their workers as www-data. When
# either of them ends, the other is stopped too, so that the platform restarts the instance.
set -eu

sessions=/var/lib/php/sessions

# Asks nginx to finish its requests and stop, then php-fpm (by its pid file: $fpm is the pipe's
# end): nginx's requests in flight are php-fpm's scripts, which stopping both at once cut off
# (nginx answered 502 to the request an instance scaled in was running).
stop() {
    kill -QUIT "$web" 2>/dev/null || true
    wait "$web" 2>/dev/null || true
    if [ -s /run/php/fpm.pid ]; then
        kill -QUIT "$(cat /run/php/fpm.pid)" 2>/dev/null || true
    fi
}

# The platform's address on the instance's network: host 1 of the network of its interface's
# route (the bridge, where the data plane's connections come from), from the kernel's routes.
bridge() {
    while read -r _ destination gateway _ _ _ _ mask _; do
        [ "$gateway" = 00000000 ] && [ "$mask" != 00000000 ] && [ "$destination" != Destination ] ||
            continue
        # Little-endian hexadecimal: 0000D50A is 10.213.0.0.
        first=${destination#??????}
        second=${destination#????}
        third=${destination#??}
        printf '%d.%d.%d.%d\n' "0x$first" "0x${second%??}" "0x${third%????}" \
            "$((0x${destination%??????} + 1))"
        return
    done </proc/net/route
}

serve() {
    for dir in "$@"; do
        chown www-data:www-data "$dir"
    done
    mkdir -p /run/php
    chmod 750 /run/php
    chown www-data:www-data /run/php
    if [ -n "${PARACLOUD_SESSIONS:-}" ]; then
        printf 'php_value[session.save_handler] = redis\nphp_value[session.save_path] = "%s"\n' \
            "$PARACLOUD_SESSIONS"
    else
        mkdir -p "$sessions"
        chmod 700 "$sessions"
        chown www-data:www-data "$sessions"
        printf 'php_value[session.save_handler] = files\nphp_value[session.save_path] = "%s"\n' \
            "$sessions"
    fi >/run/php/sessions.conf
    chmod 600 /run/php/sessions.conf
    # The data plane reaches the instance from the bridge and appends the client's address to
    # X-Forwarded-For: nginx takes REMOTE_ADDR from there, for requests from that address only
    # (and the last address only), so that no client chooses its own.
    via=$(bridge)
    if [ -n "$via" ]; then
        printf 'set_real_ip_from %s;\nreal_ip_header X-Forwarded-For;\n' "$via"
    fi >/run/php/real-ip.conf
    # php-fpm opens its error log by name (/proc/self/fd/2), which the instance's own log file
    # does not allow: it writes to a pipe of the instance's instead, passed on by cat.
    /usr/sbin/php-fpm@VERSION@ -n -c /etc/paracloud/php.ini -y /etc/paracloud/php-fpm.conf -F 2>&1 |
        cat >&2 &
    fpm=$!
    # nginx once php-fpm listens, so that its first requests find the socket.
    tries=0
    while [ ! -S /run/php/fpm.sock ] && [ "$tries" -lt 50 ] && kill -0 "$fpm" 2>/dev/null; do
        sleep 0.1
        tries=$((tries + 1))
    done
    /usr/sbin/nginx -c /etc/paracloud/nginx.conf &
    web=$!
    # Both stop gracefully: nginx finishes its requests, php-fpm its scripts.
    stopping=no
    trap 'stopping=yes; stop' TERM INT QUIT
    while kill -0 "$fpm" 2>/dev/null && kill -0 "$web" 2>/dev/null; do
        sleep 1 &
        wait $! || true
    done
    stop
    wait || true
    [ "$stopping" = yes ] && exit 0
    echo "catalog: nginx or php-fpm ended; the instance stops" >&2
    exit 1
}

command=${1:-}
[ $# -gt 0 ] && shift
case "$command" in
serve) serve "$@" ;;
*)
    echo "usage: $0 serve [DIR...]" >&2
    exit 2
    ;;
esac
