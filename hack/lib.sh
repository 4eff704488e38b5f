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
LAB_SERVICE_CIDR=10.96.0.0/24
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

pid_alive() { [ -f "$PIDS/$1.pid" ] && kill -0 "$(cat "$PIDS/$1.pid")" 2>/dev/null; }

# start NAME CMD...: run a daemon in the background with its own log, record its PID.
start_daemon() {
  local name=$1; shift
  if pid_alive "$name"; then log "$name already running (pid $(cat "$PIDS/$name.pid"))"; return 0; fi
  mkdir -p "$LOGS" "$PIDS"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 </dev/null &
  echo $! >"$PIDS/$name.pid"
  log "started $name (pid $!, log $LOGS/$name.log)"
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local secs=$1 what=$2; shift 2
  local end=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $end ] || die "timed out after ${secs}s waiting for $what"
    sleep 1
  done
}
