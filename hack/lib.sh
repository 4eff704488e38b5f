# Shared settings for the lab scripts. Sourced, not executed.
CEDANA_CACHE=${CEDANA_CACHE:-/var/cache/kubectl-cedana}
LAB_DIR=${LAB_DIR:-/var/lib/kubectl-cedana-lab}
LAB_RUN=${LAB_RUN:-/run/kubectl-cedana-lab}
CRIU_VERSION=4.2.1
CRIU_SUITE=forky  # the Debian suite whose source package has $CRIU_VERSION
CRUN_VERSION=1.21  # the CRI-O node's default runtime (hack/build-crun.sh)
CRUN_SUITE=trixie
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# The lab's programs (hack/build-go.sh, hack/build-criu.sh): one link per program to its cached
# build. The versions are pinned in hack/gobuild/*/go.mod. The lab scripts run with it first on
# PATH; install-deps.sh also links the node tools and the clients into /usr/local.
LAB_BIN="$CEDANA_CACHE/bin"
export PATH="$LAB_BIN:$PATH"
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
STATIC_IMAGE=docker.io/cedana-lab/static:1
POSTGRES_IMAGE=docker.io/cedana-lab/postgres:15  # hack/lab-image-postgres.sh
CONTAINERD_SOCK=/run/containerd/containerd.sock
CONTAINERD_CONFIG=/etc/containerd/config.toml   # where node tools (and the helper) look for it
CONTAINERD_CERTS_DIR=/etc/containerd/certs.d    # hosts.toml per registry (config_path)
CNI_CONF=/etc/cni/net.d/10-cedana-lab.conflist

kctl() { kubectl --kubeconfig "$KUBECONFIG_ADMIN" "$@"; }

# upstream_source PKG VERSION SUITE DIR: unpack the upstream tarball of Debian SUITE's source
# package PKG (VERSION) into DIR/PKG-VERSION; Debian's own patches are packaging, not applied.
upstream_source() {
  local pkg=$1 version=$2 suite=$3 dir=$4 orig
  (cd "$dir" && apt-get source --download-only "$pkg/$suite" >/dev/null 2>&1 || true)
  orig=$(ls "$dir/${pkg}_$version".orig.tar.* 2>/dev/null | head -1)
  [ -n "$orig" ] || die "${pkg}_$version.orig.tar.* not fetched (is the $suite deb-src entry of hack/install-deps.sh there?)"
  tar -C "$dir" -xf "$orig"
}
node_ready() {  # node_ready NAME: the node reports Ready
  [ "$(kctl get node "$1" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}
# write_kubelet_config FILE ADDRESS CERT_NAME [CGROUP_ROOT [TAINT [CRI_ENDPOINT]]]: the
# configuration every lab kubelet shares (node 1: lab-up.sh, the others: lib-node.sh); TAINT is
# key=value:Effect; CRI_ENDPOINT the runtime's socket (default containerd's).
write_kubelet_config() {
  local file=$1 address=$2 cert=$3 cgroup_root=${4:-/} taint=${5:-} taints=""
  local endpoint=${6:-$CONTAINERD_SOCK}
  if [ -n "$taint" ]; then
    local key=${taint%%=*} rest=${taint#*=}
    taints="registerWithTaints: [{key: \"$key\", value: \"${rest%%:*}\", effect: ${rest#*:}}]"
  fi
  cat >"$file" <<KCFG
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $address
tlsCertFile: $PKI/$cert.crt
tlsPrivateKeyFile: $PKI/$cert.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $PKI/ca.crt}
authorization: {mode: Webhook}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
containerRuntimeEndpoint: unix://$endpoint
runtimeRequestTimeout: 10m
cgroupDriver: cgroupfs
cgroupRoot: $cgroup_root
# these machines mount cgroup v1 (1.35 refuses it unless told; 1.34 warns)
failCgroupV1: false
failSwapOn: false
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: 100Mi, nodefs.available: 64Mi, imagefs.available: 64Mi}
serializeImagePulls: false
maxPods: 60
$taints
KCFG
}

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

# --- the CRI-O node (hack/lab-node3.sh) -----------------------------------------------------
# Built like node 2 (hack/lib-node.sh), but its runtime is CRI-O (hack/build-go.sh crio) with
# crun as the default OCI runtime (root /run/crun) and runc as a second one (root /run/runc,
# RuntimeClass cedana-lab-runc), conmon from Debian. LAB_NODE3=0 leaves it out.
LAB_NODE3=${LAB_NODE3:-1}
NODE3_NAME=cedana-lab-crio
NODE3_IP=10.88.0.3
NODE3_NETNS=cedana-lab-crio
NODE3_VETH=cedana0-n3
NODE3_BRIDGE=cedana3
NODE3_POD_SUBNET=10.88.3.0/24
NODE3_POD_GATEWAY=10.88.3.1
NODE3_DIR="$LAB_DIR/node3"
NODE3_RUN="$LAB_RUN/node3"
NODE3_MNTNS="$LAB_RUN/ns/node3.mnt"
NODE3_CGROUP_ROOT=/cedana-node3
NODE3_CRIO_SOCK="$NODE3_RUN/crio/crio.sock"  # as seen from the host; /run/crio/crio.sock inside
NODE3_TAINT=cedana-lab/crio-node=true:NoSchedule
NODE3_RUNC_CLASS=cedana-lab-runc  # the RuntimeClass whose pods CRI-O runs with runc
NODE3_MOUNTS=(
  "$NODE3_DIR/kubelet:/var/lib/kubelet"
  "$NODE3_DIR/containers:/var/lib/containers"
  "$NODE3_DIR/crio:/var/lib/crio"
  "$NODE3_RUN/containers:/run/containers"
  "$NODE3_RUN/crio:/run/crio"
  "$NODE3_RUN/crun:/run/crun"
  "$NODE3_RUN/runc:/run/runc"
  "$NODE3_RUN/netns:/run/netns"
  "$NODE3_RUN/ipcns:/run/ipcns"
  "$NODE3_RUN/utsns:/run/utsns"
  "$NODE3_RUN/userns:/run/userns"
  # no containerd on this node: empty directories hide node 1's
  "$NODE3_RUN/containerd:/run/containerd"
  "$NODE3_DIR/containerd:/var/lib/containerd"
  "$NODE3_DIR/cni:/var/lib/cni"
  "$NODE3_DIR/net.d:/etc/cni/net.d"
  "$NODE3_DIR/log/pods:/var/log/pods"
  "$NODE3_DIR/log/containers:/var/log/containers"
  "$NODE3_DIR/log/crio:/var/log/crio"
  "$NODE3_DIR/checkpoints:/var/lib/cedana/checkpoints"
)
NODE3_NSENTER=(nsenter --mount="$NODE3_MNTNS" --net="/run/netns/$NODE3_NETNS" --)

# the extra nodes this lab has (their numbers)
LAB_EXTRA_NODES="$([ "$LAB_NODE2" = 1 ] && echo 2) $([ "$LAB_NODE3" = 1 ] && echo 3)"

# The containerd sockets of the lab's running nodes, as seen from the host: images go into each.
lab_containerd_socks() {
  echo "$CONTAINERD_SOCK"
  if [ "$LAB_NODE2" = 1 ] && pid_alive node2-containerd; then echo "$NODE2_CONTAINERD_SOCK"; fi
}

# prune_lab_images SOCK: remove every image of containerd's k8s.io namespace but the lab's own
# (lab-images.sh, build-helper-image.sh): what tests pulled, committed or restored from (rootfs
# layers, checkpoint images) would otherwise stay on disk run after run; containerd's garbage
# collector then frees their content and snapshots.
prune_lab_images() {
  local sock=$1 ref
  for ref in $(ctr --address "$sock" -n k8s.io images ls -q 2>/dev/null); do
    case $ref in
      docker.io/cedana-lab/*|docker.io/cedana/helper:*) ;;
      *) ctr --address "$sock" -n k8s.io images rm "$ref" >/dev/null 2>&1 || true ;;
    esac
  done
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
