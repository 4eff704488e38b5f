"""The pod's own volumes travel with a checkpoint (storage/pod_volumes.py): a process keeps a
1 MiB segment in the pod's /dev/shm, state in an emptyDir with `medium: Memory` and a log in an
emptyDir on disk, all held open; after `restore --new-pod` on the same node, and after `migrate
--to-node` to node 2, the files are there with the same bytes and the restored process still
holds them open. Without them CRIU cannot restore the process at all (the files it holds do not
exist in a new pod)."""
from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.lab import (
    cedana,
    Lab,
    helper_daemonset_lock,
    install_helpers,
    pod_manifest,
)

CHECKPOINT_DIR = Path("/var/lib/cedana/checkpoints")  # node 1's helper's, as the host sees it
SCRIPT = ("head -c 1048576 /dev/urandom > /dev/shm/segment && "
          "head -c 65536 /dev/urandom > /mem/state && head -c 65536 /dev/urandom > /disk/log && "
          "exec 3</dev/shm/segment 4</mem/state 5>>/disk/log && "
          "exec /usr/local/bin/counter /mem/counter 100")
FILES = ("/dev/shm/segment", "/mem/state", "/disk/log")


@pytest.fixture(scope="module", autouse=True)
def installed(lab: Lab) -> Iterator[None]:
    with helper_daemonset_lock():
        install_helpers(lab, "--checkpoint-repository", f"{lab.registry}/cedana/memory-volumes")
        yield


def memory_pod(name: str) -> dict[str, Any]:
    pod = pod_manifest(name, ["/bin/sh", "-c", SCRIPT])
    pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "mem", "mountPath": "/mem"},
                                                    {"name": "disk", "mountPath": "/disk"}]
    pod["spec"]["volumes"] = [{"name": "mem", "emptyDir": {"medium": "Memory"}},
                              {"name": "disk", "emptyDir": {}}]
    return pod


def sums(lab: Lab, namespace: str, pod: str) -> dict[str, str]:
    out = lab.kubectl("-n", namespace, "exec", pod, "--", "sha256sum", *FILES).stdout
    return {path: digest for digest, path in (line.split() for line in out.splitlines())}


def held_open(lab: Lab, namespace: str, pod: str) -> list[str]:
    """What the counter process holds as fds 3, 4 and 5, as its container sees it."""
    out = lab.kubectl("-n", namespace, "exec", pod, "--", "sh", "-c",
                      "for p in $(pidof counter); do for fd in 3 4 5; do readlink /proc/$p/fd/$fd; "
                      "done; "
                      "done").stdout
    return out.split()


def started(lab: Lab, namespace: str, name: str) -> tuple[dict[str, str], int]:
    lab.apply(memory_pod(name), namespace)
    lab.wait_pod_running(namespace, name)
    lab.wait_log(namespace, name, r"count=5\b")
    assert held_open(lab, namespace, name) == list(FILES)
    count = max(int(n) for n in re.findall(r"count=(\d+)", lab.logs(namespace, name)))
    return sums(lab, namespace, name), count


def assert_carried(lab: Lab, namespace: str, pod: str, before: dict[str, str],
                   count: int) -> None:
    first = int(lab.wait_log(namespace, pod, r"count=(\d+)").group(1))
    assert first >= count  # memory: it goes on, not from 0
    lab.wait_log(namespace, pod, rf"count={first + 3}\b")
    assert sums(lab, namespace, pod) == before  # the bytes, in /dev/shm and both emptyDirs
    assert held_open(lab, namespace, pod) == list(FILES)  # and the restored process holds them


def test_dev_shm_and_pod_volumes_come_back_with_the_process(lab: Lab,
                                                                namespace: str) -> None:
    before, count = started(lab, namespace, "keeper")
    taken = cedana(lab, "-n", namespace, "checkpoint", "keeper", "--leave-running",
                   "--storage", "local", "-o", "json")
    assert taken.returncode == 0, taken.stderr
    status = json.loads(taken.stdout)["status"]
    listed = json.loads((CHECKPOINT_DIR / status["checkpointID"] / "volumes.json")
                        .read_text())
    assert sorted(v["destination"] for v in listed) == ["/dev/shm", "/disk", "/mem"]
    restored = cedana(lab, "-n", namespace, "restore", json.loads(taken.stdout)["metadata"]
                      ["name"], "--new-pod", "keeper-2")
    assert restored.returncode == 0, restored.stderr
    assert_carried(lab, namespace, "keeper-2", before, count)
    # the source is untouched by the restore: its files are its own
    assert sums(lab, namespace, "keeper") == before


def test_pod_volumes_move_to_the_second_node(lab: Lab, namespace: str) -> None:
    before, count = started(lab, namespace, "mover")
    moved = cedana(lab, "-n", namespace, "migrate", "mover", "--to-node", lab.node2_name,
                   "--delete-source", "-o", "json")
    assert moved.returncode == 0, moved.stderr
    new_pod = json.loads(moved.stdout)["status"]["podName"]
    assert lab.pod(namespace, new_pod)["spec"]["nodeName"] == lab.node2_name
    assert_carried(lab, namespace, new_pod, before, count)


def test_a_symlink_in_an_empty_dir_never_carries_a_host_file(lab: Lab, namespace: str) -> None:
    """A tenant plants symlinks in its emptyDir to the host's files (through /proc/1/root, and
    absolute ones, which the helper would resolve against the node's root if it followed them):
    the checkpoint holds the links as links, not the files' bytes, and the restored pod gets
    the same links back; nothing of the host is read into the checkpoint or written out."""
    secret = Path("/etc/shadow").read_bytes().splitlines()[0]  # the node's, root's line
    script = ("ln -s /proc/1/root/etc/shadow /disk/shadow && ln -s /etc/hostname /disk/host && "
              "mkdir /disk/d && ln -s ../../../../../etc/hostname /disk/d/up && "
              "exec /usr/local/bin/counter /mem/counter 100")
    pod = memory_pod("planter")
    pod["spec"]["containers"][0]["command"] = ["/bin/sh", "-c", script]
    lab.apply(pod, namespace)
    lab.wait_pod_running(namespace, "planter")
    lab.wait_log(namespace, "planter", r"count=3\b")
    taken = cedana(lab, "-n", namespace, "checkpoint", "planter", "--leave-running",
                   "--storage", "local", "-o", "json")
    assert taken.returncode == 0, taken.stderr
    directory = CHECKPOINT_DIR / json.loads(taken.stdout)["status"]["checkpointID"]
    (disk,) = [v for v in json.loads((directory / "volumes.json").read_text())
               if v["destination"] == "/disk"]
    with tarfile.open(directory / disk["archive"]) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert members["shadow"].issym() and members["shadow"].linkname == \
            "/proc/1/root/etc/shadow"
        assert members["host"].issym() and members["d/up"].issym()
        assert all(not m.isfile() for m in members.values())
    for archive in directory.glob("volume-*.tar"):
        assert secret not in archive.read_bytes()
    restored = cedana(lab, "-n", namespace, "restore", json.loads(taken.stdout)["metadata"]
                      ["name"], "--new-pod", "planter-2")
    assert restored.returncode == 0, restored.stderr
    lab.wait_log(namespace, "planter-2", r"count=\d+")
    links = lab.kubectl("-n", namespace, "exec", "planter-2", "--", "sh", "-c",
                        "readlink /disk/shadow /disk/host /disk/d/up 2>/dev/null || "
                        "for l in /disk/shadow /disk/host /disk/d/up; do readlink $l; done"
                        ).stdout.split()
    assert links == ["/proc/1/root/etc/shadow", "/etc/hostname", "../../../../../etc/hostname"]
