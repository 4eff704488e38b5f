#!/usr/bin/env bash
# Build the lab's images without any registry and load them into containerd (namespace k8s.io):
# the sandbox (pause) image and the workload image (static busybox + the test programs in
# hack/images/), on every running lab node. Kubelet uses them with imagePullPolicy IfNotPresent/Never.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
out="$CEDANA_CACHE/images"
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

import() {  # import TAR NAME: into the containerd of every running lab node
  local sock
  for sock in $(lab_containerd_socks); do
    ctr --address "$sock" -n k8s.io images import "$1" >/dev/null
    log "image $2 loaded into containerd ($sock)"
  done
  "$here/lab-node3.sh" images "$1" "$2"  # the CRI-O node's containers/storage
}

# pause: the static binary built from the k8s.io/kubernetes module (hack/build-go.sh)
mkdir -p "$work/pause"
install -m 0755 "$(readlink -f "$LAB_BIN/pause")" "$work/pause/pause"
python3 "$here/build_image.py" --tree "$work/pause" --name "$PAUSE_IMAGE" --out "$out/pause.tar" \
  --entrypoint '["/pause"]' >/dev/null
import "$out/pause.tar" "$PAUSE_IMAGE"

# workload: busybox with its applets, and the test programs
w="$work/workload"
mkdir -p "$w/bin" "$w/usr/local/bin" "$w/tmp" "$w/etc" "$w/data" "$w/root"
chmod 1777 "$w/tmp"
install -m 0755 /bin/busybox "$w/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ -e "$w/bin/$applet" ] || ln -s busybox "$w/bin/$applet"
done
for prog in counter memhog memcheck survivor iouring unixpeer; do
  gcc -static -O2 -o "$w/usr/local/bin/$prog" "$here/images/$prog.c"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$w/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$w/etc/group"
# files of the image that the rootfs tests modify and delete
printf 'original content of the image\n' >"$w/data/original.txt"
printf 'this file is deleted by the rootfs test\n' >"$w/data/doomed.txt"
python3 "$here/build_image.py" --tree "$w" --name "$WORKLOAD_IMAGE" --out "$out/workload.tar" \
  --cmd '["/bin/sh"]' >/dev/null
import "$out/workload.tar" "$WORKLOAD_IMAGE"

# static: one static binary and nothing else (no shell, no sleep), like a Go or Rust service
# on scratch or distroless; its entrypoint is the counter
s="$work/static"
mkdir -p "$s"
gcc -static -O2 -o "$s/counter" "$here/images/counter.c"
python3 "$here/build_image.py" --tree "$s" --name "$STATIC_IMAGE" --out "$out/static.tar" \
  --entrypoint '["/counter", "/counter.txt", "200"]' >/dev/null
import "$out/static.tar" "$STATIC_IMAGE"

# postgres: Debian's PostgreSQL 15 with its defaults (hack/lab-image-postgres.sh, cached)
import "$("$here/lab-image-postgres.sh" "$out")" "$POSTGRES_IMAGE"
