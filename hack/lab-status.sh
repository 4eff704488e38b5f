#!/usr/bin/env bash
# Print each lab daemon with its PID, state and log file, and the nodes' readiness.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
rc=0
printf '%-26s %-8s %-8s %s\n' DAEMON PID STATE LOG
for f in "$PIDS"/*.pid; do
  [ -f "$f" ] || continue
  name=$(basename "$f" .pid); pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then state=running; else state=dead; rc=1; fi
  printf '%-26s %-8s %-8s %s\n' "$name" "$pid" "$state" "$LOGS/$name.log"
done
[ -f "$PIDS/kube-apiserver.pid" ] || { echo "lab is not running (make lab-up)"; exit 1; }
echo
kctl get nodes -o wide 2>&1 || rc=1
if [ "$LAB_NODE2" = 1 ] && [ -f "$PIDS/node2-kubelet.pid" ]; then
  echo
  echo "node $NODE2_NAME: network namespace $NODE2_NETNS ($NODE2_IP, pods $NODE2_POD_SUBNET)," \
    "mount namespace $NODE2_MNTNS, containerd $NODE2_CONTAINERD_SOCK, files $NODE2_DIR"
  [ -e "/run/netns/$NODE2_NETNS" ] || { echo "  network namespace missing"; rc=1; }
  findmnt -rn --mountpoint "$NODE2_MNTNS" >/dev/null || { echo "  mount namespace missing"; rc=1; }
fi
if [ "$LAB_NODE3" = 1 ] && [ -f "$PIDS/node3-kubelet.pid" ]; then
  echo
  echo "node $NODE3_NAME: CRI-O ($NODE3_CRIO_SOCK; crun default, runc as RuntimeClass $NODE3_RUNC_CLASS)," \
    "network namespace $NODE3_NETNS ($NODE3_IP, pods $NODE3_POD_SUBNET), mount namespace $NODE3_MNTNS, files $NODE3_DIR"
  [ -e "/run/netns/$NODE3_NETNS" ] || { echo "  network namespace missing"; rc=1; }
  findmnt -rn --mountpoint "$NODE3_MNTNS" >/dev/null || { echo "  mount namespace missing"; rc=1; }
fi
echo
echo "export KUBECONFIG=$KUBECONFIG_ADMIN"
exit $rc
