#!/usr/bin/env bash
# CRIU 4.1.1, built once from Debian trixie's source tarball with our patches (hack/patches/:
# recent kernels (seen on 6.18) refuse SO_PASSCRED/SO_PASSSEC reads on TCP sockets, which made every dump of a
# process with a TCP socket fail), kept in $CEDANA_CACHE/criu-$CRIU_VERSION-<patches>/criu.
# Debian 13's packaged 4.1.1 lacks the patch, so both Debian versions build it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

patch_key=$(cat "$here"/patches/criu-*.patch | sha256sum | cut -c1-8)
dest="$CEDANA_CACHE/criu-$CRIU_VERSION-$patch_key"
if [ -x "$dest/criu" ]; then
  log "criu $CRIU_VERSION cached in $dest"
else
  log "building criu $CRIU_VERSION from Debian trixie's source"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && apt-get source --download-only "criu/trixie" >/dev/null 2>&1 || true)
  orig=$(ls "$work"/criu_"$CRIU_VERSION".orig.tar.* 2>/dev/null | head -1)
  [ -n "$orig" ] || die "criu_$CRIU_VERSION.orig.tar.* not fetched (is the trixie deb-src entry there?)"
  tar -C "$work" -xf "$orig"
  src=$(find "$work" -maxdepth 1 -type d -name 'criu-*' | head -1)
  for p in "$here"/patches/criu-*.patch; do patch -d "$src" -p1 -s <"$p"; done
  make -C "$src" -j"$(nproc)" criu >"$work/build.log" 2>&1 || { tail -30 "$work/build.log"; die "criu build failed"; }
  mkdir -p "$dest.tmp"
  install -m 0755 "$src/criu/criu" "$dest.tmp/criu"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
fi
# Put it where runc looks for it (runc runs "criu" from PATH).
ln -sf "$dest/criu" /usr/local/sbin/criu
criu --version | head -1 >&2
