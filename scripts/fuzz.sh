#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and prints one line of figures per target:
# inputs run, inputs per second, corpus size, coverage, and whether it found a crash. A crash
# stops at once, with libFuzzer's report above the figures and the input under fuzz/artifacts/.
#   bash scripts/fuzz.sh 3600            # an hour each
#   bash scripts/fuzz.sh 60 manifest     # one target
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-60}
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^paracloud-fuzz$')
fi
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target"
  log=$(mktemp)
  if ! cargo fuzz run "$target" "corpus/$target" seeds -- \
      -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "$target: CRASH (see above and fuzz/artifacts/$target)"
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  corpus=$(find "corpus/$target" -type f | wc -l)
  echo "$target: ${runs} inputs in ${seconds} s (${rate}/s), ${cov}, corpus ${corpus}, no crash"
  rm -f "$log"
done
