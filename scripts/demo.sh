#!/usr/bin/env bash
# Builds Paracloud and the shop example, brings the shop up on this machine (as root: instances
# are real namespaces and cgroups) and asks it for its page through the published port.
set -euo pipefail
cd "$(dirname "$0")/.."
# The daemon's host firewall needs nftables' nft.
if ! command -v nft >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables >/dev/null
fi
# The dashboard's build installs its xterm.js package with npm.
if ! command -v npm >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null
fi
cargo build --release --workspace --quiet
# Each service runs from a micro-image of its program: the binary, its shared libraries and a
# minimal /etc. (examples/shop/paracloud.toml runs the same programs from `image = "host"`.)
for service in kv api web; do
  ./target/release/paracloud image build --from-binary "$PWD/target/release/shop-$service" \
    -t "shop-$service:latest"
done
./target/release/paracloud images
./target/release/paracloud up -f examples/shop/paracloud.micro.toml
./target/release/paracloud ps -a shop
echo
echo "GET http://127.0.0.1:8080/"
exec 3<>/dev/tcp/127.0.0.1/8080
printf 'GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
cat <&3
exec 3<&-
echo
echo "The shop stays up. Try: ./target/release/paracloud scale api=3; ./target/release/paracloud logs web"
echo "Take it down with: ./target/release/paracloud down -a shop"
