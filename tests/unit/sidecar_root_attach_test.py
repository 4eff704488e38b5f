"""node/root_attach.py: when the helper takes a container's recorded rootfs as it is, and when
it attaches the container's own root instead (a real mount namespace of a child process)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sidecar.errors import RestoreFailed
from sidecar.node import root_attach
from tests.unit.sidecar_support import is_root


def test_a_path_is_visible_only_when_it_is_the_process_root(tmp_path: Path) -> None:
    assert root_attach.visible(os.getpid(), "/")
    assert not root_attach.visible(os.getpid(), str(tmp_path))


def test_a_visible_root_is_used_as_it_is(tmp_path: Path) -> None:
    with root_attach.attached(os.getpid(), "/") as root:
        assert root == "/"


@pytest.mark.skipif(not is_root() or not shutil.which("unshare")
                    or not os.path.exists("/bin/busybox"), reason="needs root, unshare, busybox")
def test_a_root_hidden_in_another_mount_namespace_is_attached_and_detached(
        tmp_path: Path) -> None:
    """A process whose root is a tmpfs mounted in its own mount namespace only (as CRI-O's
    overlay is, beneath a private mount): the helper's view of the path is an empty directory;
    attached, the process's files are there; afterwards nothing stays mounted."""
    hidden = tmp_path / "merged"
    hidden.mkdir()
    # busybox is static: it runs from the old root once the tmpfs is the root
    script = (f"mount -t tmpfs none {hidden} && echo inside > {hidden}/marker && "
              f"mkdir {hidden}/old && cd {hidden} && pivot_root . old && "
              "exec /old/bin/busybox sleep 60")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script])
    try:
        for _ in range(100):
            if not root_attach.visible(proc.pid, "/"):
                break
            subprocess.run(["sleep", "0.05"], check=True)
        assert not (hidden / "marker").exists()  # not visible here
        with root_attach.attached(proc.pid, str(hidden)) as root:
            assert root != str(hidden)
            assert Path(root, "marker").read_text() == "inside\n"
            assert root_attach.visible(proc.pid, root)
        assert not os.path.ismount(root) and not os.path.exists(root)
    finally:
        proc.kill()
        proc.wait()


def test_an_attach_that_fails_is_a_typed_error(tmp_path: Path) -> None:
    with pytest.raises(RestoreFailed, match="could not be attached"):
        with root_attach.attached(2 ** 22 + 7, str(tmp_path)):
            pass
