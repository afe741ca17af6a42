#!/usr/bin/env bash
# Builds every plugin in this workspace to wasm and lays out plugins/dist/<name>/{plugin.wasm,
# plugin.toml}, ready for `outpost plugin sign` / `install`, and dist/toolchain.txt (what built
# them). The bytes do not depend on the checkout's folder, so check-bundled.sh can compare them
# with the committed runtime/bundled/: no absolute path reaches rustc (see Cargo.toml on the
# `sdk` link) and crates come from Debian's registry at a fixed path.
#
# Rust plugins (every folder with a Cargo.toml and a plugin.toml):
#   - a rustup toolchain with the wasm32-wasip1 target installed is used when present;
#   - otherwise Debian's packaged toolchain (/usr/bin/rustc 1.63, target wasm32-wasi).
#   OUTPOST_WASM_TOOLCHAIN=rustup|debian forces one. Crates come from Debian's vendored registry
#   (/usr/share/cargo/registry, offline, `--locked` to the committed Cargo.lock) when it exists,
#   else from crates.io; see test.sh.
# C plugins (every folder with *.c files and a plugin.toml): clang --target=wasm32-wasi with
#   wasi-libc (WASI_SYSROOT, default /usr as Debian's wasi-libc lays it out).
#
# Signing hook: if OUTPOST_BIN is set and OUTPOST_SIGNING_KEY names an existing key file, each
# bundle is signed with `$OUTPOST_BIN plugin sign --key $OUTPOST_SIGNING_KEY dist/<name>`.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cd "$here"

log() { printf '==> %s\n' "$*" >&2; }

# --- crate source: Debian's vendored registry when present (offline), else crates.io ----------
# shellcheck source=crate-source.sh
. "$here/crate-source.sh"

# --- Rust toolchain ---------------------------------------------------------------------------
choose_toolchain() {
  case "${OUTPOST_WASM_TOOLCHAIN:-}" in
    rustup|debian) echo "$OUTPOST_WASM_TOOLCHAIN"; return ;;
    "") ;;
    *) echo "OUTPOST_WASM_TOOLCHAIN must be rustup or debian" >&2; exit 2 ;;
  esac
  if command -v rustup >/dev/null 2>&1 \
     && rustup target list --installed 2>/dev/null | grep -qx 'wasm32-wasip1'; then
    echo rustup
  elif [ -x /usr/bin/rustc ] && [ -x /usr/bin/cargo ]; then
    echo debian
  else
    echo "no wasm toolchain: run 'rustup target add wasm32-wasip1' or install Debian's rustc," \
         "cargo and libstd-rust-dev-wasm32" >&2
    exit 1
  fi
}

# Bulk memory (one of the wasm features the host enables, see sdk/ABI.md) turns the guests'
# memcpy/memset into `memory.copy`/`memory.fill`, which the host runs natively.
wasm_features() {
  printf -- "--config\ntarget.%s.rustflags=[\"-C\",\"target-feature=+bulk-memory\"]\n" "$1"
}

toolchain=$(choose_toolchain)
if [ "$toolchain" = rustup ]; then
  target=wasm32-wasip1
  mapfile -t feature_args < <(wasm_features "$target")
  log "building Rust plugins with rustup's $(cargo --version) for $target"
  cargo build --release --target "$target" "${feature_args[@]}" ${registry_args[@]+"${registry_args[@]}"}
else
  target=wasm32-wasi
  mapfile -t feature_args < <(wasm_features "$target")
  log "building Rust plugins with Debian's $(/usr/bin/cargo --version) and $(/usr/bin/rustc --version) for $target"
  RUSTC=/usr/bin/rustc /usr/bin/cargo build --release --target "$target" "${feature_args[@]}" ${registry_args[@]+"${registry_args[@]}"}
fi
wasm_dir=${CARGO_TARGET_DIR:-$here/target}/$target/release

# --- lay out dist/ ----------------------------------------------------------------------------
rm -rf dist
mkdir -p dist

# What built the Rust plugins, for check-bundled.sh to name when the bytes differ from
# runtime/bundled/ (which keeps the toolchain.txt of the build it holds).
{
  if [ "$toolchain" = rustup ]; then
    rustc_version=$(rustc --version)
  else
    rustc_version=$(/usr/bin/rustc --version)
    if pkg=$(dpkg-query -W -f '${Version}' rustc 2>/dev/null); then
      rustc_version="$rustc_version (Debian package $pkg)"
    fi
  fi
  echo "$rustc_version, target $target"
  if [ ${#registry_args[@]} -gt 0 ]; then
    echo "crates: Debian's registry $debian_registry, Cargo.lock --locked"
  else
    echo "crates: crates.io"
  fi
} >dist/toolchain.txt

manifest_name() {
  sed -n 's/^name[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$1" | head -n 1
}

for manifest in */plugin.toml; do
  dir=$(dirname "$manifest")
  name=$(manifest_name "$manifest")
  if [ -z "$name" ]; then
    echo "$manifest has no name = \"...\" line" >&2
    exit 1
  fi
  out=dist/$name
  mkdir -p "$out"
  if [ -f "$dir/Cargo.toml" ]; then
    crate=$(sed -n 's/^name[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$dir/Cargo.toml" | head -n 1)
    cp "$wasm_dir/${crate//-/_}.wasm" "$out/plugin.wasm"
  elif compgen -G "$dir/*.c" >/dev/null; then
    cc=${CC_WASM:-clang}
    sysroot=${WASI_SYSROOT:-/usr}
    # Debian ships no wasm32 compiler-rt builtins by default; these plugins do not need them.
    builtins=$("$cc" --target=wasm32-wasi -print-libgcc-file-name 2>/dev/null || true)
    libs=()
    if [ -z "$builtins" ] || [ ! -f "$builtins" ]; then
      libs=(-nodefaultlibs -lc)
    fi
    log "building C plugin $name with $("$cc" --version | head -n 1)"
    "$cc" --target=wasm32-wasi --sysroot="$sysroot" -O2 -Wall -Wextra -Werror \
      -mexec-model=reactor ${libs[@]+"${libs[@]}"} -Wl,--strip-all \
      -o "$out/plugin.wasm" "$dir"/*.c
  else
    echo "$dir has a plugin.toml but neither a Cargo.toml nor *.c sources" >&2
    exit 1
  fi
  cp "$manifest" "$out/plugin.toml"

  # --- signing hook (the host side provides `outpost plugin sign`) ---------------------------
  if [ -n "${OUTPOST_BIN:-}" ] && [ -n "${OUTPOST_SIGNING_KEY:-}" ] && [ -f "$OUTPOST_SIGNING_KEY" ]; then
    log "signing $name"
    "$OUTPOST_BIN" plugin sign --key "$OUTPOST_SIGNING_KEY" "$out"
  fi
done

for wasm in dist/*/plugin.wasm; do
  printf '%8d  %s\n' "$(wc -c <"$wasm")" "$wasm"
done
