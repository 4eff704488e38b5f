#!/usr/bin/env bash
# Build crun $CRUN_VERSION from Debian $CRUN_SUITE's source, with CRIU support (checkpoint and
# restore), and libcriu from the same CRIU source as hack/build-criu.sh; cache both in
# $CEDANA_CACHE/crun-KEY. Debian 12's crun (1.8.1) refuses the OCI runtime spec 1.2 that CRI-O
# 1.34 writes ("unknown version specified") and has no CRIU support; Debian 13's is built
# against a newer C library than Debian 12's. crun loads libcriu.so.2 when it checkpoints
# (dlopen): the binary's run path names the cached copy.
# $LAB_BIN/crun links to the build. Prints nothing but progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

# lab patches to crun (hack/patches/crun-*.patch), each says why
patches=()
for p in "$here"/patches/crun-*.patch; do [ -f "$p" ] && patches+=("$p"); done
key=$( (echo "$CRUN_VERSION $CRIU_VERSION"; cat "$0" ${patches[@]+"${patches[@]}"}) | sha256sum | cut -c1-12)
dest="$CEDANA_CACHE/crun-$CRUN_VERSION-$key"
if [ -x "$dest/crun" ]; then
  log "crun $CRUN_VERSION cached in $dest"
else
  log "building crun $CRUN_VERSION (Debian $CRUN_SUITE's source) with libcriu $CRIU_VERSION"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  upstream_source criu "$CRIU_VERSION" "$CRIU_SUITE" "$work"
  upstream_source crun "$CRUN_VERSION" "$CRUN_SUITE" "$work"
  criu_src="$work/criu-$CRIU_VERSION" crun_src="$work/crun-$CRUN_VERSION"
  for p in ${patches[@]+"${patches[@]}"}; do patch -d "$crun_src" -p1 -s <"$p"; done
  rm -rf "$dest.tmp" && mkdir -p "$dest.tmp/lib" "$work/include/criu" "$work/pkgconfig"
  # libcriu: the C library only (its install target also installs Python modules)
  make -C "$criu_src" -j"$(nproc)" lib >"$work/libcriu.log" 2>&1 || { tail -30 "$work/libcriu.log"; die "libcriu build failed"; }
  install -m 0755 "$criu_src/lib/c/libcriu.so" "$dest.tmp/lib/libcriu.so.2"
  cp "$criu_src/lib/c/criu.h" "$criu_src/criu/include/version.h" "$criu_src/images/rpc.pb-c.h" \
    "$work/include/criu/"
  ln -s libcriu.so.2 "$dest.tmp/lib/libcriu.so"
  cat >"$work/pkgconfig/criu.pc" <<PC
Name: CRIU
Description: RPC library for userspace checkpoint and restore
Version: $CRIU_VERSION
Libs: -L$dest.tmp/lib -lcriu
Cflags: -I$work/include/criu
PC
  # the release tarball's version header (made from git in a checkout)
  printf '#ifndef GIT_VERSION\n# define GIT_VERSION "debian-%s"\n#endif\n' "$CRUN_VERSION" \
    >"$crun_src/.tarball-git-version.h"
  (cd "$crun_src" && PKG_CONFIG_PATH="$work/pkgconfig" ./configure --disable-systemd \
      CPPFLAGS="-I$work/include" LDFLAGS="-Wl,-rpath,$dest/lib" >"$work/configure.log" 2>&1 \
    && make git-version.h >"$work/make.log" 2>&1 && make -j"$(nproc)" crun >>"$work/make.log" 2>&1) \
    || { tail -n 30 "$work/configure.log" "$work/make.log"; die "crun build failed"; }
  "$crun_src/crun" --version | grep -q '+CRIU' || die "crun was built without CRIU support"
  install -m 0755 "$crun_src/crun" "$dest.tmp/crun"
  rm -rf "$dest" && mv "$dest.tmp" "$dest"
  find "$CEDANA_CACHE" -maxdepth 1 -name 'crun-*' ! -name "crun-$CRUN_VERSION-$key" -exec rm -rf {} + 2>/dev/null || true
fi
mkdir -p "$LAB_BIN"
ln -sfn "$dest/crun" "$LAB_BIN/crun"
"$LAB_BIN/crun" --version | head -1 >&2
