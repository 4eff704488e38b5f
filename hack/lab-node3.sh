#!/usr/bin/env bash
# The lab's CRI-O node, cedana-lab-crio, on the same machine (called by lab-up.sh/lab-down.sh):
#   runtime  network and mount namespaces like node 2's (hack/lib-node.sh), loopback relay,
#            CRI-O (built by hack/build-go.sh from github.com/cri-o/cri-o, with pinns) with
#            crun (hack/build-crun.sh, with CRIU) as its default runtime and runc (the lab's)
#            as a second one, conmon (Debian)
#   images   load an image archive into its containers/storage (skopeo): images TAR NAME
#   kubelet  its kubelet, on CRI-O's socket (after the images are loaded)
#   healthy  exit 0 when its daemons run and the node is Ready
#   down     stop its daemons (recorded PIDs), containers, namespaces, routes and state
# Inside its namespaces the node looks like a CRI-O node: /run/crio/crio.sock, crun root
# /run/crun, runc root /run/runc, containers/storage in /var/lib/containers/storage and
# /run/containers/storage, /var/lib/kubelet, /var/lib/cedana/checkpoints; no containerd
# (/run/containerd and /var/lib/containerd are empty here).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/lib-node.sh"
node_select 3
STORE="overlay@/var/lib/containers/storage+/run/containers/storage"

healthy() {
  [ "$LAB_NODE3" = 1 ] || return 0
  node_healthy node3-relay node3-crio node3-kubelet
}

write_config() {
  cat >"$N_DIR/policy.json" <<'POLICY'
{"default": [{"type": "insecureAcceptAnything"}]}
POLICY
  # Every path is the node's own inside its mount namespace; cgroupfs as the kubelets use.
  cat >"$N_DIR/crio.conf" <<CONF
[crio]
root = "/var/lib/containers/storage"
runroot = "/run/containers/storage"
storage_driver = "overlay"
log_dir = "/var/log/crio/pods"
version_file = "/run/crio/version"
version_file_persist = "/var/lib/crio/version"
clean_shutdown_file = "/var/lib/crio/clean.shutdown"

[crio.api]
listen = "/run/crio/crio.sock"
stream_address = "127.0.0.1"
stream_port = "0"

[crio.runtime]
default_runtime = "crun"
cgroup_manager = "cgroupfs"
conmon_cgroup = "pod"
namespaces_dir = "/run"
pinns_path = "$LAB_BIN/pinns"
container_exits_dir = "/run/crio/exits"
container_attach_socket_dir = "/run/crio"
hooks_dir = []
# checkpoint and restore through the CRI (the kubelet's checkpoint API; restore from a
# checkpoint image): CRIU from the lab's build, found on PATH
enable_criu_support = true
log_level = "info"

[crio.runtime.runtimes.crun]
runtime_path = "$LAB_BIN/crun"
runtime_type = "oci"
runtime_root = "/run/crun"
monitor_path = "/usr/bin/conmon"
monitor_cgroup = "pod"

[crio.runtime.runtimes.runc]
runtime_path = "$LAB_BIN/runc"
runtime_type = "oci"
runtime_root = "/run/runc"
monitor_path = "/usr/bin/conmon"
monitor_cgroup = "pod"

[crio.image]
pause_image = "$PAUSE_IMAGE"
pause_command = "/pause"
# no signature_policy of its own: with one, CRI-O refuses to restore from a checkpoint image
# ("signature validation is not supported for container restore"); the node's
# /etc/containers/policy.json (containers-common's: any image) applies
# the kubelet hands CRI-O the pull credentials it has; this file is CRI-O's own fallback
global_auth_file = "/var/lib/kubelet/config.json"

[crio.network]
network_dir = "/etc/cni/net.d/"
plugin_dirs = ["/usr/lib/cni"]

[crio.metrics]
enable_metrics = false

[crio.nri]
enable_nri = false
CONF
}

# These VMs mount cgroup v1 hierarchies plus a cgroup v2 one (/sys/fs/cgroup/unified, "hybrid")
# that holds the hugetlb controller, where no v1 runtime can use it. containerd drops hugepage
# limits when the controller is missing (tolerate_missing_hugetlb_controller); CRI-O decides
# from /proc/cgroups, which lists every controller the kernel has, and then runc fails every
# container ("cannot set hugetlb limit: container could not join or create cgroup"); crun
# refuses hybrid mode outright ("cgroups in hybrid mode not supported"). In the node's mount
# namespace the machine looks like a plain cgroup v1 node: no v2 mount, and /proc/cgroups
# without the controllers no v1 hierarchy holds (hierarchy 0).
cgroup_v1_only() {
  if "${N_NSENTER[@]}" findmnt -rn --mountpoint /sys/fs/cgroup/unified >/dev/null; then
    nsenter --mount="$N_MNTNS" -- umount /sys/fs/cgroup/unified
  fi
  "${N_NSENTER[@]}" findmnt -rn --mountpoint /proc/cgroups >/dev/null && return 0
  awk '$1 ~ /^#/ || $2 != 0' /proc/cgroups >"$N_RUN/proc-cgroups"
  nsenter --mount="$N_MNTNS" -- mount --bind -o ro "$N_RUN/proc-cgroups" /proc/cgroups
}

runtime() {
  [ "$LAB_NODE3" = 1 ] || { log "LAB_NODE3=$LAB_NODE3: no CRI-O node"; return 0; }
  [ -x "$LAB_BIN/crio" ] && [ -x "$LAB_BIN/pinns" ] || "$here/build-go.sh" crio
  [ -x "$LAB_BIN/crun" ] || "$here/build-crun.sh"
  mkdir -p "$N_DIR" "$N_RUN"
  chmod 700 "$N_DIR"
  node_network
  node_mounts
  cgroup_v1_only
  node_relay
  node_cni
  write_config
  start_daemon node3-crio "${N_NSENTER[@]}" env PATH="$LAB_BIN:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    crio --config "$N_DIR/crio.conf" --config-dir ""
  wait_for 60 "CRI-O on $N_NAME" test -S "$NODE3_CRIO_SOCK"
}

images() {  # images TAR NAME: into the node's containers/storage (CRI-O sees it at once)
  [ "$LAB_NODE3" = 1 ] && pid_alive node3-crio || return 0
  nsenter --mount="$N_MNTNS" -- skopeo --policy "$N_DIR/policy.json" copy -q \
    "docker-archive:$1" "containers-storage:[$STORE]$2" >/dev/null
  log "image $2 loaded into CRI-O's storage on $N_NAME"
}

kubelet_up() {
  [ "$LAB_NODE3" = 1 ] || return 0
  node_kubelet /run/crio/crio.sock
}

kill_containers() {  # every container CRI-O runs, so that its mounts can go
  local r c
  for r in crun runc; do
    for c in $("${N_NSENTER[@]}" "$LAB_BIN/$r" --root "/run/$r" list -q 2>/dev/null); do
      "${N_NSENTER[@]}" "$LAB_BIN/$r" --root "/run/$r" delete -f "$c" >/dev/null 2>&1 || true
    done
  done
}

down() {
  set +e  # take down whatever is there
  stop_pid node3-kubelet
  pid_alive node3-crio && kill_containers
  stop_pid node3-crio
  # conmon outlives CRI-O by design; with its container gone it exits
  node_release
  # its containers/storage (images are loaded again by the next lab-up, in seconds): what
  # tests pulled or restored from does not pile up
  rm -rf "$N_DIR/containers" "$N_DIR/crio"
  return 0
}

case "${1:-}" in
  runtime) runtime ;;
  images) shift; images "$@" ;;
  kubelet) kubelet_up ;;
  healthy) healthy ;;
  down) down ;;
  *) echo "usage: $0 runtime|images TAR NAME|kubelet|healthy|down" >&2; exit 2 ;;
esac
