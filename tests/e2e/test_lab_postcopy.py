"""The lab's CRIU can migrate a process post-copy between its two nodes, CRIU alone: what
`migrate --lazy` (tests/e2e/test_postcopy.py) is built on. A process holding random memory is dumped on node 1 with its memory
left behind (`criu dump --lazy-pages`, a page server on node 1's address), restored in node 2's
network namespace (`criu lazy-pages --page-server` + `criu restore --lazy-pages`), goes on
there with every byte of its memory (it checks a sha256 of it), while the pages follow; the
source is gone once the last page has arrived. Without hack/patches/criu-lazy-pipe-size.patch
the page server fails at the first page on these VMs (docs/lab.md)."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.e2e.lab import Lab

CRIU = "/usr/local/sbin/criu"
NODE1_IP = "10.88.0.1"  # the lab bridge's address on node 1 (hack/lib.sh)
NODE2_NETNS = "cedana-lab-node2"
MIB = 64

#: run with the file to append its beats to (its own: the restore reopens it by path)
WORKLOAD = f"""
import hashlib, os, sys, time
out = open(sys.argv[1], "a", buffering=1)
buf = bytearray(os.urandom({MIB} << 20))
digest = hashlib.sha256(buf).hexdigest()
n = 0
while True:
    n += 1
    same = hashlib.sha256(buf).hexdigest() == digest
    out.write(f"beat {{n}} memory {{'same' if same else 'CHANGED'}}\\n")
    time.sleep(0.1)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((NODE1_IP, 0))
        return int(s.getsockname()[1])


def _beats(path: Path) -> list[tuple[int, str]]:
    return [(int(n), state) for n, state in re.findall(r"beat (\d+) memory (\w+)",
                                                        path.read_text())]


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, what
        time.sleep(0.1)


def test_a_process_moves_to_node2_with_its_memory_following(lab: Lab) -> None:
    work = Path(tempfile.mkdtemp(prefix="postcopy-", dir="/var/tmp"))
    out = work / "out.log"
    images, dump_work, restore_work = work / "images", work / "dump", work / "restore"
    for d in (images, dump_work, restore_work):
        d.mkdir()
    # its own session in its own pid namespace, as a container's init is
    out.touch()
    source = subprocess.Popen(["unshare", "-p", "-f", "setsid", sys.executable, "-c", WORKLOAD,
                               str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    restored_pid = tree = 0
    try:
        _wait(lambda: len(_beats(out)) >= 3, 60, "the workload did not start")
        (tree,) = [int(p) for p in Path(f"/proc/{source.pid}/task/{source.pid}/children")
                   .read_text().split()]
        port = _free_port()
        ready_r, ready_w = os.pipe()
        dump = subprocess.Popen(
            [CRIU, "dump", "-t", str(tree), "-D", str(images), "-W", str(dump_work),
             "-o", "dump.log", "-v4", "--lazy-pages", "--address", NODE1_IP,
             "--port", str(port), "--status-fd", str(ready_w)],
            pass_fds=(ready_w,), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        os.close(ready_w)
        with os.fdopen(ready_r, "rb") as ready:
            assert ready.read(1) == b"\0", (dump_work / "dump.log").read_text()[-2000:]
        # everything but the memory is dumped: the images are far smaller than it
        held = sum(p.stat().st_size for p in images.iterdir())
        assert held < (MIB << 20) // 4, held
        before = _beats(out)[-1][0]
        # node 2: the lazy-pages daemon fetches from node 1's page server; the restore
        # returns as soon as the process is back, its memory arriving as it is touched
        daemon = subprocess.Popen(
            ["ip", "netns", "exec", NODE2_NETNS, CRIU, "lazy-pages", "--page-server",
             "--address", NODE1_IP, "--port", str(port), "-D", str(images),
             "-W", str(restore_work), "-o", "lazy.log", "-v4"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        _wait(lambda: (restore_work / "lazy-pages.socket").exists() or daemon.poll() is not None,
              30, "the lazy-pages daemon did not start")
        restored = subprocess.run(
            ["ip", "netns", "exec", NODE2_NETNS, CRIU, "restore", "-D", str(images),
             "-W", str(restore_work), "--lazy-pages", "--restore-detached",
             "--pidfile", str(work / "restored.pid"), "-o", "restore.log", "-v4"],
            capture_output=True, text=True, timeout=120)
        assert restored.returncode == 0, (restore_work / "restore.log").read_text()[-3000:]
        restored_pid = int((work / "restored.pid").read_text())
        assert daemon.wait(timeout=120) == 0, (restore_work / "lazy.log").read_text()[-3000:]
        assert dump.wait(timeout=120) == 0, (dump_work / "dump.log").read_text()[-3000:]
        # every page came over, the dump says so, and then it ended the source
        transferred = re.findall(r"UFFD transferred pages: \((\d+)/(\d+)\)",
                                 (restore_work / "lazy.log").read_text())
        done, total = map(int, transferred[-1])
        assert done == total >= (MIB << 20) // 4096, transferred[-1]
        assert "Lazy pages transfer finished successfully" in \
            (dump_work / "dump.log").read_text()
        _wait(lambda: source.poll() is not None, 30, "the source did not end")
        # the restored process goes on from where it was, in node 2's network namespace,
        # its memory the same to the last byte
        assert os.readlink(f"/proc/{restored_pid}/ns/net") != os.readlink("/proc/self/ns/net")
        _wait(lambda: _beats(out)[-1][0] >= before + 5, 60, "the restored process is silent")
        after = [b for b in _beats(out) if b[0] > before]
        assert [n for n, _ in after] == list(range(before + 1, before + 1 + len(after)))
        assert {state for _, state in after} == {"same"}
    finally:
        for pid in (restored_pid, tree, source.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        subprocess.run(["rm", "-rf", str(work)], check=False)
