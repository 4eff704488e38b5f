#!/usr/bin/env bash
# Install everything the lab and the tests need, from Debian's archive, PyPI and the Go module
# proxy only. Idempotent: packages already present are skipped by apt; built programs are
# cached in $CEDANA_CACHE (default /var/cache/kubectl-cedana), keyed by version, and reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

debian_major=$(cut -d. -f1 /etc/debian_version)
log "Debian $debian_major; cache in $CEDANA_CACHE"
mkdir -p "$CEDANA_CACHE"

# Source entries: CRIU 4.2 is in forky's source package only.
src_list=/etc/apt/sources.list.d/kubectl-cedana-src.sources
src_suites="bookworm trixie $CRIU_SUITE"
if ! grep -qs "^Suites: $src_suites\$" "$src_list"; then
  cat >"$src_list" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $src_suites
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_updated=0
fi

pkgs=(
  # toolchain: cgo (runc), the pause binary, CRIU
  build-essential pkg-config dpkg-dev xz-utils patch openssl ca-certificates curl jq libseccomp-dev
  # the node (containerd, runc, etcd and Kubernetes are built by hack/build-go.sh)
  containernetworking-plugins iptables iproute2 kmod
  busybox-static debootstrap apache2-utils docker-registry conntrack ethtool socat
  # CRIU build and runtime dependencies
  libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-protobuf
  libnl-3-dev libnet1-dev libcap-dev libbsd-dev libnftables-dev libgnutls28-dev libaio-dev
  uuid-dev libdrm-dev libnl-route-3-dev asciidoc-base
  # rootfs issue: containers/storage tools; benchmarks: podman
  podman buildah skopeo fuse-overlayfs uidmap
  # the CRI-O node (hack/lab-node3.sh): CRI-O is built by hack/build-go.sh, crun by
  # hack/build-crun.sh (its build dependencies here), conmon is Debian's
  conmon libyajl-dev gperf
  python3-venv python3-dev
)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ] || [ "${apt_updated:-1}" = 0 ]; then
  log "apt-get install ${missing[*]:-(refresh)}"
  apt-get update -qq
  if [ ${#missing[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

"$here/build-criu.sh"
"$here/build-crun.sh"
"$here/build-go.sh"
# The node's tools where node software and people look for them, ahead of any Debian package
# of the same name (podman pulls in Debian's runc): kubectl and helm matching the lab, runc and
# CRIU (runc runs "criu" from PATH), containerd and its shim, ctr.
for b in runc criu containerd containerd-shim-runc-v2; do ln -sfn "$LAB_BIN/$b" "/usr/local/sbin/$b"; done
for b in kubectl helm ctr checkpointctl; do ln -sfn "$LAB_BIN/$b" "/usr/local/bin/$b"; done
log "dependencies ready: $(kubectl version --client 2>/dev/null | head -1), runc $(runc --version | head -1 | cut -d' ' -f3), $(criu --version | head -1), containerd $(containerd --version | cut -d' ' -f3)"
