#!/usr/bin/env bash
# CRIU 4.x for migration by checkpoint and restore (`paracloud migrate --via criu`).
#
# Debian 12's criu 3.17 cannot start on kernels from 6.13 on ("vdso: Unexpected rt vDSO area
# bounds"); CRIU 4.1 works. This builds it from Debian trixie's source package, fetched through a
# private apt configuration under a temporary directory (the system's apt sources are left alone),
# with the build dependencies from Debian 12, and installs the one binary as
# $PREFIX/sbin/criu (default /usr/local/sbin/criu), where the daemon looks first.
#
# Skips everything when a criu of version 4 or later is already found there or on PATH.
# Needs root (apt-get install of the build dependencies, and the install itself).
set -euo pipefail
PREFIX=${CRIU_PREFIX:-/usr/local}

criu_major() { "$1" --version 2>/dev/null | sed -n 's/^Version: *\([0-9]*\)\..*/\1/p'; }

for candidate in "$PREFIX/sbin/criu" "$(command -v criu || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ] && [ "$(criu_major "$candidate")" -ge 4 ] 2>/dev/null; then
    echo "criu: $("$candidate" --version | head -1) at $candidate, nothing to build"
    exit 0
  fi
done

work=$(mktemp -d -t paracloud-criu.XXXXXX)
trap 'rm -rf "$work"' EXIT
chmod 755 "$work"
apt_dir="$work/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d" \
  "$apt_dir/preferences.d"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
  >"$apt_dir/sources.list"
private=(
  -o "Dir::Etc::sourcelist=$apt_dir/sources.list"
  -o "Dir::Etc::sourceparts=$apt_dir/sources.list.d"
  -o "Dir::Etc::preferencesparts=$apt_dir/preferences.d"
  -o "Dir::State::lists=$apt_dir/lists"
  -o "Dir::Cache=$apt_dir/cache"
  -o "APT::Get::List-Cleanup=0"
  -o "Acquire::GzipIndexes=false"
  -o "APT::Sandbox::User=root"
)

echo "criu: build dependencies from Debian 12"
apt-get update -qq -o DPkg::Lock::Timeout=600
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 \
  build-essential dpkg-dev pkg-config python3 python3-protobuf \
  libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler \
  libnl-3-dev libnet1-dev libcap-dev libaio-dev libbsd-dev uuid-dev libgnutls28-dev \
  libnftables-dev >/dev/null

echo "criu: source from Debian trixie (private apt configuration)"
apt-get "${private[@]}" update -qq
if ! (cd "$work" && apt-get "${private[@]}" source -qq criu >/dev/null 2>"$work/source.log"); then
  # Some mirrors keep only the upstream tarball of the package: fetch that one, checked against
  # the SHA-256 of the Sources index apt has just verified, and build it (Debian's patches only
  # touch packaging; `make criu` does not need them).
  echo "criu: the full source package is not on the mirror ($(grep -m1 -o '404.*' "$work/source.log" || echo 'apt-get source failed')); using its upstream tarball"
  sources=$(find "$apt_dir/lists" -name '*trixie*Sources*' | head -1)
  entry=$( (case "$sources" in *.xz) xz -dc "$sources" ;; *.gz) gzip -dc "$sources" ;; *.lz4) lz4 -dc "$sources" ;; *) cat "$sources" ;; esac) |
    awk '/^Package: criu$/{p=1} p&&/^$/{p=0} p')
  dir=$(echo "$entry" | sed -n 's/^Directory: //p')
  read -r sha _ file < <(echo "$entry" | sed -n '/^Checksums-Sha256:/,/^[A-Z]/p' | grep 'orig\.tar')
  if [ -z "$dir" ] || [ -z "$file" ]; then
    echo "criu: no criu source in Debian trixie's index" >&2
    exit 1
  fi
  /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "http://deb.debian.org/debian/$dir/$file" "$work/$file" "SHA256:$sha" >/dev/null
  tar -C "$work" -xf "$work/$file"
fi
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'criu-*' | head -1)
if [ -z "$src" ]; then
  echo "criu: the source package did not unpack under $work" >&2
  exit 1
fi

echo "criu: make criu in $(basename "$src")"
make -C "$src" -j"$(nproc)" criu >"$work/build.log" 2>&1 || {
  tail -40 "$work/build.log" >&2
  echo "criu: the build failed (last lines above)" >&2
  exit 1
}
install -D -m 0755 "$src/criu/criu" "$PREFIX/sbin/criu"
echo "criu: installed $("$PREFIX/sbin/criu" --version | head -1) as $PREFIX/sbin/criu"
