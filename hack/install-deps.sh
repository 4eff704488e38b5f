#!/usr/bin/env bash
# Install everything the lab and the tests need, from Debian's archive and PyPI only.
# Idempotent: packages already present are skipped by apt; built binaries are cached in
# $CEDANA_CACHE (default /var/cache/kubectl-cedana), keyed by version, and reused.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

debian_major=$(cut -d. -f1 /etc/debian_version)
log "Debian $debian_major; cache in $CEDANA_CACHE"
mkdir -p "$CEDANA_CACHE"

# Source entries: bookworm for the kubernetes source package, trixie for CRIU 4.1.
src_list=/etc/apt/sources.list.d/kubectl-cedana-src.sources
if [ ! -f "$src_list" ]; then
  cat >"$src_list" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  apt_updated=0
fi

pkgs=(
  # toolchain for building kubernetes and CRIU from Debian's source packages
  build-essential pkg-config rsync dpkg-dev xz-utils patch openssl ca-certificates curl jq
  # the node
  etcd-server containerd runc containernetworking-plugins iptables iproute2 kmod
  busybox-static debootstrap apache2-utils docker-registry conntrack ethtool socat
  # CRIU build and runtime dependencies
  libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-protobuf
  libnl-3-dev libnet1-dev libcap-dev libbsd-dev libnftables-dev libgnutls28-dev libaio-dev
  uuid-dev libdrm-dev libnl-route-3-dev asciidoc-base
  # rootfs issue: containers/storage tools; benchmarks: podman
  podman buildah skopeo fuse-overlayfs uidmap
  python3-venv python3-dev
)
if [ "$debian_major" -ge 13 ]; then pkgs+=(golang-1.24-go criu); else pkgs+=(golang-go); fi

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
"$here/build-kubernetes.sh"
log "dependencies ready"
