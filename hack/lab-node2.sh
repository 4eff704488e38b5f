#!/usr/bin/env bash
# The lab's second node, cedana-lab-node2, on the same machine (called by lab-up.sh/lab-down.sh):
#   runtime  network namespace + veth on the lab bridge, mount namespace with node 2's own
#            directories over the usual paths, loopback relay, containerd
#   kubelet  its kubelet (after the images are loaded)
#   healthy  exit 0 when its daemons run and the node is Ready
#   down     stop its daemons (recorded PIDs), containers, namespaces, routes and state
# Inside its namespaces node 2 looks like node 1: /run/containerd/containerd.sock, runc root
# /run/containerd/runc/k8s.io, /var/lib/kubelet, /var/lib/containerd, /run/netns,
# /var/lib/cedana/checkpoints, and the API server and registry on 127.0.0.1:6443 and :5000.
# So the helper DaemonSet's host paths mean node 2's directories in the helper pod on node 2.
# What it shares with the CRI-O node (namespaces, network, relay, kubelet): hack/lib-node.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
. "$here/lib-node.sh"
node_select 2

healthy() {
  [ "$LAB_NODE2" = 1 ] || return 0
  node_healthy node2-relay node2-containerd node2-kubelet
}

runtime() {
  [ "$LAB_NODE2" = 1 ] || { log "LAB_NODE2=$LAB_NODE2: no second node"; return 0; }
  mkdir -p "$NODE2_DIR" "$NODE2_RUN"
  chmod 700 "$NODE2_DIR"
  node_network
  node_mounts
  node_relay
  node_cni
  # node 1's containerd config as it is: every path in it means node 2's inside its namespace
  install -m 600 "$CONTAINERD_CONFIG" "$NODE2_DIR/containerd.toml"
  start_daemon node2-containerd "${NODE2_NSENTER[@]}" containerd --config "$NODE2_DIR/containerd.toml"
  wait_for 60 "node 2 containerd" ctr --address "$NODE2_CONTAINERD_SOCK" version
}

kubelet_up() {
  [ "$LAB_NODE2" = 1 ] || return 0
  node_kubelet "$CONTAINERD_SOCK"
}

down() {
  set +e  # take down whatever is there
  stop_pid node2-kubelet
  if pid_alive node2-containerd; then
    kill_lab_containers "$NODE2_CONTAINERD_SOCK"
    prune_lab_images "$NODE2_CONTAINERD_SOCK"
  fi
  stop_pid node2-containerd
  node_release
  return 0
}

case "${1:-}" in
  runtime) runtime ;;
  kubelet) kubelet_up ;;
  healthy) healthy ;;
  down) down ;;
  *) echo "usage: $0 runtime|kubelet|healthy|down" >&2; exit 2 ;;
esac
