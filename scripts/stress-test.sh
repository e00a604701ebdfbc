#!/usr/bin/env bash
# Runs the multi-process tests (real `minos serve` processes, real signals)
# while two CPU hogs keep both cores busy, to check that tests which are not
# about timing hold on a starved machine.
#
#   scripts/stress-test.sh [runs] [extra cargo test args...]
#
# e.g. scripts/stress-test.sh          one run
#      scripts/stress-test.sh 3        three runs in a row; stops at the first failure
#
# Installs stress-ng (Debian package) when it is missing. The test binaries
# are built before the hogs start, so only the tests run under load.
# Prints the pass count and the load average of every run.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs="${1:-1}"
[[ "$runs" =~ ^[0-9]+$ && "$runs" -ge 1 ]] || {
  echo "stress-test.sh: runs must be a positive number, got '$runs'" >&2
  exit 2
}
shift || true
hogs="${MINOS_STRESS_HOGS:-2}"
tests=(--test process_failover --test process_table --test process_membership --test seed_game_session --test security --test peer_props --test rolling_restart --test history --test readme --test openapi --test status_page --test external_handler --test parking --test placement --test handoff)

if ! command -v stress-ng >/dev/null 2>&1; then
  echo "--- installing stress-ng"
  if [[ "$(id -u)" == 0 ]]; then
    apt-get update -qq && apt-get install -y -qq stress-ng >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq stress-ng >/dev/null
  fi
fi

cd "$root"
echo "--- building the test binaries (no load yet)"
cargo test "${tests[@]}" --no-run "$@"

hog_pid=""
stop_hogs() {
  if [[ -n "$hog_pid" ]]; then
    kill "$hog_pid" 2>/dev/null || true
    wait "$hog_pid" 2>/dev/null || true
    hog_pid=""
  fi
}
trap stop_hogs EXIT

passed=0
for run in $(seq 1 "$runs"); do
  echo "--- run $run of $runs: stress-ng --cpu $hogs, then the multi-process tests"
  # Bounded: the hogs end on their own after an hour even if this script is killed.
  stress-ng --cpu "$hogs" --timeout 3600s --quiet &
  hog_pid=$!
  start=$(date +%s)
  status=0
  cargo test --no-fail-fast "${tests[@]}" "$@" || status=$?
  load="$(cut -d' ' -f1-3 /proc/loadavg)"
  stop_hogs
  took=$(( $(date +%s) - start ))
  if [[ "$status" == 0 ]]; then
    passed=$((passed + 1))
    echo "--- run $run passed in ${took}s (load average $load)"
  else
    echo "--- run $run FAILED in ${took}s (load average $load)"
    echo "stress-test: $passed of $run runs passed" >&2
    exit 1
  fi
done
echo "stress-test: $passed of $runs runs passed"
