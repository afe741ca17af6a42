#!/usr/bin/env bash
# Runs the guest side's native tests with the normal (rustup) toolchain: the SDK's unit tests and
# doc examples (with and without the `json` feature), then every plugin's unit tests through the
# SDK's test harness (the plugins' rlib builds natively). Extra arguments go to `cargo test` of
# the plugins workspace (e.g. `./test.sh -p fraud-score`).
#
# Crates for the plugins come from Debian's vendored registry when it exists (offline), as in
# build.sh, so both scripts agree on one Cargo.lock; set OUTPOST_USE_CRATES_IO=1 to use
# crates.io instead (then delete a Cargo.lock written from the Debian registry first: Debian's
# syn carries a different checksum).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

log() { printf '\n==> %s\n' "$*" >&2; }

debian_registry=${DEBIAN_CARGO_REGISTRY:-/usr/share/cargo/registry}
registry_args=()
if [ -d "$debian_registry" ] && [ -z "${OUTPOST_USE_CRATES_IO:-}" ]; then
  registry_args=(--offline
    --config 'source.crates-io.replace-with="debian"'
    --config "source.debian.directory=\"$debian_registry\"")
fi

cd "$here/../sdk"
log "sdk: cargo test (no features)"
cargo test
log "sdk: cargo test --features json"
cargo test --features json

cd "$here"
log "plugins: cargo test"
cargo test ${registry_args[@]+"${registry_args[@]}"} "$@"
