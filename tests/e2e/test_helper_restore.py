"""Checkpoint real pods with the node helper and restore them into sleeping pods."""
from __future__ import annotations

import re
import socket
import time
from typing import Any

from tests.e2e.helper import HelperProcess
from tests.e2e.lab import Lab, counter_file, counter_pod, pod_manifest, sleeper_pod


def _counts(text: str) -> list[int]:
    return [int(m) for m in re.findall(r"count=(\d+)", text)]


def _start_counter(lab: Lab, ns: str, name: str = "counter", **kw: Any) -> int:
    manifest = counter_pod(name, interval_ms=200)
    manifest["spec"].update(kw)
    lab.apply(manifest, ns)
    lab.wait_pod_running(ns, name)
    return int(lab.wait_log(ns, name, r"count=(\d\d)").group(1))


def _assert_running_no_restart(lab: Lab, ns: str, name: str) -> None:
    pod = lab.wait_pod_running(ns, name)
    for status in pod["status"]["containerStatuses"]:
        assert status["restartCount"] == 0, status


def test_counter_resumes_in_sleeping_pod(lab: Lab, namespace: str, helper: HelperProcess) -> None:
    _start_counter(lab, namespace)
    lab.apply(sleeper_pod("target"), namespace)
    lab.wait_pod_running(namespace, "target")

    before = max(_counts(lab.logs(namespace, "counter")))
    resp = helper.checkpoint(namespace, "counter", path=f"{namespace}-counter", leave_running=True)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert re.fullmatch(r"[0-9a-f-]{36}", body["checkpoint_id"])
    ckpt_dir = body["checkpoint_path"]
    assert ckpt_dir.startswith(str(helper.checkpoint_dir))

    restored = helper.restore(namespace, "target", path=ckpt_dir)
    assert restored.status_code == 200, restored.text

    # the restored counter continues from its checkpointed value, in the target's logs
    lab.wait_log(namespace, "target", r"count=\d+")
    first_restored = _counts(lab.logs(namespace, "target"))[0]
    assert first_restored >= before, (first_restored, before)
    lab.wait_log(namespace, "target", rf"count={first_restored + 5}\b")
    # the source kept running (leave_running=true) and both pods stay Running
    last_source = max(_counts(lab.logs(namespace, "counter")))
    lab.wait_log(namespace, "counter", rf"count={last_source + 3}\b")
    time.sleep(2)
    _assert_running_no_restart(lab, namespace, "counter")
    _assert_running_no_restart(lab, namespace, "target")
    # the restored program's state is visible inside the target container too
    assert counter_file(lab, namespace, "target", "/tmp/counter") >= first_restored

    # a second restore into the same target is refused
    again = helper.restore(namespace, "target", path=ckpt_dir)
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "already_restored"


def test_leave_running_false_stops_source(lab: Lab, namespace: str, helper: HelperProcess) -> None:
    _start_counter(lab, namespace, restartPolicy="Never")
    resp = helper.checkpoint(namespace, "counter", leave_running=False)
    assert resp.status_code == 200, resp.text
    end = time.monotonic() + 60
    state: dict[str, Any] = {}
    while time.monotonic() < end:
        state = lab.pod(namespace, "counter")["status"]["containerStatuses"][0]["state"]
        if "terminated" in state:
            break
        time.sleep(0.5)
    assert "terminated" in state, state
    # and the checkpoint restores into a sleeping pod
    lab.apply(sleeper_pod("target"), namespace)
    lab.wait_pod_running(namespace, "target")
    restored = helper.restore(namespace, "target", checkpoint_id=resp.json()["checkpoint_id"])
    assert restored.status_code == 200, restored.text
    lab.wait_log(namespace, "target", r"count=\d+")


def test_same_checkpoint_into_two_pods(lab: Lab, namespace: str, helper: HelperProcess) -> None:
    _start_counter(lab, namespace)
    for name in ("target-a", "target-b"):
        lab.apply(sleeper_pod(name), namespace)
    before = max(_counts(lab.logs(namespace, "counter")))
    resp = helper.checkpoint(namespace, "counter", leave_running=True)
    assert resp.status_code == 200, resp.text
    cid = resp.json()["checkpoint_id"]
    for name in ("target-a", "target-b"):
        lab.wait_pod_running(namespace, name)
        restored = helper.restore(namespace, name, checkpoint_id=cid)
        assert restored.status_code == 200, restored.text
    for name in ("target-a", "target-b"):
        lab.wait_log(namespace, name, r"count=\d+")
        first = _counts(lab.logs(namespace, name))[0]
        assert first >= before
        lab.wait_log(namespace, name, rf"count={first + 3}\b")
        _assert_running_no_restart(lab, namespace, name)


def _survivor_state(ip: str) -> dict[str, int]:
    with socket.create_connection((ip, 8080), timeout=10) as conn:
        text = conn.recv(200).decode()
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", text)}


SURVIVOR_LINE = (r"survivor tick=(\d+) pong=(\d+) file_bytes=(\d+) child=\d+ "
                 r"child_alive=(\d)")


def _survivor_lines(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(x) for x in m) for m in re.findall(SURVIVOR_LINE, text)]


def test_open_file_socketpair_child_survive(lab: Lab, namespace: str,
                                            helper: HelperProcess) -> None:
    lab.apply(pod_manifest("survivor", ["/usr/local/bin/survivor", "0"]), namespace)
    lab.wait_pod_running(namespace, "survivor")
    lab.wait_log(namespace, "survivor", r"survivor tick=3 ")
    lab.apply(sleeper_pod("target"), namespace)
    lab.wait_pod_running(namespace, "target")
    before = _survivor_lines(lab.logs(namespace, "survivor"))[-1]

    resp = helper.checkpoint(namespace, "survivor", leave_running=True)
    assert resp.status_code == 200, resp.text
    restored = helper.restore(namespace, "target", checkpoint_id=resp.json()["checkpoint_id"])
    assert restored.status_code == 200, restored.text

    lab.wait_log(namespace, "target", SURVIVOR_LINE)
    tick, pong, file_bytes, child_alive = _survivor_lines(lab.logs(namespace, "target"))[0]
    assert tick >= before[0]
    assert pong >= before[1]              # the socket pair to the child answered at once
    assert child_alive == 1               # the child process came back with it
    assert file_bytes >= before[2]        # the open file kept its content
    lab.wait_log(namespace, "target", rf"survivor tick={tick + 3} ")
    last = _survivor_lines(lab.logs(namespace, "target"))[-1]
    assert last[1] > pong and last[2] > file_bytes and last[3] == 1
    size = lab.kubectl("-n", namespace, "exec", "target", "--", "wc", "-c",
                       "/tmp/survivor.log").stdout.split()[0]
    assert int(size) >= last[2]


def test_listening_tcp_socket_survives(lab: Lab, namespace: str, helper: HelperProcess) -> None:
    lab.apply(pod_manifest("survivor", ["/usr/local/bin/survivor", "8080"]), namespace)
    lab.wait_pod_running(namespace, "survivor")
    lab.wait_log(namespace, "survivor", r"survivor tick=2 ")
    lab.apply(sleeper_pod("target"), namespace)
    target = lab.wait_pod_running(namespace, "target")
    resp = helper.checkpoint(namespace, "survivor", leave_running=True)
    assert resp.status_code == 200, resp.text
    restored = helper.restore(namespace, "target", checkpoint_id=resp.json()["checkpoint_id"])
    assert restored.status_code == 200, restored.text
    lab.wait_log(namespace, "target", SURVIVOR_LINE)
    # the listening socket accepts in the target pod's network namespace, answering with the
    # state the process carried over (tick went on from where it was, not from zero)
    state = _survivor_state(target["status"]["podIP"])
    assert state["tick"] >= 2 and state["child"] > 0
    first_tick = _survivor_lines(lab.logs(namespace, "target"))[0][0]
    assert first_tick >= 2


def test_second_container_of_two(lab: Lab, namespace: str, helper: HelperProcess) -> None:
    image = lab.workload_image
    manifest = pod_manifest("pair", [], containers=[
        {"name": "first", "image": image, "imagePullPolicy": "IfNotPresent",
         "command": ["/usr/local/bin/counter", "/tmp/first", "200", "1000000"]},
        {"name": "second", "image": image, "imagePullPolicy": "IfNotPresent",
         "command": ["/usr/local/bin/counter", "/tmp/second", "200"]},
    ])
    lab.apply(manifest, namespace)
    lab.wait_pod_running(namespace, "pair")
    lab.wait_log(namespace, "pair", r"count=\d\d", container="second")
    first_id = lab.container_id(namespace, "pair", "first")
    lab.apply(sleeper_pod("target"), namespace)
    lab.wait_pod_running(namespace, "target")

    resp = helper.checkpoint(namespace, "pair", container="second", leave_running=False)
    assert resp.status_code == 200, resp.text
    assert helper.restore(namespace, "target", checkpoint_id=resp.json()["checkpoint_id"]
                          ).status_code == 200
    first_restored = _counts(lab.wait_log(namespace, "target", r"count=\d+").string)[0]
    assert first_restored < 1000000      # it is the second container's counter
    # the first container is untouched: same container, still counting
    pod = lab.pod(namespace, "pair")
    first = next(s for s in pod["status"]["containerStatuses"] if s["name"] == "first")
    assert first["restartCount"] == 0 and "running" in first["state"]
    assert lab.container_id(namespace, "pair", "first") == first_id
    last = max(_counts(lab.logs(namespace, "pair", container="first")))
    lab.wait_log(namespace, "pair", rf"count={last + 3}\b", container="first")
