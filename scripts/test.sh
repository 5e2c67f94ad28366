#!/usr/bin/env bash
# The test command: every test of the workspace, including those that need root and a real kernel
# (namespaces, cgroups, bridges). It first installs what the tests need (scripts/deps.sh: skipped
# where already there), so it passes as the first command run on a fresh machine. Each test takes
# its own state root, cgroup parent, subnet and ports, so they run in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cargo build --workspace --locked --bins
cargo nextest run --workspace --locked --no-fail-fast "$@"
