#!/usr/bin/env bash
# Certificates and kubeconfigs for the lab, made once with openssl and kept in $LAB_DIR/pki.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
mkdir -p "$PKI" && chmod 700 "$PKI"
cd "$PKI"

if [ ! -f ca.crt ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
    -subj "/CN=cedana-lab-ca" 2>/dev/null
fi

# cert NAME CN O SANS  (SANS empty for a client certificate)
cert() {
  local name=$1 cn=$2 org=$3 sans=$4
  [ -f "$name.crt" ] && return 0
  local subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org/CN=$cn"
  local ext="$name.ext"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$sans" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$sans"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } >"$ext"
  openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
    -extfile "$ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

cert apiserver kube-apiserver "" \
  "IP:127.0.0.1,IP:$LAB_NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert apiserver-kubelet-client kube-apiserver "" ""
cert admin admin system:masters ""
cert controller-manager system:kube-controller-manager "" ""
cert scheduler system:kube-scheduler "" ""
# The kubelet's client certificate, signed by the cluster CA for the node's identity
# (system:node:NAME in group system:nodes), which is what an approved kubelet CSR yields.
cert kubelet "system:node:$NODE_NAME" system:nodes ""
cert kubelet-serving "$NODE_NAME" "" "IP:$LAB_NODE_IP,IP:127.0.0.1,DNS:$NODE_NAME"
# the second node (hack/lab-node2.sh), the same way
cert kubelet-node2 "system:node:$NODE2_NAME" system:nodes ""
cert kubelet-node2-serving "$NODE2_NAME" "" "IP:$NODE2_IP,IP:127.0.0.1,DNS:$NODE2_NAME"
# the CRI-O node (hack/lab-node3.sh), the same way
cert kubelet-node3 "system:node:$NODE3_NAME" system:nodes ""
cert kubelet-node3-serving "$NODE3_NAME" "" "IP:$NODE3_IP,IP:127.0.0.1,DNS:$NODE3_NAME"
cert registry registry "" "IP:127.0.0.1,DNS:localhost"
[ -f sa.key ] || { openssl genrsa -out sa.key 2048 2>/dev/null; openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null; }
chmod 600 ./*.key

kubeconfig() {  # kubeconfig FILE CERTNAME USER
  local file=$1 certname=$2 user=$3
  cat >"$file" <<KC
apiVersion: v1
kind: Config
clusters:
- name: cedana-lab
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority: $PKI/ca.crt
users:
- name: $user
  user:
    client-certificate: $PKI/$certname.crt
    client-key: $PKI/$certname.key
contexts:
- name: cedana-lab
  context: {cluster: cedana-lab, user: $user, namespace: default}
current-context: cedana-lab
KC
  chmod 600 "$file"
}
kubeconfig "$KUBECONFIG_ADMIN" admin admin
kubeconfig "$LAB_DIR/controller-manager.kubeconfig" controller-manager system:kube-controller-manager
kubeconfig "$LAB_DIR/scheduler.kubeconfig" scheduler system:kube-scheduler
kubeconfig "$LAB_DIR/kubelet.kubeconfig" kubelet "system:node:$NODE_NAME"
# node 2 reaches https://127.0.0.1:6443 on its own loopback through hack/netns_relay.py
kubeconfig "$LAB_DIR/node2.kubeconfig" kubelet-node2 "system:node:$NODE2_NAME"
kubeconfig "$LAB_DIR/node3.kubeconfig" kubelet-node3 "system:node:$NODE3_NAME"

# The registry's password: made once, kept beside the certificates.
[ -f registry.password ] || { openssl rand -hex 16 >registry.password; chmod 600 registry.password; }
