#!/usr/bin/env bash
# Build the lab's Go programs once from the Go module proxy and cache them in $CEDANA_CACHE:
#   kubernetes  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kubectl
#               (k8s.io/kubernetes, through thin main packages of ours; version ldflags set)
#   etcd        etcd (go.etcd.io/etcd/server/v3's etcdmain)
#   containerd  containerd, containerd-shim-runc-v2, ctr
#   runc        runc (with seccomp, like the release builds)
#   helm        helm
#   checkpointctl  checkpointctl (reads checkpoint archives as CRI-O and kubelet write them)
#   crio        crio and pinns (github.com/cri-o/cri-o; pinns is C, built from the module's source)
# Each is a module of ours under hack/gobuild/NAME whose go.mod pins the upstream version and
# whose go.sum pins every dependency. The binaries go to $CEDANA_CACHE/go-bin/NAME-KEY (KEY: a
# hash of that module and this script), and $LAB_BIN holds a link to each current binary.
# Usage: build-go.sh [NAME...] (default: all). Prints nothing but progress on stderr.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

command -v go >/dev/null || die "go is not installed (Go >= 1.26.6 is needed; these machines have it in /usr/local/go)"
export GOTOOLCHAIN=local GOFLAGS=-mod=readonly
export GOMODCACHE="$CEDANA_CACHE/go/mod" GOCACHE="$CEDANA_CACHE/go/build"
mkdir -p "$GOMODCACHE" "$GOCACHE" "$CEDANA_CACHE/go-bin" "$LAB_BIN"

mod_version() {  # mod_version DIR MODULE: the version DIR's go.mod pins
  (cd "$1" && go list -m -f '{{if .Replace}}{{.Replace.Version}}{{else}}{{.Version}}{{end}}' "$2")
}

build() {  # build NAME: build hack/gobuild/NAME unless its binaries are cached
  local name=$1 dir="$here/gobuild/$1" key dest v ld pkgs tags cgo=0
  key=$( (cat "$0"; find "$dir" -type f | sort | xargs cat) | sha256sum | cut -c1-12)
  dest="$CEDANA_CACHE/go-bin/$name-$key"
  if [ ! -f "$dest/.complete" ]; then
    log "building $name ($(go version | cut -d' ' -f3)); cached in $dest"
    case $name in
      kubernetes)
        v=$(mod_version "$dir" k8s.io/kubernetes)
        local minor date
        minor=${v#v1.}; minor=${minor%%.*}
        date=$(curl -sf "$(go env GOPROXY | cut -d, -f1)/k8s.io/kubernetes/@v/$v.info" | jq -r .Time || true)
        ld=""
        for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
          ld+=" -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.gitCommit="
          [ -z "$date" ] || ld+=" -X $p.buildDate=$date"
        done
        pkgs=(./cmd/...) ;;
      etcd)
        ld="" pkgs=(.) ;;
      containerd)
        v=$(mod_version "$dir" github.com/containerd/containerd/v2)
        ld="-X github.com/containerd/containerd/v2/version.Version=$v"
        # no btrfs/devmapper/zfs snapshotters: their C headers are not needed, nor are they
        tags="no_btrfs no_devmapper no_zfs"
        pkgs=(github.com/containerd/containerd/v2/cmd/{containerd,containerd-shim-runc-v2,ctr}) ;;
      runc)
        v=$(mod_version "$dir" github.com/opencontainers/runc)
        ld="-X main.version=${v#v}" tags="seccomp" cgo=1
        pkgs=(github.com/opencontainers/runc) ;;
      helm)
        v=$(mod_version "$dir" helm.sh/helm/v3)
        ld="-X helm.sh/helm/v3/internal/version.version=$v -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
        pkgs=(helm.sh/helm/v3/cmd/helm) ;;
      checkpointctl)
        # checkpointctl 1.7 needs go-criu v8.5.0, which the module proxy does not serve
        ld="" pkgs=(github.com/checkpoint-restore/checkpointctl) ;;
      crio)
        # no gpgme (openpgp in Go instead), no btrfs/devicemapper/ostree: no C libraries beyond
        # libseccomp, which runc's build needs as well. (Its go.sum was made with GOSUMDB=off:
        # the checksum database does not know some of its pseudo-versions; the proxy serves them.)
        ld=""  # its version is a constant of the module
        tags="containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper containers_image_ostree_stub seccomp"
        cgo=1 pkgs=(github.com/cri-o/cri-o/cmd/crio) ;;
      *) die "unknown Go build $name" ;;
    esac
    rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
    (cd "$dir" && CGO_ENABLED=$cgo go build -trimpath -tags "${tags:-}" -ldflags "-s -w $ld" \
      -o "$dest.tmp/" "${pkgs[@]}") >"$dest.log" 2>&1 || { tail -30 "$dest.log"; die "building $name failed (log: $dest.log)"; }
    if [ "$name" = kubernetes ]; then
      # the sandbox ("pause") image's program, from the same module
      gcc -static -O2 -o "$dest.tmp/pause" \
        "$(cd "$dir" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c"
    fi
    if [ "$name" = crio ]; then
      # pinns, the helper CRI-O pins a pod's namespaces with, as CRI-O's Makefile builds it
      gcc -std=c99 -Os -Wall -Werror -Wextra -static -o "$dest.tmp/pinns" \
        "$(cd "$dir" && go list -m -f '{{.Dir}}' github.com/cri-o/cri-o)"/pinns/src/*.c
    fi
    touch "$dest.tmp/.complete"
    rm -rf "$dest" && mv "$dest.tmp" "$dest"
    # older builds of the same program are of no further use
    find "$CEDANA_CACHE/go-bin" -maxdepth 1 -name "$name-*" ! -name "$name-$key" ! -name "*.log" \
      -exec rm -rf {} + 2>/dev/null || true
  fi
  local bin
  for bin in "$dest"/*; do ln -sfn "$bin" "$LAB_BIN/$(basename "$bin")"; done
}

names=("$@")
[ ${#names[@]} -gt 0 ] || names=(kubernetes etcd containerd runc helm checkpointctl crio)
for n in "${names[@]}"; do build "$n"; done
