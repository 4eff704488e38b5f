#!/usr/bin/env bash
# The helper image for the lab, built without any registry: a Debian minbase root made by
# debootstrap (same suite as this machine) with python3, iptables and util-linux, the lab's runc, CRIU and ctr,
# plus our package and its pure-Python/manylinux dependencies installed from PyPI
# into /opt/cedana/lib. Loaded into containerd (and the CRI-O node's storage) as
# docker.io/cedana/helper:VERSION.
# deploy/Dockerfile is the same recipe for people who build images with their own tools.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
repo=$(cd "$here/.." && pwd)
version=$(python3 -c "import re,sys;print(re.search(r'__version__ = \"(.+)\"', open('$repo/kubectl_cedana/version.py').read()).group(1))")
image="docker.io/cedana/helper:$version"
suite=$(. /etc/os-release && echo "$VERSION_CODENAME")

# runc, crun, CRIU and ctr are the lab's own builds (hack/build-go.sh, hack/build-crun.sh,
# hack/build-criu.sh), the same
# programs the node runs; the base brings the shared libraries they link, found by asking dpkg
# which of this machine's packages holds each (the image has this machine's Debian suite).
node_tools=(runc crun criu ctr)
lib_pkgs=$(for b in "${node_tools[@]}"; do ldd "$(readlink -f "$LAB_BIN/$b")" 2>/dev/null || true; done \
  | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
      owner=$(dpkg -S "$lib" 2>/dev/null || dpkg -S "/usr$lib" 2>/dev/null || dpkg -S "${lib#/usr}" 2>/dev/null) \
        || die "no Debian package holds $lib"
      echo "${owner%%:*}"
    done | sort -u | paste -sd, -)
base_pkgs="python3,iptables,util-linux,procps,ca-certificates,$lib_pkgs"
base_key=$(echo "$suite $base_pkgs" | sha256sum | cut -c1-12)
base="$CEDANA_CACHE/helper-base-$suite-$base_key"
if [ ! -d "$base/rootfs" ]; then
  log "debootstrap $suite minbase for the helper image"
  rm -rf "$base.tmp" && mkdir -p "$base.tmp"
  debootstrap --variant=minbase --include="$base_pkgs" "$suite" "$base.tmp/rootfs" \
    http://deb.debian.org/debian >"$base.tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$base.tmp/debootstrap.log"; die "debootstrap failed"; }
  rm -rf "$base.tmp/rootfs/var/cache/apt/archives/"*.deb "$base.tmp/rootfs/var/lib/apt/lists/"*
  rm -rf "$base" && mv "$base.tmp" "$base"
fi

# What goes into the image besides the base: our sources and dependency pins.
tools_key=$(for b in "${node_tools[@]}"; do readlink -f "$LAB_BIN/$b"; done | sha256sum | cut -c1-8)
src_key=$( (cd "$repo" && echo "$tools_key" && cat hack/build-helper-image.sh hack/build_image.py setup.cfg pyproject.toml sidecar/pause/cedana-pause.c sidecar/criu_guard.c sidecar/node/enter_cgroups.c sidecar/node/lazy_guard.c sidecar/node/read_small.h && find kubectl_cedana sidecar -name '*.py' -o -name '*.yaml' | sort | xargs cat) | sha256sum | cut -c1-12)
tar_out="$CEDANA_CACHE/images/helper-$version-$base_key-$src_key.tar"
mkdir -p "$CEDANA_CACHE/images"
rebuilt=0
if [ ! -f "$tar_out" ]; then
  rebuilt=1
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  log "assembling helper image $image"
  cp -a "$base/rootfs" "$work/rootfs"
  root="$work/rootfs"
  # the node's runc, crun, CRIU and ctr; crun loads libcriu when it checkpoints
  for b in "${node_tools[@]}"; do install -m 0755 "$(readlink -f "$LAB_BIN/$b")" "$root/usr/local/sbin/$b"; done
  install -m 0755 "$(dirname "$(readlink -f "$LAB_BIN/crun")")/lib/libcriu.so.2" "$root/usr/local/lib/libcriu.so.2"
  chroot "$root" ldconfig
  pyver=$(chroot "$root" python3 -c 'import sys;print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
  python3 -m pip wheel -q --no-deps -w "$work/wheels" "$repo" >/dev/null
  python3 -m pip install -q --no-compile --no-warn-conflicts --target "$root/opt/cedana/lib" \
    --python-version "$pyver" --only-binary=:all: --platform manylinux2014_x86_64 \
    --implementation cp "$(echo "$work/wheels/"*.whl)[helper]" 2>"$work/pip.log" || { cat "$work/pip.log"; die "pip install failed"; }
  cat >"$root/usr/local/bin/cedana-helper" <<'PY'
#!/usr/bin/python3
import sys
sys.path.insert(0, "/opt/cedana/lib")
from sidecar.cli import main
sys.exit(main())
PY
  chmod 0755 "$root/usr/local/bin/cedana-helper"
  # what placeholder pods run (copied out of this image by their init container): static
  gcc -static -Os -s -Wall -o "$root/usr/local/bin/cedana-pause" "$repo/sidecar/pause/cedana-pause.c"
  chmod 0755 "$root/usr/local/bin/cedana-pause"
  # what runc runs as CRIU: dies with runc; in C, as runc starts it twice per checkpoint
  gcc -static -Os -s -Wall -o "$root/usr/local/bin/cedana-criu-guard" "$repo/sidecar/criu_guard.c"
  # the first link of every restore's chain: joins the placeholder's cgroups (C: ~70 ms less)
  gcc -static -Os -s -Wall -o "$root/usr/local/bin/cedana-enter-cgroups" "$repo/sidecar/node/enter_cgroups.c"
  # the guard of a post-copy restore's lazy-pages daemon, which the restore waits for (C: ~20 ms less)
  gcc -static -Os -s -Wall -o "$root/usr/local/bin/cedana-lazy-guard" "$repo/sidecar/node/lazy_guard.c"
  python3 "$here/build_image.py" --tree "$root" --name "$image" --out "$tar_out.tmp" \
    --entrypoint '["/usr/local/bin/cedana-helper"]' --cmd '["serve"]' \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --env PYTHONPATH=/opt/cedana/lib >/dev/null
  rm -f "$CEDANA_CACHE/images/helper-$version-"*.tar
  mv "$tar_out.tmp" "$tar_out"
fi
for sock in $(lab_containerd_socks); do  # every running lab node
  ctr --address "$sock" -n k8s.io images import "$tar_out" >/dev/null
  log "image $image loaded into containerd ($sock)"
done
"$here/lab-node3.sh" images "$tar_out" "$image"  # and the CRI-O node's storage
# a running lab's helper pods still run the old image under the same tag: have the DaemonSet
# replace them, so a warm `make test` tests the sources as they are
if [ "$rebuilt" = 1 ] && [ -f "$LAB_DIR/admin.kubeconfig" ]; then
  kubectl --kubeconfig "$LAB_DIR/admin.kubeconfig" --request-timeout=10s -n cedana-system delete pods \
    -l app.kubernetes.io/name=cedana-helper --ignore-not-found --wait=false >/dev/null 2>&1 || true
fi
