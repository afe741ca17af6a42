#!/usr/bin/env bash
# Rebuilds the plugins and copies the bundled ones (every folder of runtime/bundled/) from
# plugins/dist/ into runtime/bundled/, with the toolchain.txt of the build, then checks them.
# Builds with Debian's rustc 1.63 (OUTPOST_WASM_TOOLCHAIN=debian), the toolchain tests/run.sh
# builds the guests with, so check-bundled.sh agrees with what is committed. Commit
# runtime/bundled/ afterwards; `cargo build -p outpost` re-embeds the modules.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

OUTPOST_WASM_TOOLCHAIN=debian "$here/build.sh"
for dir in "$root"/runtime/bundled/*/; do
  name=$(basename "$dir")
  cp "$here/dist/$name/plugin.wasm" "$here/dist/$name/plugin.toml" "$dir"
done
cp "$here/dist/toolchain.txt" "$root/runtime/bundled/toolchain.txt"
"$here/check-bundled.sh"
