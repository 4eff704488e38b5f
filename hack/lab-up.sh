#!/usr/bin/env bash
# Bring up the Kubernetes lab on this machine: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, containerd (CRI) + runc + CRIU, a kubelet, CNI bridge networking and a TLS
# registry with htpasswd auth; then a second node in its own namespaces (hack/lab-node2.sh) and
# a CRI-O node with crun and runc (hack/lab-node3.sh).
# Idempotent: on a running lab it only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

lab_healthy() {
  for d in etcd kube-apiserver containerd kube-controller-manager kube-scheduler kubelet registry; do
    pid_alive "$d" || return 1
  done
  node_ready "$NODE_NAME" && "$here/lab-node2.sh" healthy && "$here/lab-node3.sh" healthy
}

if [ -f "$KUBECONFIG_ADMIN" ] && lab_healthy; then
  log "lab already running; node $NODE_NAME$([ "$LAB_NODE2" = 1 ] && echo ", $NODE2_NAME")$([ "$LAB_NODE3" = 1 ] && echo ", $NODE3_NAME") Ready"
  # sources may have changed since: the helper image is rebuilt only when they did
  "$here/build-helper-image.sh"
  exit 0
fi

"$here/install-deps.sh"
mkdir -p "$LAB_DIR" "$LOGS" "$PIDS" "$LAB_RUN"
chmod 700 "$LAB_DIR"
"$here/lab-pki.sh"

# Kubernetes nodes need shared mount propagation (systemd sets it; here nobody does), or
# HostToContainer mounts such as the helper's /run/containerd are refused.
mount --make-rshared /

# --- network: the pod bridge (also the node's address), no route out of the machine ----------
if ! ip link show "$LAB_BRIDGE" >/dev/null 2>&1; then
  ip link add "$LAB_BRIDGE" type bridge
  ip addr add "$LAB_NODE_IP/16" dev "$LAB_BRIDGE"
fi
ip link set "$LAB_BRIDGE" up
# Podman's default network (bridge cni-podman0) is 10.88.0.0/16 with 10.88.0.1 as well: once podman
# has run, whichever bridge came first takes the /16 route. The pods' range goes to ours by name.
ip route replace "$LAB_POD_ROUTE" dev "$LAB_BRIDGE" src "$LAB_NODE_IP"
# Pods may talk to each other and to the node, never be forwarded anywhere else.
for rule in "-i $LAB_BRIDGE ! -o $LAB_BRIDGE -j DROP" "-o $LAB_BRIDGE ! -i $LAB_BRIDGE -j DROP"; do
  # shellcheck disable=SC2086
  iptables -C FORWARD $rule 2>/dev/null || iptables -I FORWARD $rule
done
# shellcheck disable=SC2086
iptables -t nat -C OUTPUT $LAB_API_SERVICE_RULE 2>/dev/null || iptables -t nat -I OUTPUT $LAB_API_SERVICE_RULE
sysctl -qw net.bridge.bridge-nf-call-iptables=1 2>/dev/null || true
mkdir -p /etc/cni/net.d
cat >"$CNI_CONF" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "cedana-lab",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$LAB_BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$LAB_POD_SUBNET", "rangeStart": "$LAB_POD_RANGE_START",
                     "rangeEnd": "$LAB_POD_RANGE_END", "gateway": "$LAB_NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
CNI

# --- registry: distribution on 127.0.0.1:5000, TLS + htpasswd -----------------------------
reg_pass=$(cat "$PKI/registry.password")
htpasswd -Bbc "$LAB_DIR/registry.htpasswd" "$REGISTRY_USER" "$reg_pass" 2>/dev/null
mkdir -p "$LAB_DIR/registry"
cat >"$LAB_DIR/registry.yml" <<REG
version: 0.1
log: {level: info, formatter: text}
storage:
  filesystem: {rootdirectory: $LAB_DIR/registry}
  delete: {enabled: true}
http:
  addr: $REGISTRY_ADDR
  tls: {certificate: $PKI/registry.crt, key: $PKI/registry.key}
auth:
  htpasswd: {realm: cedana-lab, path: $LAB_DIR/registry.htpasswd}
REG
start_daemon registry docker-registry serve "$LAB_DIR/registry.yml"
# The node's registry credentials: the docker config (node tools, podman, skopeo) and the
# kubelet's own pull credentials (the kubelet hands them to containerd with each pull; the
# helper reads both); the registry CA where docker, podman, skopeo and buildah look for it.
for d in "/etc/docker/certs.d/$REGISTRY_ADDR" "/etc/containers/certs.d/$REGISTRY_ADDR"; do
  mkdir -p "$d" && cp "$PKI/ca.crt" "$d/ca.crt"
done
for f in /root/.docker/config.json /var/lib/kubelet/config.json; do
  python3 "$here/docker_config.py" --config "$f" add "$REGISTRY_ADDR" "$REGISTRY_USER" "$reg_pass"
done

# --- etcd, kube-apiserver ----------------------------------------------------------------
# The audit log records who changed what (every write, at Metadata level); reads are left out.
cat >"$LAB_DIR/audit-policy.yaml" <<'AUDIT'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  resources: [{group: coordination.k8s.io, resources: [leases]}]
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
AUDIT
start_daemon etcd etcd --name cedana-lab --data-dir "$LAB_DIR/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster cedana-lab=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381
wait_for 60 etcd curl -sf http://127.0.0.1:2379/health

start_daemon kube-apiserver kube-apiserver \
  --bind-address=127.0.0.1 --secure-port=6443 --advertise-address="$LAB_NODE_IP" \
  --etcd-servers=http://127.0.0.1:2379 \
  --client-ca-file="$PKI/ca.crt" --tls-cert-file="$PKI/apiserver.crt" --tls-private-key-file="$PKI/apiserver.key" \
  --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --service-account-key-file="$PKI/sa.pub" --service-account-signing-key-file="$PKI/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range="$LAB_SERVICE_CIDR" --authorization-mode=Node,RBAC \
  --allow-privileged=true --enable-admission-plugins=NodeRestriction \
  --audit-policy-file="$LAB_DIR/audit-policy.yaml" --audit-log-path="$LOGS/audit.log" \
  --audit-log-maxsize=100 --audit-log-maxbackup=1 --v=1
wait_for 120 kube-apiserver curl -sf --cacert "$PKI/ca.crt" --cert "$PKI/admin.crt" --key "$PKI/admin.key" \
  https://127.0.0.1:6443/readyz

# --- containerd with the CRI plugin (configuration version 3) ------------------------------
# Registry TLS comes from certs.d/HOST/hosts.toml (the CRI registry.configs section is gone in
# containerd 2.4); pull credentials come from the kubelet, which reads the node's docker config.
mkdir -p "$(dirname "$CONTAINERD_CONFIG")" "$CONTAINERD_CERTS_DIR/$REGISTRY_ADDR"
cat >"$CONTAINERD_CERTS_DIR/$REGISTRY_ADDR/hosts.toml" <<HOSTS
server = "https://$REGISTRY_ADDR"
[host."https://$REGISTRY_ADDR"]
  capabilities = ["pull", "resolve", "push"]
  ca = "$PKI/ca.crt"
HOSTS
cat >"$CONTAINERD_CONFIG" <<CTD
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
[grpc]
  address = "$CONTAINERD_SOCK"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$PAUSE_IMAGE"
  [plugins.'io.containerd.cri.v1.images'.registry]
    config_path = "$CONTAINERD_CERTS_DIR"
[plugins.'io.containerd.cri.v1.runtime']
  # these VMs lack CAP_SYS_RESOURCE: runc may not lower oom_score_adj
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$LAB_BIN/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "/etc/cni/net.d"
CTD
start_daemon containerd containerd --config "$CONTAINERD_CONFIG"
wait_for 60 containerd ctr --address "$CONTAINERD_SOCK" version
# node 2's namespaces, relay and containerd (hack/lab-node2.sh), before the images go in
"$here/lab-node2.sh" runtime
# the CRI-O node's namespaces, relay and CRI-O (hack/lab-node3.sh)
"$here/lab-node3.sh" runtime

"$here/lab-images.sh"
"$here/build-helper-image.sh"

# --- controller-manager, scheduler, kubelet ------------------------------------------------
start_daemon kube-controller-manager kube-controller-manager \
  --kubeconfig="$LAB_DIR/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$LAB_DIR/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$LAB_DIR/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=10257 --leader-elect=false \
  --service-account-private-key-file="$PKI/sa.key" --root-ca-file="$PKI/ca.crt" \
  --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
  --use-service-account-credentials=true --controllers='*,bootstrapsigner,tokencleaner' \
  --service-cluster-ip-range="$LAB_SERVICE_CIDR" --v=1
start_daemon kube-scheduler kube-scheduler --kubeconfig="$LAB_DIR/scheduler.kubeconfig" \
  --authentication-kubeconfig="$LAB_DIR/scheduler.kubeconfig" \
  --authorization-kubeconfig="$LAB_DIR/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --secure-port=10259 --leader-elect=false --v=1

mkdir -p /var/lib/kubelet
write_kubelet_config "$LAB_DIR/kubelet-config.yaml" "$LAB_NODE_IP" kubelet-serving
start_daemon kubelet kubelet --kubeconfig="$LAB_DIR/kubelet.kubeconfig" \
  --config="$LAB_DIR/kubelet-config.yaml" --root-dir=/var/lib/kubelet \
  --hostname-override="$NODE_NAME" --node-ip="$LAB_NODE_IP" --v=1
"$here/lab-node2.sh" kubelet
"$here/lab-node3.sh" kubelet

# The API server reaches the kubelet (logs, exec, port-forward) as user kube-apiserver; the
# kubelet's checkpoint API is a permission of its own (nodes/checkpoint), not in
# system:kubelet-api-admin, so callers of it through the node proxy need it granted as well.
kctl apply -f - >/dev/null <<'RBAC'
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: cedana-lab:kube-apiserver-kubelet-api-admin
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: system:kubelet-api-admin}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata:
  name: cedana-lab:kubelet-checkpoint
rules:
- {apiGroups: [""], resources: [nodes/checkpoint], verbs: [create]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: cedana-lab:kube-apiserver-kubelet-checkpoint
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cedana-lab:kubelet-checkpoint}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: User, name: kube-apiserver}
---
# CRI-O's second runtime: pods of this class run with runc instead of crun (hack/lab-node3.sh)
apiVersion: node.k8s.io/v1
kind: RuntimeClass
metadata:
  name: cedana-lab-runc
handler: runc
RBAC

wait_for 180 "node $NODE_NAME Ready" node_ready "$NODE_NAME"
if [ "$LAB_NODE2" = 1 ]; then
  wait_for 180 "node $NODE2_NAME Ready" "$here/lab-node2.sh" healthy
fi
if [ "$LAB_NODE3" = 1 ]; then
  wait_for 180 "node $NODE3_NAME Ready" "$here/lab-node3.sh" healthy
fi
wait_for 60 "default service account" kctl -n default get serviceaccount default
log "lab is up: export KUBECONFIG=$KUBECONFIG_ADMIN"
