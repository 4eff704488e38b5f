#!/usr/bin/env bash
# make demo: bring up the lab (unless KUBECONFIG names another cluster), run a counter pod,
# checkpoint it and restore it into a new pod, and show the restored counter's log continuing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
repo=$(cd "$here/.." && pwd)
export PATH="$repo/.venv/bin:$PATH"

if [ -z "${KUBECONFIG:-}" ]; then
  "$here/lab-up.sh"
  export KUBECONFIG="$KUBECONFIG_ADMIN"
fi
ns=cedana-demo
kubectl get namespace "$ns" >/dev/null 2>&1 || kubectl create namespace "$ns" >/dev/null
kubectl -n "$ns" delete pod counter --ignore-not-found --wait=true >/dev/null
kubectl -n "$ns" apply -f - >/dev/null <<POD
apiVersion: v1
kind: Pod
metadata: {name: counter, labels: {app: counter}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: counter
    image: $WORKLOAD_IMAGE
    imagePullPolicy: IfNotPresent
    command: ["/usr/local/bin/counter", "/tmp/counter", "500"]
POD
kubectl -n "$ns" wait --for=condition=Ready pod/counter --timeout=120s >/dev/null
sleep 3
echo "== counter pod running; its last log lines:"
kubectl -n "$ns" logs counter --tail=3
echo "== kubectl cedana install"
kubectl cedana install
echo "== kubectl cedana checkpoint counter --leave-running"
id=$(kubectl cedana -n "$ns" checkpoint counter --leave-running)
echo "$id"
kubectl -n "$ns" delete pod counter-restored --ignore-not-found --wait=true >/dev/null
echo "== kubectl cedana restore $id --new-pod counter-restored"
kubectl cedana -n "$ns" restore "$id" --new-pod counter-restored
sleep 3
echo "== the restored counter continues from the checkpointed value (kubectl logs counter-restored):"
kubectl -n "$ns" logs counter-restored --tail=5
echo "== kubectl cedana checkpoints ls"
kubectl cedana -n "$ns" checkpoints ls
