#!/usr/bin/env bash
# Runs the guest side's native tests with the normal (rustup) toolchain: the SDK's unit tests and
# doc examples (with and without the `json` feature), then every plugin's unit tests through the
# SDK's test harness (the plugins' rlib builds natively). Extra arguments go to `cargo test` of
# the plugins workspace (e.g. `./test.sh -p fraud-score`).
#
# Crates for the plugins come from Debian's vendored registry when it exists (offline), as in
# build.sh, so both scripts build the versions the committed Cargo.lock names (`--locked`).
# That lock is resolved against Debian's registry, where syn's .cargo-checksum.json records
# "Could not get crate checksum" instead of crates.io's checksum; cargo against crates.io then
# refuses the lock ("unable to verify that `syn v1.0.107` is the same as when the lockfile was
# generated"). So OUTPOST_USE_CRATES_IO=1 (crates.io instead of Debian's registry, e.g. on a
# machine without it) needs a lock of its own: `rm plugins/Cargo.lock` first, and do not commit
# the one cargo writes then (`git checkout plugins/Cargo.lock` restores the committed one).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)

if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi

log() { printf '\n==> %s\n' "$*" >&2; }

# shellcheck source=crate-source.sh
. "$here/crate-source.sh"

cd "$here/../sdk"
log "sdk: cargo test (no features)"
cargo test
log "sdk: cargo test --features json"
cargo test --features json

cd "$here"
log "plugins: cargo test"
cargo test ${registry_args[@]+"${registry_args[@]}"} "$@"
