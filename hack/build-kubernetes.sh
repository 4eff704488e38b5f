#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler and kubelet once from Debian
# bookworm's `kubernetes` source package (upstream v1.20.2 with vendor/) and cache them in
# $CEDANA_CACHE/kubernetes-$KUBE_SRC_VERSION/bin.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

KUBE_SRC_VERSION=${KUBE_SRC_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}
dest="$CEDANA_CACHE/kubernetes-$KUBE_SRC_VERSION"
bins=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
ok=1
for b in "${bins[@]}"; do [ -x "$dest/bin/$b" ] || ok=0; done
if [ "$ok" = 1 ]; then log "kubernetes binaries cached in $dest/bin"; exit 0; fi

debian_major=$(cut -d. -f1 /etc/debian_version)
if [ "$debian_major" -ge 13 ]; then
  export PATH=/usr/lib/go-1.24/bin:$PATH GOTOOLCHAIN=local
fi
command -v go >/dev/null || die "go not installed"
log "building kubernetes server binaries from Debian source $KUBE_SRC_VERSION with $(go version)"
srcdir="$CEDANA_CACHE/src"
mkdir -p "$srcdir"
orig=$(ls "$srcdir"/kubernetes_*.orig.tar.gz 2>/dev/null | head -1 || true)
if [ -z "$orig" ]; then
  (cd "$srcdir" && apt-get source --download-only "kubernetes=$KUBE_SRC_VERSION" >/dev/null 2>&1 || true)
  orig=$(ls "$srcdir"/kubernetes_*.orig.tar.gz 2>/dev/null | head -1 || true)
  [ -n "$orig" ] || die "kubernetes source $KUBE_SRC_VERSION not fetched (is the bookworm deb-src entry there?)"
fi
work="$CEDANA_CACHE/kubernetes-build"
rm -rf "$work" && mkdir -p "$work"
tar -C "$work" -xzf "$orig"
tree=$(find "$work" -maxdepth 1 -mindepth 1 -type d | head -1)
[ -f "$tree/Makefile" ] || die "no Makefile in $tree"
export GOCACHE="$CEDANA_CACHE/go-build-cache" GOFLAGS=-mod=vendor
# Debian's tree lacks .git: pin the version the binaries report.
export KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean KUBE_GIT_COMMIT=faecb196815e248d3ecfb03c680a4507229c2a56
export KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
make -C "$tree" WHAT="cmd/kube-apiserver cmd/kubelet cmd/kube-controller-manager cmd/kube-scheduler" \
  >"$work.log" 2>&1 || { tail -40 "$work.log"; die "kubernetes build failed (log: $work.log)"; }
mkdir -p "$dest.tmp/bin"
for b in "${bins[@]}"; do
  install -m 0755 "$tree/_output/bin/$b" "$dest.tmp/bin/$b" 2>/dev/null \
    || install -m 0755 "$(find "$tree/_output" -type f -name "$b" | head -1)" "$dest.tmp/bin/$b"
done
# the static pause binary for the sandbox image comes from the same tree
gcc -static -O2 -o "$dest.tmp/bin/pause" "$tree/build/pause/linux/pause.c"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
rm -rf "$work"
log "kubernetes binaries in $dest/bin"
