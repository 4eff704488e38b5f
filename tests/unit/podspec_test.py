"""The pod logic the plugin and the node helper share (kubectl_cedana/podspec.py): runtime IDs,
the placeholder a checkpoint is restored into, whether it runs."""
from __future__ import annotations

import copy
from typing import Any

import pytest

from kubectl_cedana.podspec import (
    PAUSE_PROGRAM,
    SLEEP_COMMAND,
    PodSpecError,
    build_placeholder_pod,
    checkpoint_metadata_patch,
    parse_container_id,
    pod_containers,
    take_place_patch,
    take_place_refusal,
    unwrap_command,
    unwrap_placeholder,
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
                                annotations={"cedana.io/restore": "copy-x7k2p"})
    meta = pod["metadata"]
    assert meta["name"] == "copy" and meta["namespace"] == "demo"
    assert meta["labels"] == {"app.kubernetes.io/managed-by": "kubectl-cedana",
                              "cedana.io/source-pod": "counter-5d8f7-abcde",
                              "cedana.io/checkpoint-id": ident}
    assert meta["annotations"] == {
        "cedana.io/source-pod": "counter-5d8f7-abcde", "cedana.io/source-container": "app",
        "cedana.io/source-node": "n1", "cedana.io/checkpoint-id": ident,
        "cedana.io/restore": "copy-x7k2p",
        "kubectl.kubernetes.io/default-container": "app",
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
    with pytest.raises(PodSpecError, match='container "nope" not found in pod "a"'):
        build_placeholder_pod(make_pod("a"), "nope", "copy", node="n1")


def test_the_shared_module_needs_only_the_standard_library() -> None:
    """The helper imports it (the layering test holds it to the standard library too)."""
    import subprocess
    import sys

    probe = ("import sys; sys.modules['yaml'] = sys.modules['click'] = None; "
             "import kubectl_cedana.podspec as p; print(p.SLEEP_COMMAND[0])")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "/bin/sh"


def _with_sidecar() -> dict[str, Any]:
    pod = _source()
    pod["spec"]["initContainers"] = [
        {"name": "setup", "image": "busybox:1.36", "command": ["true"]},
        {"name": "mesh", "image": "mesh:1", "restartPolicy": "Always",
         "readinessProbe": {"exec": {"command": ["true"]}}},
    ]
    return pod


def test_pod_containers_are_native_sidecars_then_containers() -> None:
    assert pod_containers(_with_sidecar()) == ["mesh", "app", "sidecar"]
    assert pod_containers(make_pod("one")) == ["main"]


def test_a_whole_pod_placeholder_keeps_every_container_and_native_sidecar() -> None:
    body = build_placeholder_pod(_with_sidecar(), None, "counter-restored", node="n2")
    spec = body["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app", "sidecar"]
    # the native sidecar stays one (restartPolicy Always); the plain init container ran already
    assert [(c["name"], c.get("restartPolicy")) for c in spec["initContainers"]] == \
        [("mesh", "Always")]
    for container in spec["containers"] + spec["initContainers"]:
        assert container["command"] == SLEEP_COMMAND
        assert not {"livenessProbe", "readinessProbe", "startupProbe"} & set(container)
    assert body["metadata"]["annotations"]["cedana.io/source-container"] == "mesh,app,sidecar"


def test_a_one_container_placeholder_has_no_init_containers() -> None:
    body = build_placeholder_pod(_with_sidecar(), "app", "counter-restored", node="n2")
    assert [c["name"] for c in body["spec"]["containers"]] == ["app"]
    assert "initContainers" not in body["spec"]


def test_a_pause_placeholder_needs_nothing_from_the_image_and_keeps_the_probes() -> None:
    source = _with_sidecar()
    app = source["spec"]["containers"][0]
    app["lifecycle"] = {"preStop": {"exec": {"command": ["drain"]}},
                        "postStart": {"exec": {"command": ["warm"]}}}
    body = build_placeholder_pod(source, None, "copy", node="n2",
                                 pause_image="reg/cedana/helper:1",
                                 commands={"app": ["/app", "--serve"]})
    spec = body["spec"]
    init, mesh = spec["initContainers"]
    # the init container copies cedana-pause from the helper's image, as nobody, read-only
    assert init["image"] == "reg/cedana/helper:1"
    assert init["command"] == ["cp", "/usr/local/bin/cedana-pause", "/.cedana/cedana-pause"]
    assert init["securityContext"]["runAsNonRoot"] is True
    assert {"name": "cedana-placeholder", "emptyDir": {"sizeLimit": "16Mi"}} in spec["volumes"]
    app_sleeper, sidecar_container = spec["containers"]
    # runs cedana-pause; a restart runs the program as the source ran it (the OCI args given)
    assert app_sleeper["command"] == ["/.cedana/cedana-pause", "run", "app", "--",
                                      "/app", "--serve"]
    assert "args" not in app_sleeper
    # the source's probes stay, behind a startup probe that waits for the restored program
    assert app_sleeper["livenessProbe"] == app["livenessProbe"]
    assert app_sleeper["readinessProbe"] == app["readinessProbe"]
    assert app_sleeper["startupProbe"]["exec"]["command"] == ["/.cedana/cedana-pause",
                                                              "restored"]
    assert app_sleeper["lifecycle"] == {"preStop": {"exec": {"command": ["drain"]}}}
    assert {"name": "cedana-placeholder", "mountPath": "/.cedana"} in \
        app_sleeper["volumeMounts"]
    # without a given program: the spec's command and args
    assert sidecar_container["command"][:4] == ["/.cedana/cedana-pause", "run", "sidecar", "--"]
    assert sidecar_container["command"][4:] == ["/bin/counter", "--fast"]
    # a native sidecar gets no probes: the kubelet would hold the pod's containers back
    assert mesh["restartPolicy"] == "Always" and "startupProbe" not in mesh
    assert "readinessProbe" not in mesh


def test_a_restored_pod_takes_the_source_labels_and_owners_but_keeps_its_own() -> None:
    source = make_pod("web-5d8f7-abcde")
    source["metadata"]["labels"] = {"app": "web", "pod-template-hash": "5d8f7",
                                    "cedana.io/source-pod": "older"}
    owner = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f7", "uid": "u-1",
             "controller": True, "blockOwnerDeletion": True}
    source["metadata"]["ownerReferences"] = [owner]
    patch = take_place_patch(source)
    assert patch == {"metadata": {"labels": {"app": "web", "pod-template-hash": "5d8f7"},
                                  "ownerReferences": [owner]}}
    patch["metadata"]["ownerReferences"][0]["name"] = "changed"
    assert owner["name"] == "web-5d8f7"  # a copy, not the source's own list
    bare = make_pod("bare")
    bare["metadata"]["labels"] = {"app": "bare"}
    assert take_place_patch(bare) == {"metadata": {"labels": {"app": "bare"}}}


@pytest.mark.parametrize("kind,refused", [
    (None, False), ("ReplicaSet", False), ("StatefulSet", True), ("DaemonSet", True),
    ("Job", True),
])
def test_which_pods_a_restored_copy_may_replace(kind: str | None, refused: bool) -> None:
    pod = make_pod("p")
    if kind:
        pod["metadata"]["ownerReferences"] = [
            {"kind": "Other", "name": "not-the-controller"},
            {"kind": kind, "name": "owner", "controller": True}]
    why = take_place_refusal(pod)
    assert (why is not None) == refused
    if why:
        assert f"run by {kind} owner" in why


def test_a_placeholder_made_from_a_restored_pod_is_like_the_first() -> None:
    """A chain: a checkpoint of a restored pod is restored into a placeholder made from that
    restored pod, which is itself a placeholder: cedana-pause is not wrapped twice, its volume,
    init container and startup probe not doubled, the program the same."""
    source = make_pod("counter")
    container = source["spec"]["containers"][0]
    container["command"] = ["/usr/local/bin/counter", "/tmp/c"]
    container.pop("args", None)
    container["readinessProbe"] = {"exec": {"command": ["true"]}}
    first = build_placeholder_pod(source, None, "gen1", node="n1", pause_image="helper:1")
    second = build_placeholder_pod(first, None, "gen2", node="n1", pause_image="helper:1")
    assert second["spec"] == first["spec"]
    (again,) = second["spec"]["containers"]
    assert again["command"] == [PAUSE_PROGRAM, "run", "main", "--", "/usr/local/bin/counter",
                                "/tmp/c"]
    assert unwrap_placeholder(first)["spec"]["containers"][0]["command"] == container["command"]
    assert "initContainers" not in unwrap_placeholder(first)["spec"]
    assert unwrap_command(again["command"]) == ["/usr/local/bin/counter", "/tmp/c"]
    assert unwrap_command(["/bin/sh", "-c", "x"]) == ["/bin/sh", "-c", "x"]
    assert unwrap_command([PAUSE_PROGRAM, "run", "main"]) == []
