#!/usr/bin/env bash
# Stop exactly what lab-up started (by recorded PID), then remove the lab's containers, mounts,
# network namespaces, bridge and iptables rules, so that lab-up works again afterwards.
# The lab's own images in containerd and the build caches are kept (they make the next lab-up
# fast); images tests left and the registry's contents go.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

# Extra daemons started by tests or later lab stages record their PIDs in the same place.
for f in "$PIDS"/extra-*.pid; do [ -f "$f" ] && stop_pid "$(basename "$f" .pid)"; done
# The second node first: its kubelet, containers, containerd, relay, namespaces and state.
"$here/lab-node2.sh" down
"$here/lab-node3.sh" down
stop_pid kubelet

# The lab's containers: kill their tasks so their shims exit, then delete them.
if pid_alive containerd; then
  kill_lab_containers "$CONTAINERD_SOCK"
  prune_lab_images "$CONTAINERD_SOCK"  # what tests left in the image store
fi
for d in containerd kube-scheduler kube-controller-manager kube-apiserver etcd registry; do
  stop_pid "$d"
done

# Mounts the kubelet and containerd left (pod volumes, sandbox shm, task rootfs), deepest first.
for prefix in /var/lib/kubelet /run/containerd /var/lib/containerd/io.containerd.grpc.v1.cri; do
  findmnt -rn -o TARGET 2>/dev/null | grep "^$prefix/" | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null && log "unmounted $m"
  done
done
# kubelet bind-mounts its own root directory onto itself
mountpoint -q /var/lib/kubelet && umount -l /var/lib/kubelet && log "unmounted /var/lib/kubelet"
# Network namespaces the CNI set up for our pods, and the bridge.
for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep '^cni-'); do
  ip netns delete "$ns" 2>/dev/null && log "deleted netns $ns"
done
ip link show "$LAB_BRIDGE" >/dev/null 2>&1 && ip link delete "$LAB_BRIDGE" && log "deleted bridge $LAB_BRIDGE"
for rule in "-i $LAB_BRIDGE ! -o $LAB_BRIDGE -j DROP" "-o $LAB_BRIDGE ! -i $LAB_BRIDGE -j DROP"; do
  # shellcheck disable=SC2086
  while iptables -C FORWARD $rule 2>/dev/null; do iptables -D FORWARD $rule; done
done
# shellcheck disable=SC2086
while iptables -t nat -C OUTPUT $LAB_API_SERVICE_RULE 2>/dev/null; do iptables -t nat -D OUTPUT $LAB_API_SERVICE_RULE; done
rm -rf /var/lib/cni/networks/cedana-lab "$CNI_CONF" "$CONTAINERD_CONFIG" "$CONTAINERD_CERTS_DIR/$REGISTRY_ADDR"
# Cluster state goes; certificates, images and caches stay.
rm -rf "$LAB_DIR/etcd" /var/lib/kubelet/pods /var/lib/kubelet/cpu_manager_state /var/lib/kubelet/memory_manager_state
# The nodes' checkpoint directories (the helper DaemonSet's hostPath on node 1, node 2's own):
# with etcd gone no Checkpoint object refers to them any more, and they fill disks fast.
rm -rf /var/lib/cedana/checkpoints "$NODE2_DIR/checkpoints" "$NODE3_DIR/checkpoints"
# The registry holds only what tests and benchmarks pushed (checkpoints of up to 4 GiB, rootfs
# layers, charts): it starts empty with each lab.
rm -rf "$LAB_DIR/registry"
for f in /root/.docker/config.json /var/lib/kubelet/config.json; do
  python3 "$here/docker_config.py" --config "$f" remove "$REGISTRY_ADDR"
done
log "lab is down"
