#!/usr/bin/env bash
# The fault-injection campaign at length: ROUNDS (default 200) random changes (scale, up with a
# changed spec, restart, migrate, a capsule run), each cut by a SIGKILL of the daemon or of the
# data plane, with the invariants checked after each (crates/paracloud-cli/tests/campaign.rs,
# which CI runs with a few rounds). Prints a line per round and the summary; keeps the daemon's
# and the data plane's logs and the output in target/campaign/ (PARACLOUD_CAMPAIGN_LOGS).
#
#   bash scripts/campaign.sh [--release] [ROUNDS]
#   PARACLOUD_CAMPAIGN_SEED=N bash scripts/campaign.sh 200    # replays the campaign of seed N
#
# Needs root, as every test with real instances does.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=()
if [ "${1:-}" = "--release" ]; then
    profile=(--release)
    shift
fi
export PARACLOUD_CAMPAIGN_ROUNDS="${1:-200}"
logs="${PARACLOUD_CAMPAIGN_LOGS:-${CARGO_TARGET_DIR:-target}/campaign}"
mkdir -p "$logs"
export PARACLOUD_CAMPAIGN_LOGS="$logs"
start=$(date +%s)
status=0
cargo test "${profile[@]}" --locked -p paracloud-cli --test campaign -- --nocapture 2>&1 |
    tee "$logs/campaign.txt" || status=$?
echo
grep '^campaign summary' "$logs/campaign.txt" || echo "no summary: the campaign stopped early (see $logs/campaign.txt)"
echo "wall time $(( $(date +%s) - start )) s; logs in $logs"
exit "$status"
