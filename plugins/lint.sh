#!/usr/bin/env bash
# Style gates for the guest side, run natively with the normal (rustup) toolchain as
# tests/run.sh does for the root workspace: `cargo fmt --check` and
# `cargo clippy --all-targets -- -D warnings` for the SDK (without features and with all of them,
# which today is `json`) and for every crate of the plugins workspace.
#
# The lints are the root's (`[workspace.lints]` in plugins/Cargo.toml, spelled out in
# sdk/Cargo.toml) plus clippy::unwrap_used/expect_used outside tests. clippy.toml in sdk/ and
# plugins/ sets msrv = "1.63", so clippy never suggests what Debian's rustc 1.63 (build.sh) lacks.
# Not covered: sdk/src/guest.rs is compiled only for wasm32, and rustup has no wasm32 target
# here; Debian's rustc checks it (with the rustc lints the crate sets itself) in build.sh.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

log() { printf '\n==> %s\n' "$*" >&2; }

# shellcheck source=crate-source.sh
. "$here/crate-source.sh"

cd "$here/../sdk"
log "sdk: cargo fmt --check"
cargo fmt --check
log "sdk: cargo clippy --all-targets -- -D warnings (no features)"
cargo clippy --all-targets -- -D warnings
log "sdk: cargo clippy --all-targets --all-features -- -D warnings"
cargo clippy --all-targets --all-features -- -D warnings

cd "$here"
log "plugins: cargo fmt --all --check"
cargo fmt --all --check
log "plugins: cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy ${registry_args[@]+"${registry_args[@]}"} --workspace --all-targets -- -D warnings
