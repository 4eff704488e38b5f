"""Checkpoints sent from one helper to another (sidecar/ops/peer.py), over real sockets on the
loopback: what arrives is the checkpoint byte for byte and listed; a stream the cluster's key
did not seal, changed, cut short, meant for another node, stale or played twice is refused and
leaves nothing on the receiving node."""
from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import struct
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import HelperConfig
from sidecar.errors import (
    CheckpointCorrupted,
    CheckpointUntrusted,
    HelperError,
    InvalidRequest,
    QuotaExceeded,
)
from sidecar.ops import peer
from sidecar.ops.context import Helper
from sidecar.registry.remote import unpack_signed_archive, write_archive
from sidecar.storage import store
from sidecar.storage.catalogue import CATALOGUE_FILE, Catalogue
from sidecar.storage.tar import add
from tests.unit.sidecar_support import CLUSTER_KEY, cluster_key, write_signing_key

CHECKPOINT_ID = "0b6a3c6e-2f7e-4a43-9a4c-6f3f0f1d2e11"


def _config(tmp_path: Path, node: str, secret: bytes = CLUSTER_KEY) -> HelperConfig:
    return HelperConfig(checkpoint_dir=tmp_path / node / "checkpoints", node_name=node,
                        signing_key_file=write_signing_key(tmp_path / node / "key", secret))


def _checkpoint(config: HelperConfig, checkpoint_id: str = CHECKPOINT_ID,
                pages: int = 3_000_000, secret: bytes = CLUSTER_KEY) -> Path:
    """A signed checkpoint in the sender's directory, of several frames."""
    d = config.checkpoint_dir / checkpoint_id
    (d / "checkpoint").mkdir(parents=True)
    (d / "checkpoint" / "pages-1.img").write_bytes(os.urandom(pages))
    (d / "checkpoint" / "core-1.img").write_bytes(b"core")
    (d / "config.dump").write_text("{}")
    manifest = store.CheckpointManifest(
        checkpoint_id, "2026-11-30T00:00:00Z",
        {"namespace": "ns", "pod": "p", "container": "c", "node": config.node_name}, {}, {})
    manifest.files = store.hash_files(d)
    manifest.sign(cluster_key(secret))
    store.write_json(d / store.MANIFEST, manifest.to_dict())
    return d


@pytest.fixture()
def receiver(tmp_path: Path) -> Iterator[tuple[Helper, int]]:
    helper = Helper(_config(tmp_path, "node-2"))
    helper.config.checkpoint_dir.mkdir(parents=True)
    server = peer.PeerServer(helper, "127.0.0.1", 0)
    server.start()
    try:
        yield helper, int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


def _left(helper: Helper) -> list[str]:
    """What the receiving node holds: its checkpoint directory and its catalogue."""
    names = sorted(p.name for p in helper.config.checkpoint_dir.iterdir()
                   if not p.name.startswith(CATALOGUE_FILE))
    return names + [e["id"] for e in Catalogue(helper.config.checkpoint_dir).list()]


def test_a_checkpoint_arrives_whole_and_listed(tmp_path: Path,
                                               receiver: tuple[Helper, int]) -> None:
    helper, port = receiver
    sender = _config(tmp_path, "node-1")
    source = _checkpoint(sender)
    sent = peer.send(sender, source, "127.0.0.1", port, "node-2")
    assert sent.checkpoint_id == CHECKPOINT_ID
    arrived = helper.config.checkpoint_dir / CHECKPOINT_ID
    for rel in ("checkpoint/pages-1.img", "checkpoint/core-1.img", "config.dump",
                store.MANIFEST):
        assert (arrived / rel).read_bytes() == (source / rel).read_bytes()
    assert sent.size_bytes == store.directory_size(arrived)
    entry = Catalogue(helper.config.checkpoint_dir).get(CHECKPOINT_ID)
    assert (entry["namespace"], entry["pod"], entry["container"]) == ("ns", "p", "c")
    assert entry["received_from"] == "node-1" and entry["pulled"] is True
    assert entry["status"] == "complete" and Path(entry["path"]) == arrived
    store.verify(arrived, cluster_key())  # what is listed verifies with the cluster's key
    # the same checkpoint again (a recorded stream played twice) is refused, the first kept
    with pytest.raises(InvalidRequest, match="already on node node-2"):
        peer.send(sender, source, "127.0.0.1", port, "node-2")
    assert (arrived / "checkpoint/pages-1.img").read_bytes() == \
        (source / "checkpoint/pages-1.img").read_bytes()


def test_a_helper_without_the_clusters_key_is_refused(tmp_path: Path,
                                                      receiver: tuple[Helper, int]) -> None:
    helper, port = receiver
    secret = os.urandom(32)  # a key of its own, with which its checkpoint verifies
    stranger = _config(tmp_path, "node-1", secret=secret)
    source = _checkpoint(stranger, secret=secret)
    with pytest.raises(CheckpointUntrusted, match="not sealed with the cluster's key"):
        peer.send(stranger, source, "127.0.0.1", port, "node-2")
    assert _left(helper) == []


def test_a_transfer_for_another_node_or_stale_is_refused(tmp_path: Path,
                                                         receiver: tuple[Helper, int]) -> None:
    helper, port = receiver
    sender = _config(tmp_path, "node-1")
    source = _checkpoint(sender)
    with pytest.raises(InvalidRequest, match="is for node 'node-3'"):
        peer.send(sender, source, "127.0.0.1", port, "node-3")
    stale = dict(_hello(), expires=time.time() - 1)
    answer = _raw_exchange(port, json.dumps(stale).encode() + b"\n")
    assert answer["ok"] is False and answer["code"] == "invalid_request"
    assert "expired" in answer["message"]
    assert _left(helper) == []


def _hello(**changes: Any) -> dict[str, Any]:
    return {"v": peer.VERSION, "checkpoint_id": CHECKPOINT_ID, "from": "node-1", "to": "node-2",
            "expires": round(time.time() + 60, 3), "salt": "ab" * 16, **changes}


def _raw_exchange(port: int, data: bytes) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        answer = sock.makefile("rb").readline()
    return dict(json.loads(answer))


class _Bytes:
    """A write-only file that keeps what is written."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: bytes) -> int:
        self.data += b
        return len(b)

    def flush(self) -> None:
        pass


def _recorded(tmp_path: Path, source: Path, config: HelperConfig,
              version: int = peer.VERSION) -> tuple[bytes, list[bytes]]:
    """The bytes a sender of `version` writes for `source`: its hello line and its frames
    (version 2: the manifest's bytes, then the listed files' bytes in the order of their
    names; version 1: the manifest, then the archive)."""
    hello = _hello(v=version)
    out = _Bytes()
    frames = peer.FrameWriter(out, peer.frame_key(CLUSTER_KEY, hello))  # type: ignore[arg-type]
    manifest = store.load_manifest(source)
    if version == peer.ARCHIVE_VERSION:
        frames.message(json.dumps(manifest.to_dict()).encode())
        write_archive(frames, source)  # type: ignore[arg-type]
    else:
        frames.message((source / store.MANIFEST).read_bytes())
        for rel in sorted(manifest.files):
            frames.write((source / rel).read_bytes())
    frames.close()
    return json.dumps(hello).encode() + b"\n", _split(bytes(out.data))


def _split(data: bytes) -> list[bytes]:
    """A recorded stream's frames, each with its length."""
    chunks = []
    while data:
        (size,) = struct.unpack(">I", data[:4])
        chunks.append(data[:4 + size])
        data = data[4 + size:]
    return chunks


@pytest.mark.parametrize("version", [peer.VERSION, peer.ARCHIVE_VERSION])
def test_a_changed_reordered_or_cut_stream_leaves_nothing(tmp_path: Path,
                                                          receiver: tuple[Helper, int],
                                                          version: int) -> None:
    """For a stream of this version and of the older one (a helper not yet upgraded)."""
    helper, port = receiver
    sender = _config(tmp_path, "node-1")
    source = _checkpoint(sender)
    hello, frames = _recorded(tmp_path, source, sender, version)
    assert len(frames) >= 4  # manifest, at least two frames of files or archive, the last
    changed = bytearray(frames[2])
    changed[100] ^= 1
    cases = {
        "changed": [*frames[:2], bytes(changed), *frames[3:]],
        "reordered": [frames[0], frames[2], frames[1], *frames[3:]],
        "cut": frames[:-2],
        "without its last frame": frames[:-1],
    }
    for what, chosen in cases.items():
        answer = _raw_exchange(port, hello + b"".join(chosen))
        assert answer["ok"] is False, what
        assert answer["code"] in (CheckpointUntrusted.code, CheckpointCorrupted.code), what
        assert _left(helper) == [], what
    # a hello changed on the way changes the key: its frames no longer open
    other = hello.replace(b'"from": "node-1"', b'"from": "node-9"')
    answer = _raw_exchange(port, other + b"".join(frames))
    assert (answer["ok"], answer["code"]) == (False, CheckpointUntrusted.code)
    # the untouched recording is taken (the cases above were refused for what they changed)
    assert _raw_exchange(port, hello + b"".join(frames))["ok"] is True
    assert _left(helper) == [CHECKPOINT_ID, CHECKPOINT_ID]
    arrived = helper.config.checkpoint_dir / CHECKPOINT_ID
    assert sorted(store.list_files(arrived)) == sorted(store.list_files(source))
    for rel in [*store.list_files(source), store.MANIFEST]:
        assert (arrived / rel).read_bytes() == (source / rel).read_bytes(), rel
    store.verify(arrived, cluster_key())


def _signed(files: dict[str, bytes], checkpoint_id: str = CHECKPOINT_ID) -> bytes:
    """The bytes of a manifest.json listing `files`, signed with the cluster's key: what
    only a helper (or whoever holds the key) can make."""
    manifest = store.CheckpointManifest(
        checkpoint_id, "2026-11-30T00:00:00Z",
        {"namespace": "ns", "pod": "p", "container": "c", "node": "node-1"}, {}, {})
    manifest.files = {rel: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                      for rel, data in files.items()}
    manifest.sign(cluster_key())
    return json.dumps(manifest.to_dict()).encode()


def _played(port: int, manifest: bytes, body: bytes) -> dict[str, Any]:
    """A version 2 stream of `manifest` then `body`, sealed with the cluster's key, played to
    the receiver; its answer."""
    hello = _hello()
    out = _Bytes()
    frames = peer.FrameWriter(out, peer.frame_key(CLUSTER_KEY, hello))  # type: ignore[arg-type]
    frames.message(manifest)
    frames.write(body)
    frames.close()
    return _raw_exchange(port, json.dumps(hello).encode() + b"\n" + bytes(out.data))


def test_a_stream_longer_or_shorter_than_its_manifest_leaves_nothing(
        tmp_path: Path, receiver: tuple[Helper, int]) -> None:
    """The manifest says how many bytes each file has: a byte more at the end, or one fewer,
    and nothing is kept."""
    helper, port = receiver
    files = {"checkpoint/core-1.img": b"core", "checkpoint/pages-1.img": os.urandom(5000)}
    manifest = _signed(files)
    body = b"".join(files[rel] for rel in sorted(files))
    longer = _played(port, manifest, body + b"x")
    assert (longer["ok"], longer["code"]) == (False, CheckpointUntrusted.code), longer
    assert "holds more than its checkpoint" in longer["message"]
    shorter = _played(port, manifest, body[:-1])
    assert (shorter["ok"], shorter["code"]) == (False, CheckpointCorrupted.code), shorter
    assert "ended inside 'checkpoint/pages-1.img'" in shorter["message"]
    assert _left(helper) == []
    assert _played(port, manifest, body)["ok"] is True  # the same, exactly as long
    arrived = helper.config.checkpoint_dir / CHECKPOINT_ID
    assert (arrived / "checkpoint/pages-1.img").read_bytes() == files["checkpoint/pages-1.img"]
    assert (arrived / store.MANIFEST).read_bytes() == manifest


@pytest.mark.parametrize("names", [["../escaped"], ["checkpoint/../../escaped"],
                                   ["/tmp/escaped"], ["a", "a/b"], [store.SEAL],
                                   ["checkpoint/./x"], ["checkpoint//x"]])
def test_names_a_signed_manifest_cannot_place_leave_nothing(
        tmp_path: Path, receiver: tuple[Helper, int], names: list[str]) -> None:
    """A manifest signed with the cluster's key that names a file outside the checkpoint, a
    file below a file, the seal, or a name in another spelling: refused, nothing written
    anywhere (the receiver places every name itself, beneath the checkpoint's directory)."""
    helper, port = receiver
    def everything() -> list[str]:
        return sorted(str(p) for p in tmp_path.rglob("*") if CATALOGUE_FILE not in p.name)

    before = everything()
    files = {name: b"evil" for name in names}
    answer = _played(port, _signed(files), b"evil" * len(files))
    assert (answer["ok"], answer.get("code")) == (False, CheckpointUntrusted.code), answer
    assert _left(helper) == []
    assert everything() == before
    assert not Path("/tmp/escaped").exists()


def test_a_checkpoint_changed_after_it_was_signed_is_refused(
        tmp_path: Path, receiver: tuple[Helper, int]) -> None:
    helper, port = receiver
    sender = _config(tmp_path, "node-1")
    source = _checkpoint(sender)
    (source / "checkpoint" / "core-1.img").write_bytes(b"evil")  # same size, other bytes
    # the sender checks its copy against the signed manifest before a byte goes out (the
    # receiver takes the bytes as sent: they come sealed with the cluster's key)
    with pytest.raises(HelperError) as refused:
        peer.send(sender, source, "127.0.0.1", port, "node-2")
    assert refused.value.code in (CheckpointCorrupted.code, CheckpointUntrusted.code)
    assert _left(helper) == []


def test_an_unreachable_helper_is_said_so(tmp_path: Path) -> None:
    sender = _config(tmp_path, "node-1")
    source = _checkpoint(sender, pages=10)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(peer.PeerUnreachable, match="cannot reach the helper of node node-2"):
        peer.send(sender, source, "127.0.0.1", port, "node-2")


def _recording(original: Any, seen: list[Any], as_version_1: bool = False) -> Any:
    """A receiver's hello check that keeps what each hello said in `seen`; `as_version_1`:
    as a helper of version 1 made it, any other version refused with that release's words."""
    def check(config: HelperConfig, hello: dict[str, Any], now: float) -> str:
        seen.append((hello.get("op"), hello.get("v")))
        if as_version_1 and hello.get("v") != 1:
            raise InvalidRequest(f"transfer protocol version {hello.get('v')!r} is not 1: "
                                 "helpers of different versions")
        return str(original(config, hello, now))
    return check


def test_a_receiver_of_version_1_gets_the_archive_after_refusing(
        tmp_path: Path, receiver: tuple[Helper, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """A rolling upgrade: the new sender's hello is refused by an old receiver, the sender
    sends once more as version 1 did (the archive), and the checkpoint arrives whole."""
    helper, port = receiver
    seen: list[Any] = []
    original = peer._check_hello
    monkeypatch.setattr(peer, "_check_hello", _recording(original, seen, as_version_1=True))
    sender = _config(tmp_path, "node-1")
    source = _checkpoint(sender)
    sent = peer.send(sender, source, "127.0.0.1", port, "node-2")
    assert seen == [(None, peer.VERSION), (None, 1)]
    arrived = helper.config.checkpoint_dir / CHECKPOINT_ID
    assert sent.size_bytes == store.directory_size(arrived)
    for rel in ("checkpoint/pages-1.img", "checkpoint/core-1.img", "config.dump"):
        assert (arrived / rel).read_bytes() == (source / rel).read_bytes()
    assert Catalogue(helper.config.checkpoint_dir).get(CHECKPOINT_ID)["status"] == "complete"
    # the old receiver's own refusal of the archive is final (no third try)
    seen.clear()
    with pytest.raises(InvalidRequest, match="already on node node-2"):
        peer.send(sender, source, "127.0.0.1", port, "node-2")
    assert seen == [(None, peer.VERSION), (None, 1)]
    # and a receiver of this version that refuses is not asked again as an old one
    seen.clear()
    monkeypatch.setattr(peer, "_check_hello", _recording(original, seen))
    with pytest.raises(InvalidRequest, match="already on node node-2"):
        peer.send(sender, source, "127.0.0.1", port, "node-2")
    assert seen == [(None, peer.VERSION)]


def test_the_memory_relay_is_asked_for_as_version_1_did(
        tmp_path: Path, receiver: tuple[Helper, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """The page relay did not change: a restoring helper asks a serving helper of either
    version for a checkpoint's memory with a hello both take (here one that serves none)."""
    helper, port = receiver
    seen: list[Any] = []
    monkeypatch.setattr(peer, "_check_hello", _recording(peer._check_hello, seen,
                                                         as_version_1=True))
    with pytest.raises(InvalidRequest, match="serves no memory of checkpoint"):
        peer.open_pages(_config(tmp_path, "node-1"), "127.0.0.1", port, "node-2", CHECKPOINT_ID)
    assert seen == [(peer.OP_PAGES, 1)]
    assert _left(helper) == []


def test_an_archive_without_every_listed_file_leaves_nothing(
        tmp_path: Path, receiver: tuple[Helper, int]) -> None:
    helper, port = receiver
    sender = _config(tmp_path, "node-1")
    source = _checkpoint(sender)
    (source / "checkpoint" / "core-1.img").unlink()  # sealed frames of an archive without it
    hello, frames = _recorded(tmp_path, source, sender, peer.ARCHIVE_VERSION)
    answer = _raw_exchange(port, hello + b"".join(frames))
    assert (answer["ok"], answer["code"]) == (False, CheckpointCorrupted.code), answer
    assert "lacks 1 file(s) its manifest lists: checkpoint/core-1.img" in answer["message"]
    assert _left(helper) == []


def test_a_stranger_that_does_not_prove_itself_in_time_is_cut_off(
        receiver: tuple[Helper, int], monkeypatch: pytest.MonkeyPatch) -> None:
    helper, port = receiver
    monkeypatch.setattr(peer, "HELLO_TIMEOUT_S", 0.5)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        started = time.monotonic()
        cut = False
        for byte in json.dumps(_hello()).encode():  # a hello, a byte at a time, never done
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                cut = True
                break
            time.sleep(0.05)
            if time.monotonic() - started > 5:
                break
        if not cut:
            sock.settimeout(5)
            try:
                cut = sock.recv(4096) == b""
            except OSError:
                cut = True
        assert cut and time.monotonic() - started < 5
    assert _left(helper) == []


def test_a_transfer_beyond_the_receivers_quota_is_refused_with_its_code(tmp_path: Path) -> None:
    import dataclasses
    helper = Helper(dataclasses.replace(_config(tmp_path, "node-2"),
                                        max_checkpoint_dir_bytes=1_000_000))
    helper.config.checkpoint_dir.mkdir(parents=True)
    server = peer.PeerServer(helper, "127.0.0.1", 0)
    server.start()
    try:
        sender = _config(tmp_path, "node-1")
        with pytest.raises(QuotaExceeded, match="refused checkpoint"):
            peer.send(sender, _checkpoint(sender), "127.0.0.1", int(server.server_address[1]),
                      "node-2")
        assert _left(helper) == []
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("pieces", [[1], [4096, 1], [peer.FRAME_BYTES - 3, 7],
                                    [peer.FRAME_BYTES], [3 * peer.FRAME_BYTES + 5]])
def test_frames_do_not_depend_on_how_the_bytes_were_written(pieces: list[int],
                                                            tmp_path: Path) -> None:
    """Whole frames are sealed straight from a large write, partial ones from the buffer: the
    stream is the same as when every byte went through the buffer, and reads back whole."""
    data = os.urandom(2 * peer.FRAME_BYTES + 12345)
    key = b"k" * 32
    written, reference = _Bytes(), _Bytes()
    frames = peer.FrameWriter(written, key)  # type: ignore[arg-type]
    offset, turn = 0, 0
    while offset < len(data):
        size = pieces[turn % len(pieces)]
        chunk = data[offset:offset + size]
        frames.write(memoryview(chunk) if turn % 2 else chunk)
        offset, turn = offset + size, turn + 1
    frames.close()
    whole = peer.FrameWriter(reference, key)  # type: ignore[arg-type]
    for start in range(0, len(data), peer.FRAME_BYTES):  # frame by frame, by hand
        whole._frame(data[start:start + peer.FRAME_BYTES], False)
    whole._frame(b"", True)
    assert bytes(written.data) == bytes(reference.data)
    back = peer.FrameReader(io.BufferedReader(io.BytesIO(bytes(written.data))), key, "test")
    assert back.read() == data and back.ended
    # read straight from files (a sender's way), in pieces that straddle the frames
    files, offset = tmp_path / "files", 0
    files.mkdir()
    from_files = _Bytes()
    frames = peer.FrameWriter(from_files, key)  # type: ignore[arg-type]
    for n, size in enumerate(pieces * 3):
        (files / str(n)).write_bytes(data[offset:offset + size])
        with open(files / str(n), "rb", buffering=0) as f:
            frames.write_from(f, len(data[offset:offset + size]), str(n))
        offset += size
    frames.write(data[offset:])
    frames.close()
    assert bytes(from_files.data) == bytes(reference.data)
    # a piece of the stream written straight into a file, across frames
    back = peer.FrameReader(io.BufferedReader(io.BytesIO(bytes(written.data))), key, "test")
    assert back.read(5) == data[:5]
    with open(tmp_path / "copied", "wb") as out:
        back.copy_to(out.fileno(), peer.FRAME_BYTES + 7, "test")
    assert (tmp_path / "copied").read_bytes() == data[5:peer.FRAME_BYTES + 12]
    assert back.read() == data[peer.FRAME_BYTES + 12:]


def test_a_file_shorter_or_longer_than_its_manifest_is_not_sent(tmp_path: Path) -> None:
    """The sender reads exactly the listed size of every file, and says so when a file holds
    fewer or more bytes (changed after it was verified)."""
    (tmp_path / "f").write_bytes(b"12345")
    for listed, problem in ((6, "shorter"), (4, "longer")):
        frames = peer.FrameWriter(_Bytes(), b"k" * 32)  # type: ignore[arg-type]
        with open(tmp_path / "f", "rb", buffering=0) as f, \
                pytest.raises(CheckpointCorrupted, match=f"f is {problem} than its manifest"):
            frames.write_from(f, listed, "f")


def test_the_archive_is_the_bytes_of_tarfiles_stream_mode(tmp_path: Path) -> None:
    """write_archive copies files in 1 MiB pieces, yet writes what tarfile's stream mode
    wrote before (helpers of the older version read it, and it unpacks the same)."""
    source = _checkpoint(_config(tmp_path, "node-1"), pages=peer.FRAME_BYTES * 2 + 777)
    ours, theirs = _Bytes(), _Bytes()
    write_archive(ours, source)  # type: ignore[arg-type]
    with tarfile.open(fileobj=theirs, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for rel in ["", *store.list_files(source), store.MANIFEST]:
            add(tar, source / rel if rel else source, rel or ".", root_owner=True)
    assert bytes(ours.data) == bytes(theirs.data)
    dest = tmp_path / "unpacked"
    dest.mkdir()
    unpack_signed_archive(store.load_manifest(source), io.BytesIO(bytes(ours.data)), dest)
    for rel in store.list_files(source):
        assert (dest / rel).read_bytes() == (source / rel).read_bytes()
