# Sourced by build.sh, test.sh and lint.sh: where the guest workspace's crates come from.
# Debian's vendored registry when it exists (offline; the committed Cargo.lock is resolved
# against it, see test.sh for why it does not work against crates.io, so that path is
# `--locked`), else crates.io. Sets `registry_args` for cargo; OUTPOST_USE_CRATES_IO=1 forces
# crates.io, DEBIAN_CARGO_REGISTRY moves the registry.
debian_registry=${DEBIAN_CARGO_REGISTRY:-/usr/share/cargo/registry}
registry_args=()
if [ -d "$debian_registry" ] && [ -z "${OUTPOST_USE_CRATES_IO:-}" ]; then
  registry_args=(--offline --locked
    --config 'source.crates-io.replace-with="debian"'
    --config "source.debian.directory=\"$debian_registry\"")
fi
