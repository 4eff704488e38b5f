#!/usr/bin/env bash
# CRIU $CRIU_VERSION, built once from Debian's source tarball (suite $CRIU_SUITE; neither
# bookworm nor trixie ships 4.2) and kept in $CEDANA_CACHE/criu-$CRIU_VERSION/criu. 4.2 reads
# SO_PASSCRED/SO_PASSSEC only on unix and netlink sockets, which recent kernels (seen on 6.18)
# require: the patch we carried for 4.1.1 is upstream. Patches in hack/patches/criu-*.patch,
# if any, are applied and change the cache key.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

patches=()
for p in "$here"/patches/criu-*.patch; do [ -f "$p" ] && patches+=("$p"); done
key=$CRIU_VERSION
[ ${#patches[@]} -eq 0 ] || key+="-$(cat "${patches[@]}" | sha256sum | cut -c1-8)"
dest="$CEDANA_CACHE/criu-$key"
if [ -x "$dest/criu" ]; then
  log "criu $CRIU_VERSION cached in $dest"
else
  log "building criu $CRIU_VERSION from Debian $CRIU_SUITE's source"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  upstream_source criu "$CRIU_VERSION" "$CRIU_SUITE" "$work"
  src="$work/criu-$CRIU_VERSION"
  for p in "${patches[@]}"; do patch -d "$src" -p1 -s <"$p"; done
  make -C "$src" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; die "criu build failed"; }
  mkdir -p "$dest.tmp"
  install -m 0755 "$src/criu/criu" "$dest.tmp/criu"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
mkdir -p "$LAB_BIN"
ln -sfn "$dest/criu" "$LAB_BIN/criu"
"$LAB_BIN/criu" --version | head -1 >&2
