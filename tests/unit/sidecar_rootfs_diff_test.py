"""The container's changed files: captured from an overlay upper dir, applied to a rootfs."""
from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest

from sidecar.errors import RestoreFailed
from sidecar.node import proctree
from sidecar.storage import rootfs_diff


def _upper(tmp_path: Path) -> Path:
    upper = tmp_path / "upper"
    (upper / "tmp").mkdir(parents=True)
    (upper / "tmp" / "new.txt").write_bytes(b"written by the container\n")
    (upper / "data").mkdir()
    (upper / "data" / "original.txt").write_bytes(b"modified\n")
    os.mknod(upper / "data" / "doomed.txt", 0o600 | 0o020000, os.makedev(0, 0))  # whiteout
    return upper


@pytest.mark.skipif(os.geteuid() != 0, reason="whiteouts are character devices: needs root")
def test_diff_round_trip(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    deleted = rootfs_diff.write_diff(_upper(tmp_path), ckpt)
    assert deleted == ["/data/doomed.txt"]
    assert json.loads((ckpt / "deleted.files").read_text()) == ["/data/doomed.txt"]
    with tarfile.open(ckpt / "rootfs-diff.tar") as tar:
        assert sorted(tar.getnames()) == ["data", "data/original.txt", "tmp", "tmp/new.txt"]

    rootfs = tmp_path / "rootfs"
    (rootfs / "data").mkdir(parents=True)
    (rootfs / "data" / "original.txt").write_bytes(b"original\n")
    (rootfs / "data" / "doomed.txt").write_bytes(b"to be deleted\n")
    assert rootfs_diff.apply_diff(ckpt, rootfs) is True
    assert (rootfs / "tmp" / "new.txt").read_bytes() == b"written by the container\n"
    assert (rootfs / "data" / "original.txt").read_bytes() == b"modified\n"
    assert not (rootfs / "data" / "doomed.txt").exists()


def test_no_diff_is_not_an_error(tmp_path: Path) -> None:
    assert rootfs_diff.apply_diff(tmp_path, tmp_path / "rootfs") is False


def _diff_deleting(ckpt: Path, path: str) -> None:
    ckpt.mkdir()
    with tarfile.open(ckpt / "rootfs-diff.tar", "w"):
        pass
    (ckpt / "deleted.files").write_text(json.dumps([path]))


def test_deletions_stay_inside_the_rootfs(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    # `..` is normalised against the container's root, as the container itself would see it
    _diff_deleting(tmp_path / "ckpt1", "../victim.txt")
    assert rootfs_diff.apply_diff(tmp_path / "ckpt1", rootfs) is True
    assert victim.read_text() == "keep me"
    # a symlinked parent inside the target's rootfs must not lead out of it
    (rootfs / "data").symlink_to(tmp_path)
    _diff_deleting(tmp_path / "ckpt2", "/data/victim.txt")
    with pytest.raises(RestoreFailed, match="outside"):
        rootfs_diff.apply_diff(tmp_path / "ckpt2", rootfs)
    assert victim.read_text() == "keep me"


def test_upper_dir_of_this_process_is_read_from_mountinfo(tmp_path: Path) -> None:
    # this machine's root is not overlay: no upper dir, and no error
    upper = proctree.upper_dir(os.getpid())
    assert upper is None or upper.is_dir()
    assert proctree.upper_dir(2**22 + 7) is None
    proc = tmp_path / "proc"
    (proc / "7").mkdir(parents=True)
    (proc / "7" / "mountinfo").write_text(
        "22 1 0:21 / /sys rw - sysfs sysfs rw\n"
        "1041 980 0:93 / / rw,relatime - overlay overlay rw,lowerdir=/l1:/l2,"
        "upperdir=/var/lib/containerd/snapshots/42/fs,workdir=/var/lib/containerd/w\n")
    assert proctree.upper_dir(7, proc) == Path("/var/lib/containerd/snapshots/42/fs")
