# The parts every extra lab node shares (hack/lab-node2.sh: containerd, hack/lab-node3.sh:
# CRI-O). Sourced after lib.sh, then `node_select N` picks node N's settings (NODEN_* in lib.sh)
# into the N_* variables the functions below use.
# A node is: a network namespace with eth0 on the lab bridge (a veth), a mount namespace in
# which its own directories are bind-mounted over the usual paths, a loopback relay to the API
# server and the registry, its own pod bridge and subnet, its own cgroup root, a kubelet.

node_select() {  # node_select N
  local v
  for v in NAME IP NETNS VETH BRIDGE POD_SUBNET POD_GATEWAY DIR RUN MNTNS CGROUP_ROOT TAINT; do
    eval "N_$v=\${NODE$1_$v}"
  done
  eval "N_MOUNTS=(\"\${NODE$1_MOUNTS[@]}\")"
  N_NUM=$1
  N_NETNS_FILE="/run/netns/$N_NETNS"
  N_NSENTER=(nsenter --mount="$N_MNTNS" --net="$N_NETNS_FILE" --)
}

# --- network: its own namespace, eth0 = N_IP on the lab bridge, pods behind N_BRIDGE ----------
node_network() {
  if [ ! -e "$N_NETNS_FILE" ]; then
    ip link delete "$N_VETH" 2>/dev/null || true
    ip netns add "$N_NETNS"
  fi
  if ! ip link show "$N_VETH" >/dev/null 2>&1; then
    ip link add "$N_VETH" type veth peer name eth0 netns "$N_NETNS"
  fi
  ip link set "$N_VETH" master "$LAB_BRIDGE" up
  ip -n "$N_NETNS" link set lo up
  ip -n "$N_NETNS" addr replace "$N_IP/16" dev eth0
  ip -n "$N_NETNS" link set eth0 up
  # a node has a default gateway: node 1; the FORWARD rules of lab-up keep it inside the machine
  ip -n "$N_NETNS" route replace default via "$LAB_NODE_IP" dev eth0
  # the node routes for its pods; proxy ARP answers for them on the bridge, where node 1's pods
  # (10.88.0.0/16 on link) look for them
  nsenter --net="$N_NETNS_FILE" sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.eth0.proxy_arp=1
  # the kubernetes service, as on node 1: to the API server on (the node's, relayed) loopback
  # shellcheck disable=SC2086
  nsenter --net="$N_NETNS_FILE" iptables -t nat -C OUTPUT $LAB_API_SERVICE_RULE 2>/dev/null \
    || nsenter --net="$N_NETNS_FILE" iptables -t nat -I OUTPUT $LAB_API_SERVICE_RULE
  # Other nodes' pods reach this node's: routes in each extra node (node 1 has them below).
  local other
  for other in $LAB_EXTRA_NODES; do
    [ "$other" = "$N_NUM" ] && continue
    local oip osub
    eval "oip=\$NODE${other}_IP osub=\$NODE${other}_POD_SUBNET"
    ip -n "$N_NETNS" route replace "$osub" via "$oip" dev eth0
    [ -e "/run/netns/$(eval echo "\$NODE${other}_NETNS")" ] && \
      ip -n "$(eval echo "\$NODE${other}_NETNS")" route replace "$N_POD_SUBNET" via "$N_IP" dev eth0
  done
  # The host reaches the node and its pods through the bridge, named explicitly: podman's
  # default bridge (cni-podman0) claims 10.88.0.0/16 too once podman has run on this machine.
  ip route replace "$N_IP/32" dev "$LAB_BRIDGE" src "$LAB_NODE_IP"
  ip route replace "$N_POD_SUBNET" via "$N_IP" dev "$LAB_BRIDGE"
}

# --- mount namespace: the node's directories over the paths node software expects -----------
node_mounts() {
  local pair src dst m nsdir
  nsdir=$(dirname "$N_MNTNS")
  mkdir -p "$nsdir"
  for pair in "${N_MOUNTS[@]}"; do mkdir -p "${pair%%:*}" "${pair#*:}"; done
  findmnt -rn --mountpoint "$N_MNTNS" >/dev/null && return 0
  # A mount namespace can be kept by a bind mount of its nsfs file only on a private mount.
  findmnt -rn --mountpoint "$nsdir" >/dev/null || mount --bind "$nsdir" "$nsdir"
  mount --make-private "$nsdir"
  touch "$N_MNTNS"
  # slave: the host's unmounts still reach the copies this namespace starts with
  unshare --mount="$N_MNTNS" --propagation slave true
  # Kubernetes wants shared propagation (HostToContainer/Bidirectional volumes); shared inside
  # the node only: nothing it mounts propagates back to the host.
  nsenter --mount="$N_MNTNS" -- mount --make-rshared /
  for pair in "${N_MOUNTS[@]}"; do
    src=${pair%%:*} dst=${pair#*:}
    # drop the copies of node 1's mounts (pod volumes, netns, rootfs) under the path first;
    # again while some appear that the ones just removed were covering
    for _ in 1 2 3; do
      nsenter --mount="$N_MNTNS" -- findmnt -rn -o TARGET | { grep -E "^$dst(/|$)" || true; } \
        | sort -r | while read -r m; do
          nsenter --mount="$N_MNTNS" -- umount -l "$m" 2>/dev/null || true
        done
    done
    nsenter --mount="$N_MNTNS" -- mount --bind "$src" "$dst"
  done
  log "$N_NAME mount namespace $N_MNTNS: ${N_MOUNTS[*]}"
}

node_cni() {  # its pod network: bridge N_BRIDGE inside its namespace, N_POD_SUBNET
  mkdir -p "$N_DIR/net.d"
  cat >"$N_DIR/net.d/10-$N_NAME.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "$N_NAME",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$N_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$N_POD_SUBNET", "gateway": "$N_POD_GATEWAY"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
CNI
}

node_relay() {  # the API server and the registry on the node's loopback, like on node 1's
  start_daemon "node$N_NUM-relay" /usr/bin/python3 "$here/netns_relay.py" --netns "$N_NETNS_FILE" 6443 5000
  wait_for 30 "$N_NAME reaching the API server" "${N_NSENTER[@]}" curl -sf --cacert "$PKI/ca.crt" \
    --cert "$PKI/admin.crt" --key "$PKI/admin.key" https://127.0.0.1:6443/readyz
  # its kubelet's pull credentials, like node 1's
  python3 "$here/docker_config.py" --config "$N_DIR/kubelet/config.json" add "$REGISTRY_ADDR" \
    "$REGISTRY_USER" "$(cat "$PKI/registry.password")"
}

node_cgroup_root() {  # its own cgroup root, so that no kubelet takes another's pods for orphans
  local c d
  for c in /sys/fs/cgroup/*/; do
    mountpoint -q "$c" || continue
    mkdir -p "$c${N_CGROUP_ROOT#/}"
    if [ -f "$c/cpuset.cpus" ]; then  # an empty cpuset admits no task
      d="$c${N_CGROUP_ROOT#/}"
      [ -n "$(cat "$d/cpuset.cpus")" ] || cat "$c/cpuset.cpus" >"$d/cpuset.cpus"
      [ -n "$(cat "$d/cpuset.mems")" ] || cat "$c/cpuset.mems" >"$d/cpuset.mems"
    fi
  done
}

node_kubelet() {  # node_kubelet ENDPOINT: its kubelet, on the node's CRI socket
  node_cgroup_root
  write_kubelet_config "$N_DIR/kubelet-config.yaml" "$N_IP" "kubelet-node$N_NUM-serving" \
    "$N_CGROUP_ROOT" "$N_TAINT" "$1"
  start_daemon "node$N_NUM-kubelet" "${N_NSENTER[@]}" kubelet --kubeconfig="$LAB_DIR/node$N_NUM.kubeconfig" \
    --config="$N_DIR/kubelet-config.yaml" --root-dir=/var/lib/kubelet \
    --hostname-override="$N_NAME" --node-ip="$N_IP" \
    --node-labels="${N_TAINT%%=*}=true" --v=1
}

node_healthy() {  # node_healthy DAEMON...: its daemons run and it is Ready
  local d
  for d in "$@"; do pid_alive "$d" || return 1; done
  [ -e "$N_NETNS_FILE" ] && findmnt -rn --mountpoint "$N_MNTNS" >/dev/null && node_ready "$N_NAME"
}

node_release() {  # the namespaces, routes and cgroups, once the node's daemons are stopped
  local m
  stop_pid "node$N_NUM-relay"
  if findmnt -rn --mountpoint "$N_MNTNS" >/dev/null; then
    # every mount of the node lives in this namespace: it goes when its last process has gone
    umount "$N_MNTNS" && log "released $N_NAME mount namespace"
  fi
  rm -f "$N_MNTNS"
  if [ -z "$(ls -A "$(dirname "$N_MNTNS")" 2>/dev/null)" ]; then
    findmnt -rn --mountpoint "$(dirname "$N_MNTNS")" >/dev/null && umount "$(dirname "$N_MNTNS")"
  fi
  if [ -e "$N_NETNS_FILE" ]; then ip netns delete "$N_NETNS" && log "deleted netns $N_NETNS"; fi
  ip link delete "$N_VETH" 2>/dev/null || true
  ip route del "$N_POD_SUBNET" 2>/dev/null || true
  ip route del "$N_IP/32" dev "$LAB_BRIDGE" 2>/dev/null || true
  # cluster state of the node (its images stay, like node 1's)
  rm -rf "$N_DIR/kubelet/pods" "$N_DIR/kubelet/cpu_manager_state" "$N_DIR/kubelet/config.json" \
    "$N_DIR/kubelet/memory_manager_state" "$N_DIR/cni" "$N_DIR/log" "$N_RUN/netns" "$N_DIR/checkpoints"
  for m in /sys/fs/cgroup/*/"${N_CGROUP_ROOT#/}"; do
    [ -d "$m" ] && find "$m" -depth -type d -exec rmdir {} + 2>/dev/null
  done
  return 0
}
