"""Post-copy: a checkpoint's memory relayed from the helper that serves it (sidecar/ops/lazy.py)
to the helper that restores it (sidecar/ops/peer.py, op "pages"), over real sockets on the
loopback. The serving node ("node-1") is a real PeerServer; its memory is served by a real
process started as `criu dump --lazy-pages` (lazy.start, criu.start_lazy_dump) that stands in
for CRIU's page server on the connected socket it inherits: it answers each request (4-byte
length, then bytes) with the request's SHA-256 and its bytes reversed, and exits 0 when its
connection ends, as CRIU's page server does however the transfer ended. The transport is what
is under test (the real CRIU is tested end to end): bytes arrive both ways byte for byte, the
source is let go only when the restoring side says every page arrived, a transfer cut or given
up never reads as success, and only one restore of this cluster, asking the right node, gets
the memory."""
from __future__ import annotations

import hashlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from sidecar.config import HelperConfig
from sidecar.errors import CheckpointUntrusted, DumpFailed, InvalidRequest
from sidecar.node import criu
from sidecar.ops import lazy, peer
from sidecar.ops.context import Helper
from tests.unit.sidecar_support import CLUSTER_KEY, wait_for, write_script, write_signing_key

CHECKPOINT_ID = "5d1e7a2c-8b3f-4c6d-9e0a-1f2b3c4d5e6f"
OTHER_ID = "5d1e7a2c-8b3f-4c6d-9e0a-1f2b3c4d5e70"
#: more than one frame of the relay, both ways (an answer is 32 bytes longer than its request)
BIG = 3 * peer.FRAME_BYTES + 12_345
#: what a test waits at most for anything (nothing here takes more than a fraction of it)
WAIT_S = 10.0

#: `criu dump --lazy-pages --ps-socket N --status-fd M`, as far as the helper can tell
FAKE_PAGE_SERVER = """
    import hashlib, os, socket, struct, sys
    from pathlib import Path

    args = sys.argv[1:]
    value = lambda flag: int(args[args.index(flag) + 1])
    if args[0] != "dump" or "--lazy-pages" not in args:
        sys.exit(2)
    if Path("fail").exists():  # the dump of everything but the memory failed
        Path("dump.log").write_text("(00.1) Error (criu/cr-dump.c:1): fake: cannot dump\\n")
        sys.exit(1)
    sock = socket.socket(fileno=value("--ps-socket"))
    status = value("--status-fd")
    os.write(status, b"\\0")  # everything but the memory is dumped
    os.close(status)

    def exactly(n):
        data = bytearray()
        while len(data) < n:
            chunk = sock.recv(min(n - len(data), 1 << 20))
            if not chunk:
                return None
            data += chunk
        return bytes(data)

    answered = 0
    try:
        while True:
            head = exactly(4)
            if head is None:
                break
            body = exactly(struct.unpack(">I", head)[0])
            if body is None:
                break
            sock.sendall(hashlib.sha256(body).digest() + body[::-1])
            answered += 1
    except OSError:
        pass
    Path("answered").write_text(str(answered))
    sys.exit(0)  # CRIU's page server takes the end of its connection for the end of the transfer
"""


def _config(tmp_path: Path, node: str, secret: bytes = CLUSTER_KEY) -> HelperConfig:
    return HelperConfig(checkpoint_dir=tmp_path / node / "checkpoints", node_name=node,
                        signing_key_file=write_signing_key(tmp_path / node / "key", secret))


@pytest.fixture(autouse=True)
def _short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing here may wait long: a broken transfer shows in seconds, not minutes."""
    monkeypatch.setattr(peer, "PAGES_IDLE_S", WAIT_S)
    monkeypatch.setattr(peer.PageStream, "REPORT_WAIT_S", WAIT_S)
    monkeypatch.setattr(lazy, "END_GRACE_S", WAIT_S)


@dataclass
class Source:
    """The serving node: its peer port and the memory it serves (registered in lazy.SERVING)."""

    port: int
    served: lazy.Served
    work_dir: Path
    streams: list[peer.PageStream] = field(default_factory=list)
    connections: list[socket.socket] = field(default_factory=list)

    def answered(self) -> int:
        """How many requests the page server answered (once it ended)."""
        return int((self.work_dir / "answered").read_text())


def _serve(tmp_path: Path, checkpoint_id: str = CHECKPOINT_ID) -> tuple[lazy.Served, Path]:
    (tmp_path / "tools").mkdir(parents=True, exist_ok=True)
    fake_criu = write_script(tmp_path / "tools" / "criu", FAKE_PAGE_SERVER)
    work_dir = tmp_path / "node-1" / "dump-work"
    work_dir.mkdir(parents=True, exist_ok=True)
    plan = criu.DumpPlan(pid=1, images_dir=tmp_path / "node-1" / "images", work_dir=work_dir,
                         netns_inode=1)
    return lazy.start(str(fake_criu), plan, checkpoint_id, WAIT_S, "the test's tree"), work_dir


@pytest.fixture()
def source(tmp_path: Path) -> Iterator[Source]:
    helper = Helper(_config(tmp_path, "node-1"))
    server = peer.PeerServer(helper, "127.0.0.1", 0)
    server.start()
    served, work_dir = _serve(tmp_path)
    node = Source(int(server.server_address[1]), served, work_dir)
    try:
        assert lazy.SERVING.get(CHECKPOINT_ID) is served
        yield node
    finally:
        for stream in node.streams:  # the restoring side's relays end
            stream.report(False, "the test is over")
            stream.close()
        lazy.SERVING.end(CHECKPOINT_ID)
        if served.dump.running():
            served.dump.proc.kill()
        served.dump.proc.wait(WAIT_S)
        server.shutdown()
        server.server_close()


def _open(node: Source, requester: HelperConfig, checkpoint_id: str = CHECKPOINT_ID,
          source_node: str = "node-1") -> peer.PageStream:
    """peer.open_pages as the restoring helper calls it; its TCP connection is kept in
    node.connections (to be cut), its stream in node.streams (ended after the test)."""
    def connect(address: tuple[str, int], timeout: float) -> socket.socket:
        sock = socket.create_connection(address, timeout=timeout)
        node.connections.append(sock)
        return sock

    stream = peer.open_pages(requester, "127.0.0.1", node.port, source_node, checkpoint_id,
                             connect=connect)
    node.streams.append(stream)
    stream.daemon_end.settimeout(WAIT_S)
    return stream


def _exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"the connection ended after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


def _ask(end: socket.socket, payload: bytes) -> None:
    """One request of the lazy-pages daemon and its answer, checked byte for byte."""
    end.sendall(struct.pack(">I", len(payload)) + payload)
    expected = hashlib.sha256(payload).digest() + payload[::-1]
    answer = _exactly(end, len(expected))
    same = answer == expected
    assert same, f"the answer to {len(payload)} bytes differs from the page server's"


def _relays(before: set[threading.Thread]) -> list[threading.Thread]:
    return [t for t in threading.enumerate()
            if t not in before and t.name.startswith("pages-") and t.is_alive()]


def test_memory_flows_both_ways_and_the_source_goes_once_every_page_arrived(
        tmp_path: Path, source: Source) -> None:
    before = set(threading.enumerate())
    stream = _open(source, _config(tmp_path, "node-2"))
    assert lazy.SERVING.get(CHECKPOINT_ID) is source.served and source.served.claimed
    _ask(stream.daemon_end, b"page 1")
    _ask(stream.daemon_end, os.urandom(BIG))  # several frames each way
    _ask(stream.daemon_end, b"")
    _ask(stream.daemon_end, b"\0" * 4096)
    assert source.served.dump.running()  # still serving: nothing said the transfer ended
    stream.daemon_end.close()  # the lazy-pages daemon ended ...
    assert not source.served.done.wait(0.3)  # ... but the source waits for the word
    stream.report(True)  # ... and its guard said it ended well
    source.served.finish(WAIT_S)  # no DumpFailed: the source may go
    assert source.served.outcome == {"ok": True, "reason": ""}
    assert source.served.dump.proc.returncode == 0
    assert source.answered() == 4
    wait_for(lambda: not _relays(before), WAIT_S)  # the restoring side's relay ended too


def test_a_failure_the_restoring_side_reports_reaches_the_source(
        tmp_path: Path, source: Source) -> None:
    stream = _open(source, _config(tmp_path, "node-2"))
    _ask(stream.daemon_end, os.urandom(BIG))
    reason = "the lazy-pages daemon ended with status 1: Error (uffd.c:42): boom"
    stream.report(False, reason)
    stream.close()
    with pytest.raises(DumpFailed) as failed:
        source.served.finish(WAIT_S)
    assert reason in failed.value.message
    assert source.served.outcome == {"ok": False, "reason": reason}
    # CRIU's page server took the closed connection for the end of the transfer: only the
    # restoring side's word made it a failure
    assert source.served.dump.proc.returncode == 0 and source.answered() == 1


@pytest.mark.parametrize("when", ["mid-request", "after every page, before the word"])
def test_a_connection_cut_never_reads_as_success(tmp_path: Path, source: Source,
                                                 when: str) -> None:
    stream = _open(source, _config(tmp_path, "node-2"))
    _ask(stream.daemon_end, b"page 1")
    if when == "mid-request":
        payload = os.urandom(BIG)
        stream.daemon_end.sendall(struct.pack(">I", len(payload)) + payload[:BIG // 2])
    else:
        stream.daemon_end.close()  # every page arrived; the relay waits for the word
    (connection,) = source.connections
    connection.shutdown(socket.SHUT_RDWR)  # the restoring helper's connection goes
    stream.report(True)  # too late: nothing it says reaches the source any more
    stream.close()
    with pytest.raises(DumpFailed, match="relay to the restoring node broke"):
        source.served.finish(WAIT_S)
    assert source.served.outcome is not None and source.served.outcome["ok"] is False
    assert source.served.dump.proc.returncode == 0  # the page server saw an ended transfer
    assert source.answered() == 1


def test_a_relay_quiet_for_longer_than_its_idle_limit_is_given_up(
        tmp_path: Path, source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peer, "PAGES_IDLE_S", 1.0)
    stream = _open(source, _config(tmp_path, "node-2"))
    _ask(stream.daemon_end, b"page 1")
    # nothing either way: both helpers take the transfer for broken
    with pytest.raises(DumpFailed, match="relay to the restoring node broke"):
        source.served.finish(WAIT_S)
    assert source.served.dump.proc.returncode == 0
    stream.daemon_end.settimeout(WAIT_S)
    assert stream.daemon_end.recv(1) == b""  # the daemon's connection ended too


def test_a_quiet_but_live_transfer_is_kept_by_keepalives(
        tmp_path: Path, source: Source, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both CRIUs quiet for longer than the idle limit (the target copies files before its
    daemon starts): the helpers' keepalives keep the transfer, which then completes."""
    monkeypatch.setattr(peer, "PAGES_IDLE_S", 1.0)
    monkeypatch.setattr(peer, "KEEPALIVE_S", 0.2)
    stream = _open(source, _config(tmp_path, "node-2"))
    time.sleep(2.5)
    _ask(stream.daemon_end, os.urandom(BIG))
    stream.daemon_end.close()
    stream.report(True)
    source.served.finish(WAIT_S)
    assert source.served.outcome == {"ok": True, "reason": ""}


def test_the_memory_goes_to_one_restore_only(tmp_path: Path, source: Source) -> None:
    requester = _config(tmp_path, "node-2")
    first = _open(source, requester)
    with pytest.raises(InvalidRequest, match="serves no memory of checkpoint"):
        _open(source, requester)
    with pytest.raises(InvalidRequest, match="serves no memory of checkpoint"):
        _open(source, _config(tmp_path / "third", "node-3"))
    with pytest.raises(InvalidRequest, match=f"serves no memory of checkpoint {OTHER_ID}"):
        _open(source, requester, checkpoint_id=OTHER_ID)  # nobody serves it
    # the refusals left the first transfer alone
    _ask(first.daemon_end, os.urandom(BIG))
    first.daemon_end.close()
    first.report(True)
    source.served.finish(WAIT_S)
    assert source.answered() == 1
    with pytest.raises(InvalidRequest, match="serves no memory of checkpoint"):
        _open(source, requester)  # nor again once it went


def test_a_helper_without_the_clusters_key_is_refused_and_claims_nothing(
        tmp_path: Path, source: Source) -> None:
    stranger = _config(tmp_path / "stranger", "node-2", secret=os.urandom(32))
    with pytest.raises(CheckpointUntrusted, match="not sealed with the cluster's key"):
        _open(source, stranger)
    assert lazy.SERVING.get(CHECKPOINT_ID) is source.served
    assert not source.served.claimed and source.served.dump.running()
    # the restore of this cluster still gets the memory
    stream = _open(source, _config(tmp_path, "node-2"))
    _ask(stream.daemon_end, os.urandom(BIG))
    stream.daemon_end.close()
    stream.report(True)
    source.served.finish(WAIT_S)
    assert source.answered() == 1


def test_a_hello_for_another_node_is_refused_and_claims_nothing(
        tmp_path: Path, source: Source) -> None:
    requester = _config(tmp_path, "node-2")
    with pytest.raises(InvalidRequest, match="is for node 'node-3', this is node-1"):
        _open(source, requester, source_node="node-3")
    assert not source.served.claimed and source.served.dump.running()
    stream = _open(source, requester)
    assert source.served.claimed
    _ask(stream.daemon_end, b"page 1")
    stream.daemon_end.close()
    stream.report(True)
    source.served.finish(WAIT_S)


def test_a_dump_that_fails_before_serving_serves_nothing(tmp_path: Path) -> None:
    work_dir = tmp_path / "node-1" / "dump-work"
    work_dir.mkdir(parents=True)
    (work_dir / "fail").touch()
    with pytest.raises(DumpFailed, match="CRIU: .*fake: cannot dump"):
        _serve(tmp_path)
    assert lazy.SERVING.get(CHECKPOINT_ID) is None
