"""Pure pod logic: container choice, runtime IDs, placeholder construction, readiness."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from kubectl_cedana.errors import CedanaError, ConflictError, NotFoundError, UsageError
from kubectl_cedana.kube import can_i_command, required_permission
from kubectl_cedana.pods import (
    SLEEP_COMMAND,
    build_placeholder_pod,
    checkpoint_metadata_patch,
    parse_container_id,
    placeholder_running,
    running_container,
    select_container,
)
from tests.unit.plugin_fakeapi import make_pod


@pytest.mark.parametrize("raw,expected", [
    ("containerd://0123abcd", ("containerd", "0123abcd")),
    ("cri-o://ffee", ("cri-o", "ffee")),
    ("docker://1234", ("docker", "1234")),
    ("deadbeef", ("", "deadbeef")),
    ("", ("", "")),
    (None, ("", "")),
])
def test_parse_container_id(raw: Any, expected: Any) -> None:
    assert parse_container_id(raw) == expected


def test_select_container() -> None:
    single = make_pod("one")
    assert select_container(single, None) == "main"
    assert select_container(single, "main") == "main"
    multi = make_pod("web", containers=("app", "proxy", "log"))
    assert select_container(multi, "proxy") == "proxy"
    with pytest.raises(UsageError) as ambiguous:
        select_container(multi, None)
    assert ambiguous.value.one_line() == ('pod "web" has 3 containers: app, proxy, log '
                                          "(choose one with -c CONTAINER)")
    with pytest.raises(NotFoundError) as missing:
        select_container(multi, "db")
    assert "containers: app, proxy, log" in missing.value.one_line()


def test_running_container_reads_node_and_id() -> None:
    pod = make_pod("counter", "demo", node="n7")
    pod["status"]["containerStatuses"][0]["containerID"] = "containerd://abc123"
    ref = running_container(pod, "main")
    assert (ref.namespace, ref.pod, ref.container, ref.node) == ("demo", "counter", "main", "n7")
    assert (ref.runtime, ref.container_id, ref.image) == ("containerd", "abc123", "busybox:1.36")


@pytest.mark.parametrize("mutate,fragment", [
    (lambda p: p["spec"].pop("nodeName"), "not scheduled"),
    (lambda p: p["status"].update(phase="Pending"), "not running (phase Pending)"),
    (lambda p: p["metadata"].update(deletionTimestamp="2024-01-01T00:00:00Z"), "being deleted"),
    (lambda p: p["status"]["containerStatuses"][0].update(
        state={"waiting": {"reason": "CrashLoopBackOff"}}), "(waiting: CrashLoopBackOff)"),
])
def test_running_container_conflicts(mutate: Any, fragment: str) -> None:
    pod = make_pod("counter")
    mutate(pod)
    with pytest.raises(ConflictError) as err:
        running_container(pod, "main")
    assert fragment in err.value.one_line()


def _source() -> dict[str, Any]:
    pod = make_pod("counter-5d8f7-abcde", "demo", containers=("app", "sidecar"), node="n1",
                   labels={"app": "counter", "pod-template-hash": "5d8f7"})
    pod["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "name": "counter-5d8f7"}]
    pod["metadata"]["annotations"]["container.apparmor.security.beta.kubernetes.io/app"] = \
        "runtime/default"
    pod["spec"]["containers"][0].update(startupProbe={"exec": {"command": ["true"]}},
                                        lifecycle={"postStart": {"exec": {"command": ["x"]}}},
                                        workingDir="/work", securityContext={"runAsUser": 1000},
                                        envFrom=[{"configMapRef": {"name": "cfg"}}])
    pod["spec"].update(affinity={"nodeAffinity": {}}, priorityClassName="high", priority=1000,
                       preemptionPolicy="PreemptLowerPriority", serviceAccountName="worker",
                       tolerations=[{"operator": "Exists"}], hostname="counter")
    return pod


def test_placeholder_keeps_what_the_restore_needs() -> None:
    source = _source()
    snapshot = copy.deepcopy(source)
    pod = build_placeholder_pod(source, "app", "counter-restored", node="n2",
                                checkpoint_id="1b2c3d4e-0000-4000-8000-000000000001")
    assert source == snapshot  # the source object is not modified
    original = source["spec"]["containers"][0]
    assert pod["apiVersion"] == "v1" and pod["kind"] == "Pod"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app"]
    container = pod["spec"]["containers"][0]
    for same in ("image", "env", "envFrom", "resources", "volumeMounts", "workingDir",
                 "securityContext"):
        assert container[same] == original[same], same
    assert pod["spec"]["volumes"] == source["spec"]["volumes"]
    for same in ("serviceAccountName", "tolerations", "priorityClassName", "restartPolicy",
                 "hostname"):
        assert pod["spec"][same] == source["spec"][same], same


def test_placeholder_sleeps_without_probes_and_is_pinned() -> None:
    pod = build_placeholder_pod(_source(), "app", "copy", node="n2")
    container = pod["spec"]["containers"][0]
    assert container["command"] == SLEEP_COMMAND == ["/bin/sh", "-c",
                                                     "while true; do sleep 3600; done"]
    for gone in ("args", "livenessProbe", "readinessProbe", "startupProbe", "lifecycle"):
        assert gone not in container
    assert container["ports"] == [{"containerPort": 8080, "protocol": "TCP"}]
    assert pod["spec"]["nodeName"] == "n2"
    for gone in ("initContainers", "nodeSelector", "affinity", "priority", "preemptionPolicy"):
        assert gone not in pod["spec"]
    assert "status" not in pod


def test_placeholder_metadata_records_the_checkpoint_not_the_source_labels() -> None:
    ident = "1b2c3d4e-0000-4000-8000-000000000001"
    pod = build_placeholder_pod(_source(), "app", "copy", node="n1", checkpoint_id=ident,
                                session="s1")
    meta = pod["metadata"]
    assert meta["name"] == "copy" and meta["namespace"] == "demo"
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "kubectl-cedana",
                              "cedana.io/source-pod": "counter-5d8f7-abcde",
                              "cedana.io/checkpoint-id": ident}
    assert meta["annotations"] == {
        "cedana.io/source-pod": "counter-5d8f7-abcde", "cedana.io/source-container": "app",
        "cedana.io/source-node": "n1", "cedana.io/checkpoint-id": ident,
        "cedana.io/restore-session": "s1",
        "container.apparmor.security.beta.kubernetes.io/app": "runtime/default"}
    assert "ownerReferences" not in meta


def test_placeholder_other_namespace_and_unlabelable_values() -> None:
    long_name = "p" * 70
    source = make_pod(long_name, "demo")
    pod = build_placeholder_pod(source, "main", "copy", node="n1", checkpoint_id="x" * 80,
                                namespace="other")
    assert pod["metadata"]["namespace"] == "other"
    assert "cedana.io/source-pod" not in pod["metadata"]["labels"]
    assert "cedana.io/checkpoint-id" not in pod["metadata"]["labels"]
    assert pod["metadata"]["annotations"]["cedana.io/source-pod"] == long_name
    assert checkpoint_metadata_patch("x" * 80) == {
        "metadata": {"annotations": {"cedana.io/checkpoint-id": "x" * 80}}}


def test_placeholder_unknown_container() -> None:
    with pytest.raises(NotFoundError):
        build_placeholder_pod(make_pod("a"), "nope", "copy", node="n1")


def _placeholder(phase: str, state: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "copy"},
            "status": {"phase": phase, "containerStatuses": [dict(name="main", state=state,
                                                                  **extra)]}}


def test_placeholder_running_states() -> None:
    assert placeholder_running(_placeholder("Running", {"running": {}}), "main") == (True, "")
    assert placeholder_running(_placeholder("Pending", {"waiting": {
        "reason": "ContainerCreating"}}), "main") == (False, "ContainerCreating")
    assert placeholder_running({"metadata": {"name": "copy"}, "status": {}}, "main") == \
        (False, "Pending")
    with pytest.raises(CedanaError, match="ErrImageNeverPull"):
        placeholder_running(_placeholder("Pending", {"waiting": {
            "reason": "ErrImageNeverPull", "message": "no image"}}), "main")
    with pytest.raises(CedanaError, match="ended \\(phase Failed, OutOfcpu\\)"):
        placeholder_running({"metadata": {"name": "copy"},
                             "status": {"phase": "Failed", "reason": "OutOfcpu"}}, "main")
    with pytest.raises(CedanaError) as no_shell:
        placeholder_running(_placeholder("Running", {"terminated": {
            "reason": "StartError", "exitCode": 128,
            "message": 'exec: "/bin/sh": stat /bin/sh: no such file'}}), "main")
    assert "/bin/sh" in no_shell.value.one_line() and "--into" in no_shell.value.one_line()


@pytest.mark.parametrize("method,path,expected", [
    ("POST", "/api/v1/namespaces/cedana-system/pods/h-1:1324/proxy/checkpoint",
     "create pods/proxy in namespace cedana-system"),
    ("GET", "/api/v1/namespaces/cedana-system/pods/h-1:1324/proxy/list/default",
     "get pods/proxy in namespace cedana-system"),
    ("DELETE", "/api/v1/namespaces/cedana-system/pods/h-1:1324/proxy/checkpoints/x",
     "delete pods/proxy in namespace cedana-system"),
    ("GET", "/api/v1/namespaces/cedana-system/pods?labelSelector=a%3Db",
     "list pods in namespace cedana-system"),
    ("GET", "/api/v1/pods", "list pods"),
    ("GET", "/api/v1/nodes", "list nodes"),
    ("GET", "/api/v1/namespaces/demo/pods/x", "get pods in namespace demo"),
    ("POST", "/api/v1/namespaces/demo/pods", "create pods in namespace demo"),
    ("GET", "/api/v1/namespaces/cedana-system", "get namespaces"),
    ("PATCH", "/apis/apps/v1/namespaces/cedana-system/daemonsets/cedana-helper",
     "patch daemonsets.apps in namespace cedana-system"),
    ("PATCH", "/apis/rbac.authorization.k8s.io/v1/clusterroles/cedana-helper",
     "patch clusterroles.rbac.authorization.k8s.io"),
    ("DELETE", "/api/v1/namespaces/demo/pods", "deletecollection pods in namespace demo"),
])
def test_required_permission(method: str, path: str, expected: str) -> None:
    assert required_permission(method, path) == expected


def test_can_i_command() -> None:
    assert can_i_command("create pods/proxy in namespace cedana-system") == \
        "kubectl auth can-i create pods --subresource=proxy -n cedana-system"
    assert can_i_command("list nodes") == "kubectl auth can-i list nodes"
    assert can_i_command("list pods") == "kubectl auth can-i list pods --all-namespaces"
    assert can_i_command("patch clusterroles.rbac.authorization.k8s.io") == \
        "kubectl auth can-i patch clusterroles.rbac.authorization.k8s.io"
