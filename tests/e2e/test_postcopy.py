"""Post-copy migration (`kubectl cedana migrate --lazy`, issue 19) between the lab's two nodes:
the container runs on node 2 as soon as everything but its memory is there, its memory follows
page by page from node 1's helper through the peer port (sidecar/ops/lazy.py), and the source
stays frozen until the last page arrived. memhog checks a sum over every page of its memory at
each beat (ok=1): a page missing or read as zeros shows as ok=0.

Faults: the target node's helper killed, or the network between the nodes cut, while the memory
follows: the source goes on from where it was frozen, the new pod is removed, and the restored
process, whose memory stopped arriving, is killed on node 2 (node/lazy_guard.py) instead of
running on with pages of zeros. The transfer is slowed for those (a rate limit on node 2's
link) so that there is time to break it."""
from __future__ import annotations

import contextlib
import os
import json
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.lab import (
    HELPER_NAMESPACE,
    Lab,
    cedana,
    helper_daemonset_lock,
    helper_pod,
    install_helpers,
    node_holds,
    pod_manifest,
)

NODE2_NETNS = "cedana-lab-node2"
NODE2_VETH = "cedana0-n2"  # the host's end of node 2's link (hack/lib.sh)
PEER_PORT = 1325
#: where node 2's helper restores (its checkpoint directory, seen from the lab's machine)
NODE2_RESTORES = Path("/var/lib/kubectl-cedana-lab/node2/checkpoints/.restores")


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab)  # no registry: post-copy never needs one
        yield


def _memhog(lab: Lab, namespace: str, name: str, mib: int) -> int:
    """A memhog pod on node 1 beating every 200 ms; its latest beat."""
    lab.apply(pod_manifest(name, ["/usr/local/bin/memhog", str(mib), "200"]), namespace)
    lab.wait_pod_running(namespace, name)
    lab.wait_log(namespace, name, r"beat=3\b", timeout=120)
    return _beats(lab, namespace, name)[-1][0]


def _beats(lab: Lab, namespace: str, pod: str) -> list[tuple[int, int]]:
    """(beat, ok) of every heartbeat the pod printed, oldest first."""
    return [(int(b), int(ok)) for b, ok in
            re.findall(r"beat=(\d+) sum=\d+ ok=(\d)", lab.logs(namespace, pod))]


def _memhogs(mib: int) -> list[int]:
    """The memhog processes of this size running on the machine (both lab nodes are on it)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if len(cmd) >= 2 and cmd[0].endswith("memhog") and cmd[1] == str(mib):
            found.append(proc.pid)
    return found


def _goes_on(lab: Lab, namespace: str, pod: str, before: int, beats: int = 10) -> None:
    """The pod's memhog goes on from beat `before` or later, every beat in turn, every one with
    its memory intact."""
    end = time.monotonic() + 120
    while time.monotonic() < end and len(_beats(lab, namespace, pod)) < beats:
        time.sleep(0.5)
    seen = _beats(lab, namespace, pod)
    assert len(seen) >= beats, seen
    numbers = [b for b, _ in seen]
    assert numbers[0] >= before and numbers == list(range(numbers[0], numbers[0] + len(seen))), \
        numbers[:20]
    assert {ok for _, ok in seen} == {1}, [s for s in seen if s[1] != 1][:5]


def test_a_container_moves_post_copy_with_its_memory_following(lab: Lab, namespace: str
                                                              ) -> None:
    node2 = lab.node2_name
    before = _memhog(lab, namespace, "hog", int(os.environ.get("PC_MIB", "264")))
    migrated = cedana(lab, "-n", namespace, "migrate", "hog", "--to-node", node2,
                      "--delete-source", "--lazy", "-o", "json")
    assert migrated.returncode == 0, migrated.stderr
    status = json.loads(migrated.stdout)["status"]
    assert status["phase"] == "Succeeded", status
    assert status["postCopy"] is True and status["memoryMs"] >= 0, status
    assert status["transfer"] == "direct", status
    print(f"post-copy of 264 MiB: pause {status['pauseMs']} ms, memory {status['memoryMs']} ms")
    new_pod = status["podName"]
    assert lab.pod(namespace, new_pod)["spec"]["nodeName"] == node2
    # the memory came over: every page of it, checked at every beat, from where it was
    _goes_on(lab, namespace, new_pod, before)
    # the source is gone, and so is what was left of the checkpoint on node 1 (its memory
    # went to the restored process: it can never be restored again)
    end = time.monotonic() + 60
    while len(_memhogs(int(os.environ.get("PC_MIB", "264")))) != 1:
        assert time.monotonic() < end, _memhogs(264)
        time.sleep(0.5)
    assert status["checkpointID"] not in node_holds(lab, lab.node_name)
    assert status["checkpointID"] not in node_holds(lab, node2)


def test_post_copy_brings_every_byte(lab: Lab, namespace: str) -> None:
    """The pages are read from the frozen source when node 2 asks for them (CRIU patched:
    hack/patches/criu-lazy-from-task.patch): memcheck fills its memory with a sequence in which
    no two pages are alike (a page served from the wrong address shows, not only one of
    zeros), keeps a page it cannot read itself (PROT_NONE) and patterns on three threads'
    stacks, and checks every byte of them at every beat."""
    lab.apply(pod_manifest("check", ["/usr/local/bin/memcheck", "96", "300", "3"]), namespace)
    lab.wait_pod_running(namespace, "check")
    lab.wait_log(namespace, "check", r"beat=3\b", timeout=120)
    before = _beats(lab, namespace, "check")[-1][0]
    migrated = cedana(lab, "-n", namespace, "migrate", "check", "--to-node", lab.node2_name,
                      "--delete-source", "--lazy", "-o", "json")
    assert migrated.returncode == 0, migrated.stderr
    status = json.loads(migrated.stdout)["status"]
    assert status["phase"] == "Succeeded" and status["postCopy"] is True, status
    _goes_on(lab, namespace, status["podName"], before, beats=6)
    assert re.findall(r"memcheck mib=96 beat=\d+ sum=0 ok=1",
                      lab.logs(namespace, status["podName"])), "no beat with every byte right"
    # the helper's /run is a tmpfs (deploy/base/daemonset.yaml): CRIU keeps what it learnt of
    # the kernel there, and this restore (after its lazy-pages daemon) did not probe it again
    restored = json.loads(lab.kubectl("-n", namespace, "get", "restores.cedana.io",
                                      status["restoreName"], "-o", "json").stdout)["status"]
    (restore_log,) = NODE2_RESTORES.glob(f"{restored['containerID'][:12]}-*/restore.log")
    assert "Loaded kdat cache from /run/criu.kdat" in restore_log.read_text()
    # and the daemon's guard was the image's C program (node/lazy_guard.c), not Python's
    helper = helper_pod(lab, lab.node2_name)["metadata"]["name"]
    started = [line for line in lab.kubectl("-n", HELPER_NAMESPACE, "logs", helper, "-c",
                                            "helper").stdout.splitlines()
               if "starting the lazy-pages daemon" in line and restored["containerID"] in line]
    assert started and "/usr/local/bin/cedana-lazy-guard" in started[-1], started


def test_post_copy_is_refused_where_it_cannot_be(lab: Lab, namespace: str) -> None:
    _memhog(lab, namespace, "here", 16)
    same_node = cedana(lab, "-n", namespace, "migrate", "here", "--lazy", "-o", "json")
    assert same_node.returncode != 0
    assert "post-copy (spec.lazy) cannot be done" in same_node.stderr + same_node.stdout
    # nothing was done: it goes on
    assert lab.pod(namespace, "here")["status"]["phase"] == "Running"


@contextlib.contextmanager
def _slow_link(rate: str = "60mbit") -> Iterator[None]:
    """What node 1's peer port sends to node 2 (a checkpoint's memory, post-copy) goes at
    `rate` for the length of the block; the rest of node 2's traffic (other tests') as fast
    as ever."""
    dev = ["dev", NODE2_VETH]
    steps = [  # this kernel has htb (not prio): a class for the rest, one slow class
        ["qdisc", "replace", *dev, "root", "handle", "1:", "htb", "default", "10"],
        ["class", "add", *dev, "parent", "1:", "classid", "1:10", "htb", "rate", "10gbit"],
        ["class", "add", *dev, "parent", "1:", "classid", "1:30", "htb", "rate", rate,
         "ceil", rate],
        ["filter", "add", *dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32",
         "match", "ip", "sport", str(PEER_PORT), "0xffff", "flowid", "1:30"],
    ]
    try:
        for step in steps:
            subprocess.run(["tc", *step], check=True, capture_output=True, timeout=30)
        yield
    finally:
        subprocess.run(["tc", "qdisc", "del", *dev, "root"], check=False, capture_output=True,
                       timeout=30)


def _migrate_in_background(lab: Lab, namespace: str, pod: str) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def run() -> None:
        done = cedana(lab, "-n", namespace, "migrate", pod, "--to-node", lab.node2_name,
                      "--delete-source", "--lazy", "--name", f"{pod}-move", "-o", "json",
                      "--timeout", "5m")
        result["done"] = done

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, result


def _wait_memory_following(lab: Lab, namespace: str, name: str) -> dict:
    end = time.monotonic() + 180
    while time.monotonic() < end:
        found = lab.kubectl("-n", namespace, "get", "migrations.cedana.io", name, "-o", "json",
                            check=False)
        if found.returncode == 0:
            st = json.loads(found.stdout).get("status") or {}
            if "memory follows" in str(st.get("message")):
                return st
            assert st.get("phase") not in ("Succeeded", "Failed"), st
        time.sleep(0.2)
    raise AssertionError("the migration never reached its post-copy phase")


def _source_goes_on_after_failure(lab: Lab, namespace: str, pod: str, before: int,
                                  result: dict, thread: threading.Thread, mib: int) -> dict:
    thread.join(300)
    done = result["done"]
    assert done.returncode != 0, done.stdout
    status = json.loads(lab.kubectl("-n", namespace, "get", "migrations.cedana.io",
                                    f"{pod}-move", "-o", "json").stdout)["status"]
    assert status["phase"] == "Failed", status
    assert f"pod {pod} was not stopped and goes on" in status["message"], status["message"]
    # its checkpoint is of no use without the memory it never sent: not kept
    assert "is kept on node" not in status["message"], status["message"]
    assert status["checkpointID"] not in node_holds(lab, lab.node_name)
    # the source goes on from where it was frozen: no beat lost, none repeated, memory intact
    source = lab.pod(namespace, pod)
    assert source["status"]["containerStatuses"][0]["restartCount"] == 0
    last = _beats(lab, namespace, pod)[-1][0]
    end = time.monotonic() + 60
    while _beats(lab, namespace, pod)[-1][0] < last + 5:
        assert time.monotonic() < end, "the source did not go on"
        time.sleep(0.5)
    seen = _beats(lab, namespace, pod)
    assert [b for b, _ in seen] == list(range(seen[0][0], seen[0][0] + len(seen)))
    assert {ok for _, ok in seen} == {1}
    assert seen[-1][0] > before
    # the new pod is gone, and with it the restored process (no memhog of pages of zeros)
    end = time.monotonic() + 60
    while lab.kubectl("-n", namespace, "get", "pod", f"{pod}-migrated",
                      check=False).returncode == 0:
        assert time.monotonic() < end, "the new pod was not removed"
        time.sleep(0.5)
    end = time.monotonic() + 60
    while len(_memhogs(mib)) != 1:
        assert time.monotonic() < end, _memhogs(mib)
        time.sleep(0.5)
    # and it was its guard on node 2 that killed it, as its memory stopped arriving (not the
    # removal of its pod, which came later)
    restored = json.loads(lab.kubectl("-n", namespace, "get", "restores.cedana.io",
                                      status["restoreName"], "-o", "json").stdout)["status"]
    (guard_log,) = NODE2_RESTORES.glob(f"{restored['containerID'][:12]}-*/lazy-guard.log")
    assert "the restored process was killed" in guard_log.read_text(), guard_log.read_text()
    return status


def test_the_source_goes_on_when_the_target_helper_dies(lab: Lab, namespace: str) -> None:
    before = _memhog(lab, namespace, "victim", 384)
    with _slow_link():
        thread, result = _migrate_in_background(lab, namespace, "victim")
        _wait_memory_following(lab, namespace, "victim-move")
        helper = helper_pod(lab, lab.node2_name)["metadata"]["name"]
        lab.kubectl("-n", HELPER_NAMESPACE, "delete", "pod", helper, "--grace-period=0",
                    "--force", "--wait=false")
        _source_goes_on_after_failure(lab, namespace, "victim", before, result, thread, 384)
    lab.kubectl("-n", HELPER_NAMESPACE, "rollout", "status", "daemonset/cedana-helper",
                "--timeout=180s")


def test_the_source_goes_on_when_the_network_is_cut(lab: Lab, namespace: str) -> None:
    before = _memhog(lab, namespace, "cut", 392)
    rule = ["OUTPUT", "-p", "tcp", "--dport", str(PEER_PORT), "-j", "REJECT",
            "--reject-with", "tcp-reset"]
    iptables = ["ip", "netns", "exec", NODE2_NETNS, "iptables"]
    with _slow_link():
        thread, result = _migrate_in_background(lab, namespace, "cut")
        _wait_memory_following(lab, namespace, "cut-move")
        subprocess.run([*iptables, "-I", *rule], check=True, capture_output=True, timeout=30)
        try:
            status = _source_goes_on_after_failure(lab, namespace, "cut", before, result,
                                                   thread, 392)
        finally:
            subprocess.run([*iptables, "-D", *rule], check=False, capture_output=True,
                           timeout=30)
    assert "memory" in status["message"], status["message"]


def test_a_tenant_cannot_take_the_memory(lab: Lab, namespace: str) -> None:
    """While a checkpoint's memory is served, a tenant's pod that asks node 1's peer port for
    it is refused, and the migration it meant to rob goes through whole."""
    before = _memhog(lab, namespace, "robbed", 272)
    address = helper_pod(lab, lab.node_name)["status"]["podIP"]
    with _slow_link():
        thread, result = _migrate_in_background(lab, namespace, "robbed")
        st = _wait_memory_following(lab, namespace, "robbed-move")
        hello = json.dumps({"v": 1, "op": "pages", "checkpoint_id": st["checkpointID"],
                            "from": lab.node2_name, "to": lab.node_name,
                            "expires": round(time.time() + 60, 3), "salt": "cd" * 16})
        name = f"nc-{uuid.uuid4().hex[:6]}"
        script = (f"{{ printf '%s\\n' '{hello}'; printf '\\000\\000\\000\\025'; "
                  f"head -c 21 /dev/urandom; sleep 2; }} | nc {address} {PEER_PORT}; "
                  "echo rc=$?")
        lab.apply(pod_manifest(name, ["/bin/sh", "-c", script], restartPolicy="Never"),
                  namespace)
        end = time.monotonic() + 90
        while lab.pod(namespace, name).get("status", {}).get("phase") not in ("Succeeded",
                                                                              "Failed"):
            assert time.monotonic() < end, lab.logs(namespace, name)
            time.sleep(0.5)
        (line,) = [x for x in lab.logs(namespace, name).splitlines() if x.startswith("{")]
        refused = json.loads(line)
        assert refused["ok"] is False and refused["code"] == "checkpoint_untrusted", refused
        # a checkpoint of the new pod while its memory is arriving waits for the last page
        # (a dump now would read pages that are not there)
        checkpoint: dict = {}
        waiter = threading.Thread(target=lambda: checkpoint.update(done=cedana(
            lab, "-n", namespace, "checkpoint", "robbed-migrated", "--leave-running",
            "-o", "json", "--timeout", "5m")), daemon=True)
        waiter.start()
        thread.join(300)
        waiter.join(300)
    done = result["done"]
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)["status"]
    assert status["phase"] == "Succeeded" and status["postCopy"] is True, status
    _goes_on(lab, namespace, status["podName"], before)
    taken = checkpoint["done"]
    assert taken.returncode == 0, taken.stderr
    taken_status = json.loads(taken.stdout)["status"]
    assert taken_status["phase"] == "Succeeded", taken_status
    assert taken_status["completedAt"] >= status["completedAt"], (taken_status, status)
