"""What the helper reads from a live process tree: io_uring, TCP connections, nested pids."""
from __future__ import annotations

import os
import socket
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from sidecar.errors import OperationInProgress
from sidecar.node import proctree, tcp_hold
from sidecar.node.locks import ContainerLocks
from tests.unit.sidecar_support import IO_URING_HOLDER, process, wait_for

TCP_CLIENT = textwrap.dedent("""
    import socket, sys, time
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    print("ready", flush=True)
    time.sleep(300)
""")

LISTENER = textwrap.dedent("""
    import socket, time
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    print("ready", flush=True)
    time.sleep(300)
""")


def test_io_uring_in_a_grandchild_is_found(tmp_path: Path) -> None:
    script = tmp_path / "uring.py"
    script.write_text(IO_URING_HOLDER)
    with process("sh", "-c", f'"{sys.executable}" "{script}" & wait') as parent:
        assert parent.stdout is not None
        line = parent.stdout.readline()
        if not line.startswith("ready"):
            pytest.skip(f"io_uring not available here: {line.strip()}")
        tree = proctree.process_tree(parent.pid)
        assert [p.pid for p in tree][0] == parent.pid
        holder = proctree.find_io_uring(tree)
        assert holder is not None
        assert holder.pid != parent.pid
        assert holder.name.startswith("python")


def test_plain_tree_has_no_io_uring() -> None:
    with process("sh", "-c", "sleep 300 & wait") as parent:
        assert proctree.find_io_uring(proctree.process_tree(parent.pid)) is None


def test_connected_tcp_is_detected_listening_is_not(tmp_path: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    client_script = tmp_path / "client.py"
    client_script.write_text(TCP_CLIENT)
    listener_script = tmp_path / "listener.py"
    listener_script.write_text(LISTENER)
    try:
        with process(sys.executable, str(client_script), str(port), ready="ready") as client:
            conn, _ = server.accept()
            assert tcp_hold.connections(proctree.process_tree(client.pid))
            conn.close()
        with process(sys.executable, str(listener_script), ready="ready") as listener:
            assert not tcp_hold.connections(proctree.process_tree(listener.pid))
    finally:
        server.close()


def test_nspid_and_host_pid_in_own_namespace() -> None:
    with process("sh", "-c", "sleep 300 & wait") as parent:
        levels = proctree.nspid(parent.pid)
        assert levels[0] == parent.pid
        wait_for(lambda: len(proctree.process_tree(parent.pid)) == 2)
        child = proctree.process_tree(parent.pid)[1].pid
        # in our own namespace the "vpid" is the pid itself
        vpid = proctree.nspid(child)[len(levels) - 1]
        assert proctree.host_pid_for(parent.pid, vpid) == child
        assert proctree.host_pid_for(parent.pid, 999_999_999) is None


def test_gone_process_has_empty_tree() -> None:
    assert proctree.process_tree(999_999_999) == []
    assert proctree.start_time(999_999_999) is None
    assert os.getpid() in [p.pid for p in proctree.process_tree(os.getpid())]


def test_second_operation_on_a_container_is_refused_at_once() -> None:
    locks = ContainerLocks()
    entered = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with locks.hold("cid-1", "checkpoint"):
            entered.set()
            release.wait(5)

    worker = threading.Thread(target=hold)
    worker.start()
    try:
        assert entered.wait(5)
        with pytest.raises(OperationInProgress) as err, locks.hold("cid-1", "restore"):
            pass
        assert err.value.status == 409
        assert err.value.extra["operation"] == "checkpoint"
        with locks.hold("cid-2", "checkpoint"):  # another container is not blocked
            with pytest.raises(OperationInProgress):  # ... but is held meanwhile
                with locks.hold("cid-2", "restore"):
                    pass
    finally:
        release.set()
        worker.join()
    for cid in ("cid-1", "cid-2"):  # free again once each has finished
        with locks.hold(cid, "restore"):
            pass


def test_start_ticks_read_past_a_name_with_spaces_and_parentheses(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    fields = ["S", *map(str, range(4, 22)), "987654", "0"]  # field 22 is the start time
    (tmp_path / "42" / "stat").write_text("42 (my (odd) name) " + " ".join(fields) + "\n")
    assert proctree.start_ticks(42, tmp_path) == 987654
    assert proctree.start_ticks(43, tmp_path) is None


def test_start_time_is_the_one_ps_shows() -> None:
    import psutil

    assert proctree.start_time(os.getpid()) == pytest.approx(psutil.Process().create_time(),
                                                             abs=0.02)
    assert proctree.start_time(2**22 + 7) is None
