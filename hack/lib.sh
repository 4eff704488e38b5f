# Shared settings for the lab scripts. Sourced, not executed.
CEDANA_CACHE=${CEDANA_CACHE:-/var/cache/kubectl-cedana}
LAB_DIR=${LAB_DIR:-/var/lib/kubectl-cedana-lab}
LAB_RUN=${LAB_RUN:-/run/kubectl-cedana-lab}
CRIU_VERSION=4.1.1
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
KUBE_SRC_VERSION=${KUBE_SRC_VERSION:-1.20.5+really1.20.2-1.1+deb12u1}
KUBE_BIN="$CEDANA_CACHE/kubernetes-$KUBE_SRC_VERSION/bin"
NODE_NAME=${NODE_NAME:-cedana-lab-node1}
# The lab's node address: the gateway of its own pod bridge. Everything else listens on
# 127.0.0.1; the node needs an address the API server may proxy to (it refuses loopback).
LAB_BRIDGE=cedana0
LAB_NODE_IP=10.88.0.1
LAB_POD_SUBNET=10.88.0.0/16
LAB_POD_RANGE_START=10.88.1.2
LAB_POD_RANGE_END=10.88.1.254
LAB_POD_ROUTE=10.88.1.0/24  # node 1's pods (the range above), routed to the bridge explicitly
LAB_SERVICE_CIDR=10.96.0.0/24
# The `kubernetes` service's address (KUBERNETES_SERVICE_HOST in every pod). No kube-proxy runs
# here: a DNAT rule in OUTPUT (host and node 2) sends it to the API server on loopback, so
# in-cluster clients on the host network (the helper) reach it and never the default route.
LAB_API_SERVICE_IP=10.96.0.1
LAB_API_SERVICE_RULE="-d $LAB_API_SERVICE_IP/32 -p tcp --dport 443 -j DNAT --to-destination 127.0.0.1:6443"
REGISTRY_ADDR=127.0.0.1:5000
REGISTRY_USER=cedana
PKI="$LAB_DIR/pki"
LOGS="$LAB_DIR/logs"
PIDS="$LAB_DIR/pids"
KUBECONFIG_ADMIN="$LAB_DIR/admin.kubeconfig"
PAUSE_IMAGE=docker.io/cedana-lab/pause:3.2
WORKLOAD_IMAGE=docker.io/cedana-lab/workload:1
CONTAINERD_SOCK=/run/containerd/containerd.sock
CNI_CONF=/etc/cni/net.d/10-cedana-lab.conflist

kctl() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }
node_ready() {  # node_ready NAME: the node reports Ready
  [ "$(kctl get node "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
# the kubelet flags every lab node shares (node 1: lab-up.sh, node 2: lab-node2.sh)
KUBELET_COMMON_FLAGS=(
  --container-runtime=remote --container-runtime-endpoint="unix://$CONTAINERD_SOCK"
  --runtime-request-timeout=10m --cgroup-driver=cgroupfs --fail-swap-on=false
  --pod-infra-container-image="$PAUSE_IMAGE" --root-dir=/var/lib/kubelet
  --client-ca-file="$PKI/ca.crt" --anonymous-auth=false --authorization-mode=Webhook
  --authentication-token-webhook=true
  --read-only-port=0 --healthz-bind-address=127.0.0.1 --healthz-port=10248
  --image-gc-high-threshold=100 --image-gc-low-threshold=99
  --eviction-hard='memory.available<100Mi,nodefs.available<1%,imagefs.available<1%'
  --serialize-image-pulls=false --max-pods=60 --v=1
)

pid_alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# start NAME CMD...: run a daemon in the background with its own log, record its PID.
start_daemon() {
  local name=$1; shift
  if pid_alive "$name"; then log "$name already running (pid $(cat "$PIDS/$name.pid"))"; return 0; fi
  mkdir -p "$LOGS" "$PIDS"
  # The daemon inherits no descriptor beyond stdio: a lock taken by whoever ran the lab scripts
  # (flock on the lab lock of tests/e2e/lab.py, say) must not be held for the daemon's life.
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    exec setsid "$@"
  ) >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
  log "started $name (pid $!, log $LOGS/$name.log)"
}

stop_pid() {  # stop_pid NAME: TERM the recorded PID, KILL it after 10 s, forget it
  local f="$PIDS/$1.pid" pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    log "stopped $1 (pid $pid)"
  fi
  rm -f "$f"
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what"
    sleep 1
  done
}

# --- the second node (hack/lab-node2.sh) ---------------------------------------------------
# Same machine, its own network namespace (reached through a veth on the lab bridge), its own
# mount namespace in which node 2's directories are bind-mounted over the usual paths, its own
# containerd and kubelet, its own pod subnet behind its own bridge. LAB_NODE2=0 leaves it out.
LAB_NODE2=${LAB_NODE2:-1}
NODE2_NAME=cedana-lab-node2
NODE2_IP=10.88.0.2
NODE2_NETNS=cedana-lab-node2
NODE2_VETH=cedana0-n2                 # host end, a port of $LAB_BRIDGE; eth0 inside
NODE2_BRIDGE=cedana2                  # node 2's pod bridge, inside its network namespace
NODE2_POD_SUBNET=10.88.2.0/24
NODE2_POD_GATEWAY=10.88.2.1
NODE2_DIR="$LAB_DIR/node2"            # kubelet, containerd, cni, logs, checkpoints of node 2
NODE2_RUN="$LAB_RUN/node2"            # its /run/containerd and /run/netns
NODE2_MNTNS="$LAB_RUN/ns/node2.mnt"   # its mount namespace, kept by a bind mount
NODE2_CGROUP_ROOT=/cedana-node2
NODE2_CONTAINERD_SOCK="$NODE2_RUN/containerd/containerd.sock"  # as seen from the host
# Only pods that ask for node 2 (nodeName, or a toleration of this taint) run there.
NODE2_TAINT=cedana-lab/second-node=true:NoSchedule
# host path of node 2 -> the path it is mounted on inside node 2's mount namespace
NODE2_MOUNTS=(
  "$NODE2_DIR/kubelet:/var/lib/kubelet"
  "$NODE2_DIR/containerd:/var/lib/containerd"
  "$NODE2_RUN/containerd:/run/containerd"
  "$NODE2_RUN/netns:/run/netns"
  "$NODE2_DIR/cni:/var/lib/cni"
  "$NODE2_DIR/net.d:/etc/cni/net.d"
  "$NODE2_DIR/log/pods:/var/log/pods"
  "$NODE2_DIR/log/containers:/var/log/containers"
  "$NODE2_DIR/checkpoints:/var/lib/cedana/checkpoints"
)
# CMD... as node 2 (in its mount and network namespaces): "${NODE2_NSENTER[@]}" CMD...
NODE2_NSENTER=(nsenter --mount="$NODE2_MNTNS" --net="/run/netns/$NODE2_NETNS" --)

# The containerd sockets of the lab's running nodes, as seen from the host: images go into each.
lab_containerd_socks() {
  echo "$CONTAINERD_SOCK"
  if [ "$LAB_NODE2" = 1 ] && pid_alive node2-containerd; then echo "$NODE2_CONTAINERD_SOCK"; fi
}

# kill_lab_containers SOCK: kill every task of containerd's k8s.io namespace, delete them all.
kill_lab_containers() {
  local sock=$1 c
  for c in $(ctr --address "$sock" -n k8s.io containers ls -q 2>/dev/null); do
    ctr --address "$sock" -n k8s.io tasks kill -s KILL "$c" >/dev/null 2>&1 || true
  done
  sleep 1
  for c in $(ctr --address "$sock" -n k8s.io containers ls -q 2>/dev/null); do
    ctr --address "$sock" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
    ctr --address "$sock" -n k8s.io containers delete "$c" >/dev/null 2>&1 || true
  done
}
