"""The plugin's pod logic: container choice, whether it runs, the rows of `list`, and the
permission a request needs (the placeholder logic shared with the helper: podspec_test.py)."""
from __future__ import annotations

from typing import Any

import pytest

from kubectl_cedana.errors import ConflictError, NotFoundError, UsageError
from kubectl_cedana.kube import can_i_command, required_permission
from kubectl_cedana.pods import container_rows, running_container, select_container
from tests.unit.plugin_fakeapi import make_pod


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


@pytest.mark.parametrize("method,path,expected", [
    ("POST", "/apis/cedana.io/v1alpha1/namespaces/demo/checkpoints",
     "create checkpoints.cedana.io in namespace demo"),
    ("GET", "/apis/cedana.io/v1alpha1/namespaces/demo/checkpoints/c-1",
     "get checkpoints.cedana.io in namespace demo"),
    ("GET", "/apis/cedana.io/v1alpha1/namespaces/demo/restores?watch=true&x=1",
     "watch restores.cedana.io in namespace demo"),
    ("GET", "/apis/cedana.io/v1alpha1/checkpoints", "list checkpoints.cedana.io"),
    ("DELETE", "/apis/cedana.io/v1alpha1/namespaces/demo/checkpoints/c-1",
     "delete checkpoints.cedana.io in namespace demo"),
    ("POST", "/apis/authentication.k8s.io/v1/selfsubjectreviews",
     "create selfsubjectreviews.authentication.k8s.io"),
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
    assert can_i_command("create checkpoints.cedana.io in namespace demo") == \
        "kubectl auth can-i create checkpoints.cedana.io -n demo"
    assert can_i_command("create pods/proxy in namespace cedana-system") == \
        "kubectl auth can-i create pods --subresource=proxy -n cedana-system"
    assert can_i_command("list checkpoints.cedana.io") == \
        "kubectl auth can-i list checkpoints.cedana.io --all-namespaces"
    assert can_i_command("list nodes") == "kubectl auth can-i list nodes"
    assert can_i_command("list pods") == "kubectl auth can-i list pods --all-namespaces"
    assert can_i_command("patch clusterroles.rbac.authorization.k8s.io") == \
        "kubectl auth can-i patch clusterroles.rbac.authorization.k8s.io"


def test_container_rows_of_list() -> None:
    pod = make_pod("web", "shop", node="n2", containers=("app", "proxy"))
    pod["status"]["containerStatuses"][1].update(
        state={"waiting": {"reason": "CrashLoopBackOff"}}, restartCount=4,
        containerID="containerd://ffee")
    app, proxy = container_rows(pod)
    assert (app["namespace"], app["pod"], app["container"], app["node"], app["status"]) == \
        ("shop", "web", "app", "n2", "running")
    assert len(app["container_id"]) == 64 and app["runtime"] == "containerd"
    assert (proxy["status"], proxy["reason"], proxy["restarts"], proxy["container_id"]) == \
        ("waiting", "CrashLoopBackOff", 4, "ffee")
    pod["metadata"]["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    assert container_rows(pod)[0]["status"] == "terminating"
    unscheduled = make_pod("new", running=False)
    del unscheduled["spec"]["nodeName"]
    assert [(r["node"], r["status"]) for r in container_rows(unscheduled)] == [("", "waiting")]
