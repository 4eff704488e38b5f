#!/usr/bin/env bash
# CRIU >= 4.1: Debian 13 ships it; on Debian 12 build it once from trixie's source tarball
# and keep the binary in $CEDANA_CACHE/criu-$CRIU_VERSION/criu.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

dest="$CEDANA_CACHE/criu-$CRIU_VERSION"
if [ -x "$dest/criu" ]; then
  log "criu $CRIU_VERSION cached in $dest"
elif [ -x /usr/sbin/criu ] && /usr/sbin/criu --version | grep -q "Version: 4\.[1-9]"; then
  mkdir -p "$dest" && ln -sf /usr/sbin/criu "$dest/criu"
  log "using Debian's criu: $(/usr/sbin/criu --version | head -1)"
else
  log "building criu $CRIU_VERSION from Debian trixie's source"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get source --download-only "criu/trixie" >/dev/null 2>&1 || true)
  orig=$(ls "$work"/criu_"$CRIU_VERSION".orig.tar.* 2>/dev/null | head -1)
  [ -n "$orig" ] || die "criu_$CRIU_VERSION.orig.tar.* not fetched (is the trixie deb-src entry there?)"
  tar -C "$work" -xf "$orig"
  src=$(find "$work" -maxdepth 1 -type d -name 'criu-*' | head -1)
  make -C "$src" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; die "criu build failed"; }
  mkdir -p "$dest.tmp"
  install -m 0755 "$src/criu/criu" "$dest.tmp/criu"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
# Put it where runc looks for it (runc runs "criu" from PATH).
ln -sf "$dest/criu" /usr/local/sbin/criu
criu --version | head -1 >&2
