#!/usr/bin/env bash
# Runs Outpost's whole test suite on a fresh Debian machine with rustup stable.
#
# It installs what the tests need (system packages, test peers) when missing, then runs every
# workspace test. Caches live outside the repo so a second run rebuilds nothing:
#   OUTPOST_CACHE_DIR   default ~/.cache/outpost (tools built or installed for the tests)
#   CARGO_TARGET_DIR    default: cargo's own (target/ in the repo)
# Extra arguments are passed to `cargo test` (e.g. `./tests/run.sh log_crash::`: the integration
# tests are one binary, tests/suite.rs, whose test names start with their file's module). Every
# test binary runs even after a failure (`--no-fail-fast`), so one red test never hides the others.
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
# librdkafka (rdkafka-sys) is built from source and linked statically: make, a C/C++ compiler,
# pkg-config, and OpenSSL's headers (libssl3 itself is linked dynamically).
command -v make >/dev/null 2>&1 || need_pkgs+=(make)
command -v c++ >/dev/null 2>&1 || need_pkgs+=(g++)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
[ -f /usr/include/openssl/ssl.h ] || need_pkgs+=(libssl-dev)
command -v wasm-ld >/dev/null 2>&1 || need_pkgs+=(lld)
# MQTT tests: mosquitto is the external broker; openssl makes their TLS certificates.
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_pkgs+=(mosquitto)
command -v openssl >/dev/null 2>&1 || need_pkgs+=(openssl)
[ -d /usr/include/wasm32-wasi ] || need_pkgs+=(wasi-libc)
# Power-cut tests (tests/log_power_cut.rs): the FUSE file system tests/peers/lazyfs.py runs on
# libfuse 3 (through mfusepy, in the venv below); fuse3 brings fusermount3 and /etc/fuse.conf.
ldconfig -p 2>/dev/null | grep -c 'libfuse3\.so\.3' >/dev/null || need_pkgs+=(libfuse3-3)
command -v fusermount3 >/dev/null 2>&1 || need_pkgs+=(fuse3)
# Kafka listener tests: Debian's kcat (librdkafka 2.0.x) is one of the real clients; Node runs
# kafkajs, another.
command -v kcat >/dev/null 2>&1 || need_pkgs+=(kcat)
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing Debian packages: ${need_pkgs[*]}"
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

# --- guest plugins (own workspace, own target dir) ----------------------------------------
# Always with Debian's rustc 1.63: that proves the guests' MSRV, and it is the toolchain the
# committed runtime/bundled/ modules come from, which check-bundled.sh compares byte for byte.
log "plugins: build the wasm guests"
CARGO_TARGET_DIR="$OUTPOST_CACHE_DIR/plugins-target" OUTPOST_WASM_TOOLCHAIN=debian ./plugins/build.sh
log "plugins: runtime/bundled/ is what plugins/ builds"
./plugins/check-bundled.sh
log "sdk + plugins: cargo fmt --check, cargo clippy -D warnings"
CARGO_TARGET_DIR="$OUTPOST_CACHE_DIR/plugins-native-target" ./plugins/lint.sh
log "sdk + plugins: native unit tests"
CARGO_TARGET_DIR="$OUTPOST_CACHE_DIR/plugins-native-target" ./plugins/test.sh
# The runtime's tests load the freshly built guests from here and must not skip them.
export OUTPOST_GUEST_DIR="$here/plugins/dist"
export OUTPOST_REQUIRE_GUESTS=1

# --- python test peers (venv) ----------------------------------------------------------------
# The integration tests start real Python peers (tests/peers/*.py) with this venv's python.
# Created here by the Modbus tests (pymodbus; pyserial for RTU over a pseudo terminal); other
# peers add their packages to `py_pkgs`. pip only downloads what is missing.
venv="$OUTPOST_CACHE_DIR/venv"
py_pkgs=("pymodbus>=3.16,<4" "pyserial>=3.5" "confluent-kafka>=2.6,<3" "kafka-python>=2.0.2,<3" "paho-mqtt>=2.1,<3" "asyncua>=1.1,<2" "mfusepy>=3.1,<4")
if [ ! -x "$venv/bin/python" ]; then
  if ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
    log "installing Debian package: python3-venv"
    sudo_cmd=()
    [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
    "${sudo_cmd[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends python3-venv
  fi
  log "python peers: creating the venv $venv"
  python3 -m venv "$venv"
fi
log "python peers: pip install ${py_pkgs[*]}"
"$venv/bin/pip" install -q --disable-pip-version-check "${py_pkgs[@]}"
# Peer tests fail (rather than skip) when a peer cannot be started.
export OUTPOST_PYTHON="$venv/bin/python"
export OUTPOST_REQUIRE_PEERS=1

# --- Node peers: kafkajs, a third implementation of the Kafka protocol (npm) ------------------
node_dir="$OUTPOST_CACHE_DIR/node"
if [ ! -d "$node_dir/node_modules/kafkajs" ]; then
  log "node peers: npm install kafkajs"
  mkdir -p "$node_dir"
  npm install --silent --no-audit --no-fund --prefix "$node_dir" "kafkajs@2"
fi
export OUTPOST_NODE_MODULES="$node_dir/node_modules"

# --- Kafka broker for the forwarding tests (tansu) --------------------------------------------
# tansu (crates.io) is a Kafka-compatible broker; tests/forward_*.rs start it and check what
# arrives with confluent-kafka (in the venv above). Built once into the cache (12-20 min here),
# only when missing or built without both storage engines: SQLite (`libsql`) for the tests,
# memory (`dynostore`) for `outpost bench forward --tansu-storage memory://tansu/`.
tansu_root="$OUTPOST_CACHE_DIR/tansu"
if [ ! -x "$tansu_root/bin/tansu" ] || ! grep -q '"dynostore"' "$tansu_root/.crates2.json" 2>/dev/null; then
  log "kafka peer: cargo install tansu 0.6.0 (slow, cached in $tansu_root)"
  nice cargo install tansu --version 0.6.0 --locked --features libsql,dynostore --force \
    --root "$tansu_root" --target-dir "$OUTPOST_CACHE_DIR/tansu-target"
fi
export OUTPOST_TANSU="$tansu_root/bin/tansu"

# --- style gates -----------------------------------------------------------------------------
log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

# --- tests -----------------------------------------------------------------------------------
log "cargo test --workspace"
cargo test --workspace --locked --no-fail-fast "$@"
