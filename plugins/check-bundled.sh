#!/usr/bin/env bash
# Fails when a bundled plugin the runtime embeds (runtime/bundled/<name>/plugin.wasm and
# plugin.toml) is not byte for byte what plugins/build.sh just built into plugins/dist/<name>/,
# naming each plugin that differs and the command that refreshes them. Run it after build.sh
# (tests/run.sh does). The bundled modules are built with Debian's rustc 1.63 and Debian's
# crate registry, as tests/run.sh builds them; build.sh remaps source paths, so a clone in any
# folder produces the same bytes.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
dist=$here/dist
bundled=$root/runtime/bundled
refresh="plugins/refresh-bundled.sh"

if [ ! -d "$dist" ]; then
  echo "check-bundled: $dist does not exist: run plugins/build.sh first" >&2
  exit 1
fi

checked=0
differ=()
for dir in "$bundled"/*/; do
  name=$(basename "$dir")
  for file in plugin.wasm plugin.toml; do
    if [ ! -f "$dist/$name/$file" ]; then
      echo "check-bundled: $name: plugins/build.sh built no $file (is plugins/$name gone?)" >&2
      differ+=("$name")
    elif ! cmp -s "$dist/$name/$file" "$dir/$file"; then
      echo "check-bundled: $name: runtime/bundled/$name/$file differs from plugins/dist/$name/$file" \
           "($(wc -c <"$dir/$file") bytes committed, $(wc -c <"$dist/$name/$file") built)" >&2
      differ+=("$name")
    fi
  done
  checked=$((checked + 1))
done

if [ "$checked" -eq 0 ]; then
  echo "check-bundled: no bundled plugins under $bundled" >&2
  exit 1
fi

if [ ${#differ[@]} -gt 0 ]; then
  if ! cmp -s "$dist/toolchain.txt" "$bundled/toolchain.txt" 2>/dev/null; then
    echo "check-bundled: note: the committed modules were built with:" >&2
    sed 's/^/    /' "$bundled/toolchain.txt" >&2 2>/dev/null || echo "    (no runtime/bundled/toolchain.txt)" >&2
    echo "  this build used:" >&2
    sed 's/^/    /' "$dist/toolchain.txt" >&2 2>/dev/null || echo "    (no plugins/dist/toolchain.txt)" >&2
  fi
  echo "check-bundled: runtime/bundled/ differs from what plugins/ builds for: $(printf '%s\n' "${differ[@]}" | sort -u | paste -sd ' ' -)" >&2
  echo "check-bundled: refresh them with '$refresh' and commit runtime/bundled/" >&2
  exit 1
fi
echo "check-bundled: runtime/bundled/ matches plugins/dist/ ($checked plugins)" >&2
