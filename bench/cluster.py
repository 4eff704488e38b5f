"""(a) `kubectl cedana checkpoint/restore --into` end to end (a Checkpoint and a Restore object
through the API server, reconciled by the helper DaemonSet, watched by the plugin) and (b) the
helper's REST calls alone (POST /checkpoint and /restore to a helper of this checkout run as a
host process).

Both checkpoint a memhog pod with leave_running and restore into a sleeping placeholder pod
made beforehand (outside the timing), as `migrate` does."""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from bench.procs import BenchError, FileProbe, ReadyTiming, run, timed_run, until_ready, wait_for
from tests.e2e.helper import HelperProcess, start_helper, stop_helper

SLEEP_CMD = ["/bin/sh", "-c", "while true; do sleep 3600; done"]
RUNC_ROOT = "/run/containerd/runc/k8s.io"
REPO = Path(__file__).resolve().parents[1]


class Cluster:
    """Pods of one benchmark namespace, and the helper DaemonSet (installed if missing)."""

    def __init__(self, kubeconfig: str, venv_bin: Path, image: str, interval_ms: int) -> None:
        self.kubeconfig = kubeconfig
        self.env = {**os.environ, "KUBECONFIG": kubeconfig,
                    "PATH": f"{venv_bin}:{os.environ.get('PATH', '')}"}
        self.image = image
        self.interval_ms = interval_ms
        self.namespace = f"cedana-bench-{uuid.uuid4().hex[:6]}"
        # this machine's own node (the lab may have more): its kubelet's log files are local
        self.node = os.environ.get("BENCH_NODE", "cedana-lab-node1")
        self.helper_version: dict[str, Any] = {}
        self.sources: dict[int, str] = {}
        self.spare: dict[tuple[str, int], list[str]] = {}

    def kubectl(self, *args: str, input_text: str | None = None, check: bool = True,
                timeout: float = 120) -> Any:
        return run(["kubectl", *args], env=self.env, input_text=input_text, check=check,
                   timeout=timeout)

    def cedana(self, *args: str) -> list[str]:
        return ["kubectl", "cedana", "-n", self.namespace, *args]

    def setup(self) -> None:
        self.kubectl("create", "namespace", self.namespace)

    def ensure_helper(self) -> None:
        """`kubectl cedana install` is idempotent; other engineers' tests may uninstall it.
        The helper's readiness and version come from the API (`kubectl cedana version`), as
        (a) reaches the helper only through the API."""
        run(["kubectl", "cedana", "install", "--timeout", "3m"], env=self.env, timeout=240)
        wait_for(f"a ready helper on node {self.node}", self._helper_ready, timeout=60)

    def _helper_ready(self) -> bool:
        listed = run(["kubectl", "cedana", "version", "-o", "json"], env=self.env, check=False)
        if listed.returncode != 0:
            return False
        mine = [n for n in json.loads(listed.stdout)["nodes"]
                if n["node"] == self.node and n["ready"]]
        if mine:
            self.helper_version = {"helper": mine[0]["helper"], "image": mine[0]["image"]}
        return bool(mine)

    def pod(self, name: str, command: list[str]) -> dict[str, Any]:
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                         "nodeName": self.node,  # the node whose logs and helper we read
                         "containers": [{"name": "main", "image": self.image,
                                         "imagePullPolicy": "Never", "command": command}]}}

    def create_pods(self, pods: list[dict[str, Any]]) -> None:
        doc = {"apiVersion": "v1", "kind": "List", "items": pods}
        self.kubectl("-n", self.namespace, "apply", "-f", "-", input_text=json.dumps(doc))
        names = [p["metadata"]["name"] for p in pods]
        wait_for(f"pods {', '.join(names)} running", lambda: self._all_running(names),
                 timeout=300, interval=0.5)

    def _all_running(self, names: list[str]) -> bool:
        listed = self.kubectl("-n", self.namespace, "get", "pods", "-o", "json", check=False)
        if listed.returncode != 0:  # e.g. the API server restarting: ask again
            return False
        items = json.loads(listed.stdout)["items"]
        state = {p["metadata"]["name"]: p for p in items}
        for name in names:
            statuses = state.get(name, {}).get("status", {}).get("containerStatuses") or []
            if not statuses or "running" not in statuses[0].get("state", {}):
                return False
        return True

    def log_path(self, name: str) -> Path:
        obj = json.loads(self.kubectl("-n", self.namespace, "get", "pod", name, "-o",
                                      "json").stdout)
        uid = obj["metadata"]["uid"]
        return Path(f"/var/log/pods/{self.namespace}_{name}_{uid}/main/0.log")

    def prepare_size(self, mib: int, runs: int, methods: list[str]) -> None:
        """The memhog pod of this size and, in one batch, a placeholder per run and method."""
        if mib in self.sources:
            return
        name = f"memhog-{mib}"
        pods = [self.pod(name, ["/usr/local/bin/memhog", str(mib), str(self.interval_ms)])]
        for method in methods:
            names = [f"ph-{method}-{mib}-{i}-{uuid.uuid4().hex[:4]}" for i in range(runs + 2)]
            self.spare[(method, mib)] = names
            pods += [self.pod(n, SLEEP_CMD) for n in names]
        self.create_pods(pods)
        log = self.log_path(name)
        wait_for(f"{name} heartbeat", FileProbe(lambda: log), timeout=120)
        self.sources[mib] = name

    def placeholder(self, method: str, mib: int) -> str:
        names = self.spare[(method, mib)]
        if not names:  # more retries than foreseen
            names.extend(f"ph-{method}-{mib}-x-{uuid.uuid4().hex[:4]}" for _ in range(1))
            self.create_pods([self.pod(n, SLEEP_CMD) for n in names])
        return names.pop(0)

    def finish_size(self, mib: int) -> None:
        leftovers = [self.sources.pop(mib)] if mib in self.sources else []
        for key in [k for k in self.spare if k[1] == mib]:
            leftovers += self.spare.pop(key)
        self.delete_pods(leftovers)

    def delete_pods(self, names: list[str]) -> None:
        if names:
            self.kubectl("-n", self.namespace, "delete", "pod", *names, "--grace-period=0",
                         "--force", "--wait=true", check=False, timeout=300)

    def restore_probe(self, placeholder: str) -> FileProbe:
        log = self.log_path(placeholder)
        offset = log.stat().st_size if log.exists() else 0
        return FileProbe(lambda: log, offset)

    def teardown(self) -> None:
        self.kubectl("delete", "namespace", self.namespace, "--wait=false", check=False)


class PluginEndToEnd:
    """(a): `kubectl cedana checkpoint POD --leave-running` and `restore ID --into PLACEHOLDER`:
    each creates an object (Checkpoint, Restore) and watches it until the helper is done."""

    name = "a"
    label = "kubectl cedana"

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def setup(self) -> None:
        return None

    def start_source(self, mib: int) -> None:
        return None  # Cluster.prepare_size made the memhog pod shared by (a) and (b)

    def checkpoint(self, mib: int, run_no: int) -> tuple[float, int, str]:
        ms, result = timed_run(self.cluster.cedana("checkpoint", self.cluster.sources[mib],
                                                   "--leave-running", "-o", "json"),
                               env=self.cluster.env)
        status = json.loads(result.stdout)["status"]  # the Checkpoint object, Succeeded
        return ms, int(status["sizeBytes"]), str(status["checkpointID"])

    def restore(self, mib: int, checkpoint_id: str) -> ReadyTiming:
        target = self.cluster.placeholder(self.name, mib)
        probe = self.cluster.restore_probe(target)
        try:
            return until_ready(lambda: run(self.cluster.cedana("restore", checkpoint_id,
                                                               "--into", target, "-o", "json"),
                                           env=self.cluster.env), probe)
        finally:  # deleting the object has its helper delete the data; --wait: before the
            # next run, so that deletion's I/O is not measured with it
            run(self.cluster.cedana("checkpoints", "rm", checkpoint_id, "--wait"),
                env=self.cluster.env, check=False)
            self.cluster.delete_pods([target])

    def stop_source(self, mib: int) -> None:
        return None

    def teardown(self) -> None:
        return None


class HelperRest:
    """(b): the helper's POST /checkpoint and POST /restore alone, sent to a helper that the
    benchmark runs as a host process on 127.0.0.1 with tests/e2e/helper.py (as the tests do),
    from this checkout, with `--authorization none`: no kubectl, no plugin, no API server, and
    no dependence on the shared DaemonSet pod that other users reinstall."""

    name = "b"
    label = "helper REST"

    def __init__(self, cluster: Cluster, work: Path) -> None:
        self.cluster = cluster
        self.work = work / "helper"
        self.helper: HelperProcess | None = None

    @property
    def url(self) -> str:
        assert self.helper is not None, "setup() first"
        return self.helper.url

    def setup(self) -> None:
        try:
            self.helper = start_helper("bench", self.work / "checkpoints",
                                       extra_args=["--criu", "/usr/local/sbin/criu"],
                                       env={"NODE_NAME": self.cluster.node})
        except AssertionError as exc:
            raise BenchError(str(exc)) from exc

    def post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(self.url + route, json=body, timeout=600)
        if response.status_code != 200:
            raise BenchError(f"helper {route}: {response.status_code} {response.text[:1500]}")
        return dict(response.json())

    def delete_checkpoint(self, checkpoint_id: str) -> None:
        try:
            requests.delete(f"{self.url}/checkpoints/{checkpoint_id}", timeout=60)
        except requests.RequestException:
            pass

    def checkpoint_dir(self, checkpoint_id: str) -> Path:
        return self.work / "checkpoints" / checkpoint_id

    def start_source(self, mib: int) -> None:
        return None

    def data(self, pod: str) -> dict[str, str]:
        return {"container_name": "main", "sandbox_name": pod,
                "namespace": self.cluster.namespace, "root": RUNC_ROOT}

    def checkpoint(self, mib: int, run_no: int) -> tuple[float, int, str]:
        start = time.monotonic()
        body = self.post("/checkpoint", {
            "checkpoint_data": {**self.data(self.cluster.sources[mib]), "checkpoint_path": ""},
            "leave_running": True})
        ms = (time.monotonic() - start) * 1000.0
        return ms, int(body["size_bytes"]), str(body["checkpoint_id"])

    def restore(self, mib: int, checkpoint_id: str) -> ReadyTiming:
        target = self.cluster.placeholder(self.name, mib)
        probe = self.cluster.restore_probe(target)
        try:
            return until_ready(lambda: self.post("/restore", {
                "checkpoint_data": {**self.data(target), "checkpoint_id": checkpoint_id}}),
                probe)
        finally:
            self.delete_checkpoint(checkpoint_id)
            self.cluster.delete_pods([target])

    def stop_source(self, mib: int) -> None:
        return None

    def teardown(self) -> None:
        if self.helper is not None:
            stop_helper(self.helper)
        shutil.rmtree(self.work / "checkpoints", ignore_errors=True)


class KubeletCheckpointApi:
    """(e): the kubelet's own checkpoint API (ContainerCheckpoint, beta and on since 1.30),
    `POST /checkpoint/NAMESPACE/POD/CONTAINER` through the API server's node proxy with
    `kubectl create --raw`, as a user would call it: containerd dumps the container with runc
    and CRIU into an archive under /var/lib/kubelet/checkpoints. Dump only: Kubernetes has no
    restore API, so its restore column stays empty."""

    name = "e"
    label = "kubelet checkpoint API"
    dump_only = True

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def setup(self) -> None:
        return None

    def start_source(self, mib: int) -> None:
        return None  # Cluster.prepare_size made the memhog pod

    def checkpoint(self, mib: int, run_no: int) -> tuple[float, int, str]:
        path = (f"/api/v1/nodes/{self.cluster.node}/proxy/checkpoint/{self.cluster.namespace}/"
                f"{self.cluster.sources[mib]}/main?timeout=600")
        ms, result = timed_run(["kubectl", "create", "--raw", path, "-f", "/dev/null"],
                               env=self.cluster.env, timeout=660)
        archive = Path(json.loads(result.stdout)["items"][0])
        return ms, archive.stat().st_size, str(archive)

    def discard(self, archive: str) -> None:
        Path(archive).unlink(missing_ok=True)

    def stop_source(self, mib: int) -> None:
        return None

    def teardown(self) -> None:
        return None



class ResourcePath:
    """(f): a Checkpoint object created with the Kubernetes client (no kubectl, no plugin start-up)
    and watched until its helper reports it final: the API server, admission, the watch and the
    reconciler are what it adds. Dump only, paired with (g) on the same helper."""

    name = "f"
    label = "Checkpoint object"
    dump_only = True

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.api: Any = None

    def setup(self) -> None:
        from kubernetes import client, config

        self.cluster.ensure_helper()
        self.api = client.CustomObjectsApi(
            config.new_client_from_config(config_file=self.cluster.kubeconfig))

    def start_source(self, mib: int) -> None:
        return None

    def checkpoint(self, mib: int, run_no: int) -> tuple[float, int, str]:
        from kubernetes import watch

        ns = self.cluster.namespace
        body = {"apiVersion": "cedana.io/v1alpha1", "kind": "Checkpoint",
                "metadata": {"generateName": f"bench-{mib}-",
                             "labels": {"cedana.io/node": self.cluster.node}},
                "spec": {"podName": self.cluster.sources[mib], "leaveRunning": True}}
        start = time.monotonic()
        created = self.api.create_namespaced_custom_object("cedana.io", "v1alpha1", ns,
                                                           "checkpoints", body)
        name = created["metadata"]["name"]
        final: dict[str, Any] = {}
        stream = watch.Watch()
        for event in stream.stream(self.api.list_namespaced_custom_object, "cedana.io",
                                   "v1alpha1", ns, "checkpoints",
                                   field_selector=f"metadata.name={name}",
                                   resource_version=created["metadata"]["resourceVersion"],
                                   timeout_seconds=600):
            status = event["object"].get("status") or {}
            if status.get("phase") in ("Succeeded", "Failed"):
                final = status
                stream.stop()
        ms = (time.monotonic() - start) * 1000.0
        if final.get("phase") != "Succeeded":
            raise BenchError(f"Checkpoint {name}: {final.get('phase') or 'no final phase'} "
                             f"{final.get('errorCode', '')} {final.get('message', '')}")
        return ms, int(final["sizeBytes"]), str(name)

    def discard(self, name: str) -> None:
        """Delete the object and wait until its helper removed the data (the finalizer)."""
        ns = self.cluster.namespace
        self.api.delete_namespaced_custom_object("cedana.io", "v1alpha1", ns, "checkpoints",
                                                 name)
        wait_for(f"Checkpoint {name} gone", lambda: not self.cluster.kubectl(
            "-n", ns, "get", "checkpoints.cedana.io", name, "--ignore-not-found", "-o",
            "name").stdout.strip(), timeout=120, interval=0.2)

    def stop_source(self, mib: int) -> None:
        return None

    def teardown(self) -> None:
        return None


class RestSameHelper:
    """(g): POST /checkpoint to the same DaemonSet helper as (f), on its node's loopback (this
    machine is the lab's first node), with a ServiceAccount's bearer token as a REST client
    sends it: the helper's TokenReview and SubjectAccessReview are in the figure, the API
    server's object path is not."""

    name = "g"
    label = "helper REST, same helper"
    dump_only = True
    url = "http://127.0.0.1:1324"

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.token = ""

    def setup(self) -> None:
        self.cluster.ensure_helper()
        ns = self.cluster.namespace
        self.cluster.kubectl("-n", ns, "create", "serviceaccount", "bench")
        self.cluster.kubectl("-n", ns, "create", "rolebinding", "bench",
                             "--clusterrole=cedana-checkpointer", f"--serviceaccount={ns}:bench")
        self.token = self.cluster.kubectl("-n", ns, "create", "token", "bench",
                                          "--duration=6h").stdout.strip()
        wait_for("the helper on 127.0.0.1:1324", self._healthy, timeout=60)

    def _healthy(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def start_source(self, mib: int) -> None:
        return None

    def checkpoint(self, mib: int, run_no: int) -> tuple[float, int, str]:
        body: dict[str, Any] = {"checkpoint_data": {"container_name": "main",
                                                    "sandbox_name": self.cluster.sources[mib],
                                                    "namespace": self.cluster.namespace,
                                                    "root": RUNC_ROOT},
                                "leave_running": True}
        start = time.monotonic()
        answer = requests.post(self.url + "/checkpoint", json=body, timeout=600,
                               headers={"Authorization": f"Bearer {self.token}"})
        ms = (time.monotonic() - start) * 1000.0
        if answer.status_code != 200:
            raise BenchError(f"POST /checkpoint: {answer.status_code} {answer.text[:1500]}")
        data = answer.json()
        return ms, int(data["size_bytes"]), str(data["checkpoint_id"])

    def discard(self, checkpoint_id: str) -> None:
        requests.delete(f"{self.url}/checkpoints/{checkpoint_id}", timeout=120,
                        headers={"Authorization": f"Bearer {self.token}"})

    def stop_source(self, mib: int) -> None:
        return None

    def teardown(self) -> None:
        return None
