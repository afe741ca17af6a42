#!/usr/bin/env bash
# Long power-cut runs: `outpost run` on the power-cut FUSE file system (tests/peers/lazyfs.py),
# loaded over HTTP and MQTT QoS 1, killed with SIGKILL and cut from power N times; after each
# cut every acknowledged record must be there and the plugin's state must match its offset.
# The harness is the suite's test `log_power_cut::acknowledged_records_survive_hundreds_of_power_cuts`
# (CI runs it with its default of 6 cycles); this script runs it with more.
#
#   bash tests/power-cut.sh --cycles 300 [--seed S]
#
# It prints the per-cycle lines and ends with the `POWER-CUT RESULT:` line (cycles, acknowledged
# HTTP and MQTT records, losses). Needs what tests/run.sh installs (libfuse 3, the venv with
# mfusepy and paho-mqtt) and root (or fusermount3) to mount. Honours CARGO_TARGET_DIR,
# OUTPOST_CACHE_DIR (default ~/.cache/outpost) and OUTPOST_PYTHON.
set -euo pipefail

cycles=200
seed=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cycles) cycles=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$cycles" in ''|*[!0-9]*) echo "--cycles needs a number" >&2; exit 2 ;; esac

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
cache=${OUTPOST_CACHE_DIR:-$HOME/.cache/outpost}
export OUTPOST_PYTHON=${OUTPOST_PYTHON:-$cache/venv/bin/python}
export OUTPOST_REQUIRE_PEERS=1
export OUTPOST_POWER_CUT_CYCLES=$cycles
[ -n "$seed" ] && export OUTPOST_POWER_CUT_SEED=$seed
[ -x "$OUTPOST_PYTHON" ] || { echo "no venv at $OUTPOST_PYTHON: run tests/run.sh once" >&2; exit 1; }

nice cargo test -p outpost --locked --test suite \
  log_power_cut::acknowledged_records_survive_hundreds_of_power_cuts -- --exact --nocapture
