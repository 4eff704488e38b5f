"""Which volumes go with a checkpoint (the parsers of storage/pod_volumes.py and
proctree.tmpfs_mount_points); the real archive and restore run on the lab
(tests/e2e/test_pod_volumes.py)."""
from __future__ import annotations

import os
import tarfile
from pathlib import Path

import pytest

from sidecar.errors import RestoreFailed
from sidecar.node import proctree
from sidecar.storage import pod_volumes

EMPTY_DIR = "/var/lib/kubelet/pods/0f8f/volumes/kubernetes.io~empty-dir/"


def test_shm_and_empty_dirs_go_secrets_and_the_nodes_shm_do_not() -> None:
    spec = {"mounts": [
        {"destination": "/dev/shm", "type": "bind", "source": "/run/containerd/sb/shm"},
        {"destination": "/cache", "type": "bind", "source": EMPTY_DIR + "cache"},
        {"destination": "/scratch", "type": "bind", "source": EMPTY_DIR + "scratch"},
        {"destination": "/var/run/secrets/kubernetes.io/serviceaccount", "type": "bind",
         "source": "/var/lib/kubelet/pods/0f8f/volumes/kubernetes.io~projected/token"},
        {"destination": "/proc", "type": "proc", "source": "proc"},
    ]}
    # /cache is a memory emptyDir, /scratch one on disk; the token is a tmpfs, not ours to carry
    tmpfs = {"/dev/shm", "/cache", "/dev", "/var/run/secrets/kubernetes.io/serviceaccount"}
    assert pod_volumes.carried(spec, tmpfs) == [
        ("/dev/shm", "/run/containerd/sb/shm"), ("/cache", EMPTY_DIR + "cache"),
        ("/scratch", EMPTY_DIR + "scratch")]
    # hostIPC: /dev/shm is the node's own
    host_ipc = {"mounts": [{"destination": "/dev/shm", "type": "bind", "source": "/dev/shm"}]}
    assert pod_volumes.carried(host_ipc, tmpfs) == []


def test_tmpfs_mount_points_from_mountinfo(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "mountinfo").write_text(
        "1 0 0:1 / / rw - overlay overlay rw,upperdir=/u\n"
        "2 1 0:2 / /dev rw,nosuid - tmpfs tmpfs rw\n"
        "3 2 0:3 / /dev/shm rw - tmpfs shm rw,size=65536k\n"
        "4 1 0:4 / /my\\040cache rw shared:5 - tmpfs tmpfs rw\n"
        "5 1 8:1 /data /data rw - ext4 /dev/sda1 rw\n")
    assert proctree.tmpfs_mount_points(42, tmp_path) == {"/dev", "/dev/shm", "/my cache"}
    assert proctree.tmpfs_mount_points(43, tmp_path) == set()


@pytest.mark.parametrize("name,link", [("../etc/passwd", ""), ("/etc/passwd", ""),
                                       ("a/../../x", ""), ("ok", "../../etc/shadow")])
def test_a_member_that_climbs_out_of_its_volume_is_refused(name: str, link: str) -> None:
    member = tarfile.TarInfo(name)
    if link:
        member.type, member.linkname = tarfile.LNKTYPE, link
    with pytest.raises(RestoreFailed):
        pod_volumes._below(member, "dev/shm")


def test_members_are_named_below_the_volume() -> None:
    member = tarfile.TarInfo("dir/file")
    assert pod_volumes._below(member, "mem").name == "mem/dir/file"
    with pytest.raises(RestoreFailed):
        pod_volumes._rel("/..")


def test_the_size_estimate_counts_the_files_not_the_filesystem(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 1000)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 513)
    (tmp_path / "link").symlink_to("/etc/passwd")  # counted as an entry, never followed
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        # 4 entries' headers, 1000 bytes in 2 blocks, 513 in 2
        assert pod_volumes._tree_bytes(fd) == 4 * 3 * 512 + 2 * 512 + 2 * 512
    finally:
        os.close(fd)
