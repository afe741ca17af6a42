#!/usr/bin/env bash
# Measures the edit-build-test loop of this checkout: a one-line code change in
# runtime/src/log/mod.rs (an error message), then
#   build: `cargo test -p outpost --no-run` (compile and link every test target)
#   green: `cargo test -p outpost -- log` (build and run the log tests)
# each timed REPEATS times (default 3), the file restored after every change.
#   bash tests/loop-time.sh [REPEATS]
# To compare with another commit, run the same script in a checkout of it with its own
# CARGO_TARGET_DIR (two checkouts must not share one: cargo names their artifacts alike).
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-3}
file=runtime/src/log/mod.rs
from='record too large: {size} bytes, the limit is'
to='record too large: {size} bytes; the limit is'
grep -q "$from" "$file" || { echo "loop-time: the probe line is not in $file" >&2; exit 2; }
export OUTPOST_GUEST_DIR=${OUTPOST_GUEST_DIR:-$PWD/plugins/dist}
restore() { git checkout -q -- "$file"; }
trap restore EXIT
cargo test -p outpost --no-run >/dev/null 2>&1
time_it() { # label, command...
  local label=$1; shift
  sed -i "s/$from/$to/" "$file"
  local s e
  s=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  e=$(date +%s.%N)
  restore
  cargo test -p outpost --no-run >/dev/null 2>&1
  printf '%s %.1f s (load %s)\n' "$label" "$(echo "$e - $s" | bc)" "$(cut -d' ' -f1 /proc/loadavg)"
}
for _ in $(seq "$repeats"); do
  time_it build cargo test -p outpost --no-run
  time_it green cargo test -p outpost -- log
done
