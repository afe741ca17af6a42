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

# --- system packages ---------------------------------------------------------------------
# Debian's Rust 1.63 builds the wasm guest plugins (rustup cannot download targets here);
# clang + wasi-libc build the C plugin.
need_pkgs=()
[ -x /usr/bin/rustc ] || need_pkgs+=(rustc)
[ -x /usr/bin/cargo ] || need_pkgs+=(cargo)
[ -d /usr/lib/rustlib/wasm32-wasi ] || need_pkgs+=(libstd-rust-dev-wasm32)
[ -d /usr/share/cargo/registry ] && ls /usr/share/cargo/registry | grep -q '^serde_json-' \
  || need_pkgs+=(librust-serde-json-dev librust-serde-derive-dev)
command -v clang >/dev/null 2>&1 || need_pkgs+=(clang)
command -v wasm-ld >/dev/null 2>&1 || need_pkgs+=(lld)
[ -d /usr/include/wasm32-wasi ] || need_pkgs+=(wasi-libc)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

# --- guest plugins (own workspace, own target dir) ----------------------------------------
log "plugins: build the wasm guests"
CARGO_TARGET_DIR="$OUTPOST_CACHE_DIR/plugins-target" ./plugins/build.sh
log "sdk + plugins: native unit tests"
CARGO_TARGET_DIR="$OUTPOST_CACHE_DIR/plugins-native-target" ./plugins/test.sh
# The runtime's tests load the freshly built guests from here and must not skip them.
export OUTPOST_GUEST_DIR="$here/plugins/dist"
export OUTPOST_REQUIRE_GUESTS=1

# --- style gates -----------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- tests -----------------------------------------------------------------------------------
log "cargo test --workspace"
cargo test --workspace --locked "$@"
