#!/usr/bin/env bash
# What the tests need on a fresh Debian 12 machine, installed once: each group is skipped when its
# programs are already there, so running this again costs a few `command -v`. Needs root (apt-get).
#
# - nftables: `nft`, which the daemon needs for the host's firewall of each application's bridge;
# - busybox: the base of the test images (FROM busybox:1), python3: the PaCI example's tests;
# - redis-server (and redis-cli): the Redis image of the Compose application's end-to-end test,
#   and what the catalogue's Redis image is made of;
# - postgresql (the server of PostgreSQL 15, psql, pgbench): what the catalogue's PostgreSQL
#   image is made of, and the client its tests and benchmark reach it with;
# - docker-compose: `docker-compose config`, which the Compose reader's corpus is compared with
#   (it needs no Docker engine);
# - skopeo, umoci, docker-registry, nginx, htpasswd, openssl: OCI layouts and archives made by other
#   tools, a local registry to pull from and push to (over TLS and with basic authentication);
#   nginx is also what the catalogue's static site and PHP tier images are made of;
# - mariadb-server (and its client): what the catalogue's MariaDB image is made of, and the client
#   its tests reach it with;
# - php8.2-fpm, php8.2-mysql, php-redis: what the catalogue's PHP tier image is made of;
# - wordpress: what examples/wordpress serves (its prepare.sh installs it too, for a user);
# - strace, gdb, tcpdump, yara, zstd: the host programs the built-in capsules are made of;
# - crun, runc, curl: the OCI runtimes the node agent's tests start pods with (as a Kubernetes
#   node's CRI runtime does), and the client their containers speak PaCI with;
# - CRIU 4 (scripts/criu.sh, built from Debian's newer source once): migration by checkpoint;
# - prometheus: `promtool check metrics`, which the daemon's /metrics must pass;
# - a Python virtual environment in the user's cache (~/.cache/paracloud/venv, not system-wide)
#   with openapi-spec-validator, which validates the API's OpenAPI 3.1 description, and
#   schemathesis, which tests a live daemon against it, and kubernetes-validate, the official
#   Kubernetes schemas the rendered objects are checked against;
# - chromium, chromium-driver: the dashboard's browser tests (a real Chromium through WebDriver);
# - npm: the dashboard's build installs its xterm.js package from the lockfile;
# - cargo-nextest: the test runner.
#
# With --bench, the peers the benchmarks (bench/) measure against, which no test needs, too:
# wrk (the load), HAProxy, and nginx's stream module (nginx as a TCP proxy).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
need() { # need PACKAGE PROGRAM...: the package when one of its programs is missing
  local package=$1 program
  shift
  for program in "$@"; do
    if ! command -v "$program" >/dev/null 2>&1; then
      missing+=("$package")
      return
    fi
  done
}
need nftables nft
need python3 python3
need busybox-static busybox
need skopeo skopeo
need umoci umoci
need docker-registry docker-registry
need nginx nginx
need apache2-utils htpasswd
need openssl openssl
need strace strace
need gdb gdb
need tcpdump tcpdump
need yara yara
need zstd zstd
need crun crun
need runc runc
need curl curl
need e2fsprogs mkfs.ext4
need docker-compose docker-compose
need redis-server redis-server redis-cli
need postgresql /usr/lib/postgresql/15/bin/postgres psql pgbench
need mariadb-server /usr/sbin/mariadbd mariadb mariadb-dump mariadb-admin
need php8.2-fpm php-fpm8.2
[ -e /usr/lib/php/20220829/mysqli.so ] || missing+=(php8.2-mysql)
[ -e /usr/lib/php/20220829/redis.so ] || missing+=(php-redis)
[ -e /usr/share/wordpress/wp-settings.php ] || missing+=(wordpress)
need prometheus promtool
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv) # the venv module
need npm npm
need chromium chromium
need chromium-driver chromedriver
if [ "${1:-}" = --bench ]; then
  need wrk wrk
  need haproxy haproxy
  [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing+=(libnginx-mod-stream)
elif [ $# -gt 0 ]; then
  echo "deps: unknown argument $1: give none (what the tests need) or --bench (the benchmarks' peers too)" >&2
  exit 2
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  # Packages are installed for their programs: no service of theirs (Redis, nginx) is started.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq -o DPkg::Lock::Timeout=600
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 \
    "${missing[@]}" >/dev/null
fi

bash scripts/criu.sh

# The Python tools of the tests, in a virtual environment of their own (the tests look there).
venv="${XDG_CACHE_HOME:-$HOME/.cache}/paracloud/venv"
if [ ! -x "$venv/bin/openapi-spec-validator" ] || [ ! -x "$venv/bin/schemathesis" ] ||
  [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet openapi-spec-validator schemathesis kubernetes-validate
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  cargo install --locked cargo-nextest
fi
