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
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
NETNS_FILE="/run/netns/$NODE2_NETNS"

healthy() {
  [ "$LAB_NODE2" = 1 ] || return 0
  for d in node2-relay node2-containerd node2-kubelet; do pid_alive "$d" || return 1; done
  [ -e "$NETNS_FILE" ] && findmnt -rn --mountpoint "$NODE2_MNTNS" >/dev/null && node_ready "$NODE2_NAME"
}

# --- network: its own namespace, eth0 = 10.88.0.2 on the lab bridge, pods behind cedana2 -------
setup_network() {
  if [ ! -e "$NETNS_FILE" ]; then
    ip link delete "$NODE2_VETH" 2>/dev/null || true
    ip netns add "$NODE2_NETNS"
  fi
  if ! ip link show "$NODE2_VETH" >/dev/null 2>&1; then
    ip link add "$NODE2_VETH" type veth peer name eth0 netns "$NODE2_NETNS"
  fi
  ip link set "$NODE2_VETH" master "$LAB_BRIDGE" up
  ip -n "$NODE2_NETNS" link set lo up
  ip -n "$NODE2_NETNS" addr replace "$NODE2_IP/16" dev eth0
  ip -n "$NODE2_NETNS" link set eth0 up
  # a node has a default gateway: node 1; the FORWARD rules of lab-up keep it inside the machine
  ip -n "$NODE2_NETNS" route replace default via "$LAB_NODE_IP" dev eth0
  # node 2 routes for its pods; proxy ARP answers for them on the bridge, where node 1's pods
  # (10.88.0.0/16 on link) look for them
  nsenter --net="$NETNS_FILE" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.eth0.proxy_arp=1
  # the kubernetes service, as on node 1: to the API server on (node 2's, relayed) loopback
  # shellcheck disable=SC2086
  nsenter --net="$NETNS_FILE" iptables -t nat -C OUTPUT $LAB_API_SERVICE_RULE 2>/dev/null \
    || nsenter --net="$NETNS_FILE" iptables -t nat -I OUTPUT $LAB_API_SERVICE_RULE
  # The host reaches node 2 and its pods through the bridge, named explicitly: podman's default
  # bridge (cni-podman0) claims 10.88.0.0/16 too once podman has run on this machine.
  ip route replace "$NODE2_IP/32" dev "$LAB_BRIDGE" src "$LAB_NODE_IP"
  ip route replace "$NODE2_POD_SUBNET" via "$NODE2_IP" dev "$LAB_BRIDGE"
}

# --- mount namespace: node 2's directories over the paths node software expects -------------
setup_mounts() {
  local pair src dst m nsdir
  nsdir=$(dirname "$NODE2_MNTNS")
  mkdir -p "$nsdir"
  for pair in "${NODE2_MOUNTS[@]}"; do mkdir -p "${pair%%:*}" "${pair#*:}"; done
  findmnt -rn --mountpoint "$NODE2_MNTNS" >/dev/null && return 0
  # A mount namespace can be kept by a bind mount of its nsfs file only on a private mount.
  findmnt -rn --mountpoint "$nsdir" >/dev/null || mount --bind "$nsdir" "$nsdir"
  mount --make-private "$nsdir"
  touch "$NODE2_MNTNS"
  # slave: the host's unmounts still reach the copies this namespace starts with
  unshare --mount="$NODE2_MNTNS" --propagation slave true
  # Kubernetes wants shared propagation (HostToContainer/Bidirectional volumes); shared inside
  # node 2 only: nothing node 2 mounts propagates back to the host.
  nsenter --mount="$NODE2_MNTNS" -- mount --make-rshared /
  for pair in "${NODE2_MOUNTS[@]}"; do
    src=${pair%%:*} dst=${pair#*:}
    # drop the copies of node 1's mounts (pod volumes, netns, rootfs) under the path first;
    # again while some appear that the ones just removed were covering
    for _ in 1 2 3; do
      nsenter --mount="$NODE2_MNTNS" -- findmnt -rn -o TARGET | { grep -E "^$dst(/|$)" || true; } \
        | sort -r | while read -r m; do
          nsenter --mount="$NODE2_MNTNS" -- umount -l "$m" 2>/dev/null || true
        done
    done
    nsenter --mount="$NODE2_MNTNS" -- mount --bind "$src" "$dst"
  done
  log "node 2 mount namespace $NODE2_MNTNS: ${NODE2_MOUNTS[*]}"
}

runtime() {
  [ "$LAB_NODE2" = 1 ] || { log "LAB_NODE2=$LAB_NODE2: no second node"; return 0; }
  mkdir -p "$NODE2_DIR" "$NODE2_RUN"
  chmod 700 "$NODE2_DIR"
  setup_network
  setup_mounts
  # API server and registry on node 2's loopback, like on node 1's
  start_daemon node2-relay /usr/bin/python3 "$here/netns_relay.py" --netns "$NETNS_FILE" 6443 5000
  wait_for 30 "node 2 reaching the API server" "${NODE2_NSENTER[@]}" curl -sf --cacert "$PKI/ca.crt" \
    --cert "$PKI/admin.crt" --key "$PKI/admin.key" https://127.0.0.1:6443/readyz
  # its pod network: bridge cedana2 inside its namespace, 10.88.2.0/24
  cat >"$NODE2_DIR/net.d/10-cedana-lab-node2.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "cedana-lab-node2",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE2_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$NODE2_POD_SUBNET", "gateway": "$NODE2_POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
CNI
  # its kubelet's pull credentials, like node 1's
  python3 "$here/docker_config.py" --config "$NODE2_DIR/kubelet/config.json" add "$REGISTRY_ADDR" \
    "$REGISTRY_USER" "$(cat "$PKI/registry.password")"
  # node 1's containerd config as it is: every path in it means node 2's inside its namespace
  install -m 600 "$CONTAINERD_CONFIG" "$NODE2_DIR/containerd.toml"
  start_daemon node2-containerd "${NODE2_NSENTER[@]}" containerd --config "$NODE2_DIR/containerd.toml"
  wait_for 60 "node 2 containerd" ctr --address "$NODE2_CONTAINERD_SOCK" version
}

kubelet_up() {
  [ "$LAB_NODE2" = 1 ] || return 0
  local c d
  # its own cgroup root, so that neither kubelet takes the other's pods for orphans
  for c in /sys/fs/cgroup/*/; do
    mountpoint -q "$c" || continue
    mkdir -p "$c${NODE2_CGROUP_ROOT#/}"
    if [ -f "$c/cpuset.cpus" ]; then  # an empty cpuset admits no task
      d="$c${NODE2_CGROUP_ROOT#/}"
      [ -n "$(cat "$d/cpuset.cpus")" ] || cat "$c/cpuset.cpus" >"$d/cpuset.cpus"
      [ -n "$(cat "$d/cpuset.mems")" ] || cat "$c/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
  write_kubelet_config "$NODE2_DIR/kubelet-config.yaml" "$NODE2_IP" kubelet-node2-serving \
    "$NODE2_CGROUP_ROOT" "$NODE2_TAINT"
  start_daemon node2-kubelet "${NODE2_NSENTER[@]}" kubelet --kubeconfig="$LAB_DIR/node2.kubeconfig" \
    --config="$NODE2_DIR/kubelet-config.yaml" --root-dir=/var/lib/kubelet \
    --hostname-override="$NODE2_NAME" --node-ip="$NODE2_IP" \
    --node-labels="${NODE2_TAINT%%=*}=true" --v=1
}

down() {
  set +e  # take down whatever is there
  local m
  stop_pid node2-kubelet
  pid_alive node2-containerd && kill_lab_containers "$NODE2_CONTAINERD_SOCK"
  stop_pid node2-containerd
  stop_pid node2-relay
  if findmnt -rn --mountpoint "$NODE2_MNTNS" >/dev/null; then
    # every mount of node 2 lives in this namespace: it goes when its last process has gone
    umount "$NODE2_MNTNS" && log "released node 2 mount namespace"
  fi
  rm -f "$NODE2_MNTNS"
  findmnt -rn --mountpoint "$(dirname "$NODE2_MNTNS")" >/dev/null && umount "$(dirname "$NODE2_MNTNS")"
  if [ -e "$NETNS_FILE" ]; then ip netns delete "$NODE2_NETNS" && log "deleted netns $NODE2_NETNS"; fi
  ip link delete "$NODE2_VETH" 2>/dev/null || true
  ip route del "$NODE2_POD_SUBNET" 2>/dev/null || true
  ip route del "$NODE2_IP/32" dev "$LAB_BRIDGE" 2>/dev/null || true
  # cluster state of node 2 (its images in $NODE2_DIR/containerd stay, like node 1's)
  rm -rf "$NODE2_DIR/kubelet/pods" "$NODE2_DIR/kubelet/cpu_manager_state" "$NODE2_DIR/kubelet/config.json" \
    "$NODE2_DIR/kubelet/memory_manager_state" "$NODE2_DIR/cni" "$NODE2_DIR/log" "$NODE2_RUN/netns"
  for m in /sys/fs/cgroup/*/"${NODE2_CGROUP_ROOT#/}"; do
    [ -d "$m" ] && find "$m" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  return 0
}

case "${1:-}" in
  runtime) runtime ;;
  kubelet) kubelet_up ;;
  healthy) healthy ;;
  down) down ;;
  *) echo "usage: $0 runtime|kubelet|healthy|down" >&2; exit 2 ;;
esac
