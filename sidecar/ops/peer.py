"""Checkpoints sent straight from one node's helper to another's: the transfer inside a
migration's pause (docs/architecture.md, "Migration: helper to helper").

A helper started with --peer-port listens there (on its pod's address: the node's, the helper
runs in the node's network) for checkpoints other helpers send. One connection carries one
checkpoint:

    hello   one line of JSON: {"v": 2, "checkpoint_id", "from", "to", "expires", "salt"}
    frames  4-byte big-endian length, then AES-256-GCM ciphertext; the nonce is the frame's
            number; the associated data says whether it is the last frame. The first frame is
            the checkpoint's signed manifest (the bytes of its manifest.json); the others carry
            the bytes of every file the manifest lists, one after the other in the order of
            their names, each exactly as long as the manifest says (no names, no headers: the
            manifest says what comes); the last frame is empty. A helper of version 1 sends
            the manifest, then the checkpoint's archive (the layout of its image's one layer):
            still taken, so a newer receiver takes what an older sender sends; an older
            receiver refuses a version 2 hello, and the sender tries once more as version 1.
            A connection for a checkpoint's memory (post-copy, "op": "pages") says version 1:
            that relay did not change.
    answer  one line of JSON from the receiver: {"ok": true, "size_bytes"} or
            {"ok": false, "code", "message"}

The frames' key is HMAC-SHA256(cluster signing key, purpose + canonical(hello)): only a helper
holding the cluster's key can make a frame the receiver accepts, a hello changed in transit
changes the key, the bytes cannot be read on the wire (they hold process memory) and a
truncated or reordered stream is refused. Nothing is written before the first frame (the
manifest) decrypts and its signature checks; every name is checked before anything is written
there (and reached beneath the checkpoint's directory), no file takes more bytes than the
manifest lists, every file is verified before the checkpoint is listed,
and a refusal at any point leaves nothing on disk. A hello is good for HELLO_TTL_S and only for
the node it names, and a checkpoint id already on the node is refused, so a recorded stream
cannot be played to another node or again later.
"""
from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import shutil
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sidecar.config import HelperConfig
from sidecar.errors import (
    CheckpointCorrupted,
    CheckpointUntrusted,
    ContentTooLarge,
    HelperError,
    InternalError,
    InvalidRequest,
    QuotaExceeded,
)
from sidecar.ops import lazy
from sidecar.ops.context import Helper
from sidecar.ops.transfer import check_id, cluster_key, list_arrived
from sidecar.registry.remote import unpack_signed_archive, write_archive
from sidecar.storage import signing, store
from sidecar.storage.beneath import Root
from sidecar.storage.catalogue import Catalogue
from sidecar.storage.paths import relative_name

log = logging.getLogger(__name__)

PURPOSE = b"cedana-helper peer transfer v1\n"
PAGES_PURPOSE = b"cedana-helper post-copy pages v1\n"
#: what a connection is for (its hello's "op"): a checkpoint sent, or a checkpoint's memory
#: relayed to the restore that takes it (post-copy)
OP_CHECKPOINT, OP_PAGES = "checkpoint", "pages"
#: a checkpoint's files follow its manifest bare; a version 1 sender sent its archive (still
#: taken). The memory relay (OP_PAGES) is the same in both: its hello says 1, which helpers
#: of either version take.
VERSION, ARCHIVE_VERSION, PAGES_VERSION = 2, 1, 1
#: what a helper of version 1 answers a hello of another version with: the sender tries once
#: more the old way (a rolling upgrade of the DaemonSet has nodes of both for a while)
_OLD_RECEIVER = "transfer protocol version 2 is not 1"
FRAME_BYTES = 1 << 20
TAG_BYTES = 16
MAX_HELLO_BYTES = 4096
MAX_ANSWER_BYTES = 64 << 10
#: tar pads its stream with zeros to a whole record after the end of the archive
MAX_PADDING_BYTES = 64 << 10
#: how long a refused sender may go on sending before the connection is closed
DRAIN_S = 10.0
#: connections served at once; more are closed at once
MAX_CONNECTIONS = 16
#: a hello is accepted this long after it was made (clocks of nodes agree to seconds)
HELLO_TTL_S = 120.0
#: a connection that sends nothing for this long is closed
IDLE_TIMEOUT_S = 60.0
#: a sender has this long from connecting to its first frame opened with the cluster's key
HELLO_TIMEOUT_S = 10.0
_MORE, _LAST = b"more", b"last"
#: a frame smaller than this goes out in one write with its length, a larger one in two
_JOIN_BELOW = 64 << 10


class PeerUnreachable(HelperError):
    """The other helper could not be reached or the connection broke: nothing was decided
    there (the caller may send another way)."""


# -- the wire --------------------------------------------------------------------------------
def frame_key(secret: bytes, hello: dict[str, Any]) -> bytes:
    return hmac.new(secret, PURPOSE + signing.canonical(hello), hashlib.sha256).digest()


def _nonce(number: int) -> bytes:
    return struct.pack(">4xQ", number)


class FrameWriter:
    """A write-only file: what is written goes out in encrypted frames; close() sends the last,
    empty frame."""

    def __init__(self, out: IO[bytes], key: bytes) -> None:
        self.out, self.aead, self.number = out, AESGCM(key), 0
        self.buffer, self.fill = bytearray(FRAME_BYTES), 0  # the frame being filled

    def _frame(self, data: bytes | bytearray | memoryview, last: bool) -> None:
        sealed = self.aead.encrypt(_nonce(self.number), data, _LAST if last else _MORE)
        self.number += 1
        header = struct.pack(">I", len(sealed))
        if len(sealed) < _JOIN_BELOW:
            self.out.write(header + sealed)  # one write: a small frame goes out in one piece
        else:
            self.out.write(header)  # not joined: a copy of the frame for 4 bytes
            self.out.write(sealed)

    def _seal_if_full(self) -> None:
        if self.fill == FRAME_BYTES:
            self._frame(self.buffer, False)
            self.fill = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        # whole frames are sealed straight from `data`; only a partial one is kept (the
        # frames are the same however the bytes were written)
        view = memoryview(data).cast("B")
        size = len(view)
        if self.fill:
            taken = min(FRAME_BYTES - self.fill, size)
            self.buffer[self.fill:self.fill + taken] = view[:taken]
            self.fill += taken
            view = view[taken:]
            self._seal_if_full()
        while len(view) >= FRAME_BYTES:
            self._frame(view[:FRAME_BYTES], False)
            view = view[FRAME_BYTES:]
        if len(view):
            self.buffer[:len(view)] = view
            self.fill = len(view)
        return size

    def write_from(self, source: io.FileIO, size: int, what: str) -> None:
        """Exactly `size` bytes of the file `source`, read straight into the frame being
        filled; CheckpointCorrupted when it holds fewer or more."""
        window = memoryview(self.buffer)
        while size:
            got = source.readinto(window[self.fill:self.fill + min(size, FRAME_BYTES - self.fill)])
            if not got:
                raise CheckpointCorrupted(f"{what} is shorter than its manifest says")
            self.fill += got
            size -= got
            self._seal_if_full()
        if source.read(1):
            raise CheckpointCorrupted(f"{what} is longer than its manifest says")

    def message(self, data: bytes) -> None:
        """One frame of its own (the manifest)."""
        self._frame(data, False)

    def close(self) -> None:
        if self.fill:
            self._frame(memoryview(self.buffer)[:self.fill], False)
            self.fill = 0
        self._frame(b"", True)
        self.out.flush()


class FrameReader:
    """A read-only file over the frames of a FrameWriter; CheckpointUntrusted for a frame the
    key did not seal (or changed, or out of order), CheckpointCorrupted for a stream that ends
    before its last frame."""

    def __init__(self, raw: IO[bytes], key: bytes, what: str) -> None:
        self.raw, self.aead, self.what = raw, AESGCM(key), what
        self.number, self.ended = 0, False
        self.current, self.offset = b"", 0  # the frame in hand, and how much of it was read

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.raw.read(n - len(data))
            if not chunk:
                raise CheckpointCorrupted(f"{self.what} ended before its last frame")
            data += chunk
        return data

    def frame(self) -> bytes:
        """The next frame's plain bytes (b"" after the last)."""
        if self.ended:
            return b""
        (size,) = struct.unpack(">I", self._exactly(4))
        if not TAG_BYTES <= size <= FRAME_BYTES + TAG_BYTES:
            raise CheckpointUntrusted(f"{self.what} has a frame of {size} bytes: not a "
                                      "helper's stream")
        sealed = self._exactly(size)
        for aad in (_MORE, _LAST):
            try:
                plain = self.aead.decrypt(_nonce(self.number), sealed, aad)
            except InvalidTag:
                continue
            self.number += 1
            self.ended = aad == _LAST
            return plain
        raise CheckpointUntrusted(
            f"{self.what}: frame {self.number} was not sealed with the cluster's key for this "
            "transfer (not sent by a helper of this cluster, or changed on the way)")

    def read(self, size: int = -1) -> bytes:
        # a piece within the frame in hand is one copy (a whole frame none); only a piece
        # across frames is joined
        pieces: list[bytes] = []
        while size:
            if self.offset >= len(self.current):
                if self.ended:
                    break
                self.current, self.offset = self.frame(), 0
                continue
            end = len(self.current) if size < 0 else min(len(self.current), self.offset + size)
            pieces.append(self.current if self.offset == 0 and end == len(self.current)
                          else self.current[self.offset:end])
            if size > 0:
                size -= end - self.offset
            self.offset = end
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def copy_to(self, fd: int, size: int, what: str) -> None:
        """Exactly `size` bytes of the stream into the file `fd`, written straight from the
        frames; CheckpointCorrupted when the stream ends first."""
        while size:
            if self.offset >= len(self.current):
                if self.ended:
                    raise CheckpointCorrupted(f"{self.what} ended inside {what}")
                self.current, self.offset = self.frame(), 0
                continue
            end = min(len(self.current), self.offset + size)
            written = os.write(fd, memoryview(self.current)[self.offset:end])
            self.offset += written
            size -= written

    def readable(self) -> bool:
        return True

    def finish(self) -> None:
        """The stream must end with the checkpoint: its last frame, after at most tar's own
        padding of zeros (the archive of a version 1 sender)."""
        rest = self.current[self.offset:]
        self.offset = len(self.current)
        while not self.ended and len(rest) <= MAX_PADDING_BYTES:
            rest += self.read(FRAME_BYTES)
        if not self.ended or len(rest) > MAX_PADDING_BYTES or rest.strip(b"\0"):
            raise CheckpointUntrusted(f"{self.what} holds more than its checkpoint")


def _read_line(raw: IO[bytes], limit: int, what: str) -> dict[str, Any]:
    line = raw.readline(limit + 1)
    if not line.endswith(b"\n"):
        raise InvalidRequest(f"{what} is not one line of JSON of at most {limit} bytes")
    try:
        value = json.loads(line)
    except ValueError:
        raise InvalidRequest(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"{what} is not a JSON object")
    return value


# -- receiving -------------------------------------------------------------------------------
def _check_hello(config: HelperConfig, hello: dict[str, Any], now: float) -> str:
    if hello.get("v") not in (VERSION, ARCHIVE_VERSION):
        raise InvalidRequest(f"transfer protocol version {hello.get('v')!r} is not "
                             f"{VERSION} or {ARCHIVE_VERSION}: helpers of different versions")
    checkpoint_id = hello.get("checkpoint_id")
    if not isinstance(checkpoint_id, str):
        raise InvalidRequest("the transfer names no checkpoint_id")
    check_id(checkpoint_id)
    if hello.get("to") != config.node_name:
        raise InvalidRequest(f"the transfer is for node {str(hello.get('to'))[:253]!r}, this is "
                             f"{config.node_name}")
    expires = hello.get("expires")
    if not isinstance(expires, (int, float)) or not now <= expires <= now + 2 * HELLO_TTL_S:
        raise InvalidRequest("the transfer's hello has expired or is not of now (clocks of "
                             "the two nodes apart?)")
    salt = hello.get("salt")
    if not isinstance(salt, str) or len(salt) != 32:
        raise InvalidRequest("the transfer's hello has no salt")
    return checkpoint_id


def receive(helper: Helper, raw: IO[bytes],
            authenticated: Callable[[], None] | None = None,
            hello: dict[str, Any] | None = None) -> dict[str, Any]:
    """One checkpoint from another helper, read from `raw` (after its `hello`, if read
    already); listed on this node when whole. `authenticated` is called once the first frame
    opened with the cluster's key."""
    config = helper.config
    if hello is None:
        hello = _read_line(raw, MAX_HELLO_BYTES, "the transfer's hello")
    checkpoint_id = _check_hello(config, hello, time.time())
    key = cluster_key(config, CheckpointUntrusted, "it cannot receive checkpoints from other "
                      "nodes", checkpoint_id=checkpoint_id)
    frames = FrameReader(raw, frame_key(key.secret, hello), f"the transfer of checkpoint "
                                                              f"{checkpoint_id}")
    first = frames.frame()
    if authenticated is not None:
        authenticated()
    try:
        manifest = store.CheckpointManifest.from_dict(json.loads(first))
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointCorrupted(f"the transfer of checkpoint {checkpoint_id} has no "
                                  f"manifest: {exc}") from None
    manifest.check_signature(key, f"the transfer of checkpoint {checkpoint_id}")
    if manifest.checkpoint_id != checkpoint_id:
        raise CheckpointUntrusted(f"the transfer of checkpoint {checkpoint_id} carries the "
                                  f"manifest of {manifest.checkpoint_id[:128]}")
    if manifest.size_bytes > config.max_checkpoint_bytes:
        raise ContentTooLarge(
            f"checkpoint {checkpoint_id} holds {manifest.size_bytes} bytes, more than this "
            f"helper takes from elsewhere (--max-checkpoint-bytes {config.max_checkpoint_bytes})",
            limit_bytes=config.max_checkpoint_bytes, checkpoint_id=checkpoint_id)
    catalogue = Catalogue(config.checkpoint_dir)
    final_dir = config.checkpoint_dir / checkpoint_id
    if checkpoint_id in {e["id"] for e in catalogue.list()} or final_dir.exists():
        raise InvalidRequest(f"checkpoint {checkpoint_id} is already on node "
                             f"{config.node_name}", checkpoint_id=checkpoint_id)
    # a name of its own: two transfers of one id cannot write into each other (the second
    # rename finds the first in place and fails)
    temp = config.checkpoint_dir / f"{store.TEMP_PREFIX}peer-{checkpoint_id}-{secrets.token_hex(4)}"
    with ExitStack() as until_listed:
        until_listed.enter_context(helper.limits.reserve(
            config, manifest.size_bytes, f"transfer of checkpoint {checkpoint_id}",
            checkpoint_id=checkpoint_id))
        shutil.rmtree(temp, ignore_errors=True)
        store.make_private_dirs(temp, config.checkpoint_dir)
        try:
            if hello.get("v") == ARCHIVE_VERSION:
                unpack_signed_archive(manifest, cast(IO[bytes], frames), temp)
            else:
                _unpack_files(manifest, first, frames, temp)
            frames.finish()
            store.restrict_permissions(temp)  # before the seal, which records the files as
            verified = store.load_manifest(temp)  # they stand
            if verified.signed_payload() != manifest.signed_payload():
                raise CheckpointUntrusted(f"the manifest inside the transfer of checkpoint "
                                          f"{checkpoint_id} is not the one it was sent with")
            # not hashed again: the sender verified its copy against this signed manifest
            # before it sent it, and every byte came sealed with the cluster's key
            store.seal(temp, verified, key)
            temp.rename(final_dir)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        # a copy, like a pulled one: the source's helper keeps (and pushes) the original
        list_arrived(catalogue, config, checkpoint_id, final_dir, verified, pulled=True,
                     received_from=str(hello.get("from") or "")[:253])
    size = store.directory_size(final_dir)
    log.info("checkpoint received", extra={"checkpoint_id": checkpoint_id,
                                           "from_node": hello.get("from"), "size_bytes": size})
    return {"ok": True, "checkpoint_id": checkpoint_id, "size_bytes": size}


def _unpack_files(manifest: store.CheckpointManifest, manifest_bytes: bytes,
                  frames: FrameReader, dest: Path) -> None:
    """The files of a version 2 stream into dest (new and empty): each name the signed
    manifest lists, in the order of the names, checked and reached beneath dest, exactly as
    many bytes as the manifest says; then manifest.json, the bytes the manifest came in. The
    bytes are the sender's to vouch for (it verified its sealed copy, every frame is sealed
    with the cluster's key); the caller removes dest on any error."""
    what = f"the transfer of checkpoint {manifest.checkpoint_id}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with Root(dest) as root:
        for rel in [*sorted(manifest.files), store.MANIFEST]:
            size = len(manifest_bytes) if rel == store.MANIFEST else \
                _listed_size(manifest, rel, what)
            try:
                parent, name = root.parent(rel, create=True)
                try:
                    fd = os.open(name, flags, store.FILE_MODE, dir_fd=parent)
                finally:
                    os.close(parent)
            except OSError as exc:
                raise CheckpointUntrusted(f"{what}: its manifest lists {rel!r}, which cannot "
                                          f"be placed in a checkpoint ({exc.strerror})") from None
            try:
                if rel == store.MANIFEST:
                    os.write(fd, manifest_bytes)  # one frame's worth: one write
                else:
                    frames.copy_to(fd, size, repr(rel))
            finally:
                os.close(fd)


def _listed_size(manifest: store.CheckpointManifest, rel: str, what: str) -> int:
    """The size the manifest gives a file, once its name is a plain relative one that is
    neither the manifest's nor the seal's."""
    plain = relative_name(rel, source=what, error=CheckpointUntrusted, outside="the checkpoint")
    if plain != rel or rel in (store.MANIFEST, store.SEAL):
        raise CheckpointUntrusted(f"{what}: its manifest lists {rel!r}, not a name of a "
                                  "checkpoint's file")
    entry = manifest.files[rel]
    size = entry.get("size") if isinstance(entry, dict) else None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise CheckpointUntrusted(f"{what}: its manifest gives {rel!r} no size")
    return size


class _Handler(socketserver.StreamRequestHandler):
    server: PeerServer

    def handle(self) -> None:
        if not self.server.slots.acquire(blocking=False):
            return  # closed: as many transfers as it takes are running
        try:
            self._handle()
        finally:
            self.server.slots.release()

    def _handle(self) -> None:
        # the sender has HELLO_TIMEOUT_S to prove it holds the cluster's key (its hello and
        # first frame), however slowly it sends them: strangers do not keep the slots long
        self.connection.settimeout(IDLE_TIMEOUT_S)
        deadline = threading.Timer(HELLO_TIMEOUT_S, self._cut)
        deadline.start()
        peer = self.client_address[0] if self.client_address else ""
        try:
            hello = _read_line(cast(IO[bytes], self.rfile), MAX_HELLO_BYTES,
                               "the transfer's hello")
            if hello.get("op", OP_CHECKPOINT) == OP_PAGES:
                # answered, then relayed until the memory has gone
                serve_pages(self.server.helper, hello, self.connection,
                            cast(IO[bytes], self.rfile), deadline.cancel)
                return
            answer = receive(self.server.helper, cast(IO[bytes], self.rfile), deadline.cancel,
                             hello=hello)
        except HelperError as exc:
            log.warning("checkpoint transfer refused", extra={
                "peer": peer, "code": exc.code, "reason": exc.message})
            answer = {"ok": False, "code": exc.code, "message": exc.message}
        except (OSError, EOFError) as exc:
            log.warning("checkpoint transfer broken", extra={"peer": peer, "reason": str(exc)})
            return
        except Exception as exc:  # one connection's failure, said to its peer
            log.exception("checkpoint transfer failed", extra={"peer": peer})
            answer = {"ok": False, "code": InternalError.code, "message": str(exc)[:500]}
        finally:
            deadline.cancel()
        try:
            self.wfile.write(json.dumps(answer).encode() + b"\n")
            self.wfile.flush()
            if not answer["ok"]:
                self._drain()
        except OSError:
            pass

    def _cut(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _drain(self) -> None:
        """After a refusal, read (and drop) what the sender still sends, for a while: closing
        with unread bytes would reset the connection, and the sender would lose the answer."""
        self.connection.shutdown(socket.SHUT_WR)
        self.connection.settimeout(1.0)
        end = time.monotonic() + DRAIN_S
        while time.monotonic() < end:
            try:
                if not self.connection.recv(FRAME_BYTES):
                    return
            except TimeoutError:
                continue


class PeerServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, helper: Helper, address: str, port: int) -> None:
        self.helper = helper
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.address_family = family
        super().__init__((address, port), _Handler)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="peer-transfer", daemon=True)
        thread.start()
        log.info("receiving checkpoints from other helpers", extra={
            "address": self.server_address[0], "port": self.server_address[1]})
        return thread


def _hello(config: HelperConfig, checkpoint_id: str, to: str,
           version: int = VERSION) -> dict[str, Any]:
    """A connection's first line: what it is about, between which nodes, until when, salted."""
    return {"v": version, "checkpoint_id": checkpoint_id, "from": config.node_name, "to": to,
            "expires": round(time.time() + HELLO_TTL_S, 3), "salt": secrets.token_hex(16)}


# -- sending ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sent:
    checkpoint_id: str
    size_bytes: int
    duration_ms: int


def send(config: HelperConfig, directory: Path, address: str, port: int, target_node: str,
         *, timeout_s: float = IDLE_TIMEOUT_S,
         connect: Callable[..., socket.socket] = socket.create_connection) -> Sent:
    """Send the local checkpoint in `directory` to the helper at address:port (of
    `target_node`); PeerUnreachable when it could not be reached or the connection broke, the
    receiver's own error when it refused."""
    key = cluster_key(config, InvalidRequest, "it does not send checkpoints to other nodes")
    # what is sent is what the signed manifest says (the seal makes this cheap): the receiver
    # takes the bytes as sent, each frame sealed with the cluster's key
    manifest = store.verify(directory, key)
    checkpoint_id = manifest.checkpoint_id
    manifest_bytes = (directory / store.MANIFEST).read_bytes()
    if store.CheckpointManifest.from_dict(json.loads(manifest_bytes)).signed_payload() != \
            manifest.signed_payload():
        raise CheckpointCorrupted(f"the manifest of checkpoint {checkpoint_id} changed while "
                                  "it was sent", checkpoint_id=checkpoint_id)
    started = time.monotonic()
    send_as = partial(_send_once, config, key.secret, directory, manifest, manifest_bytes,
                      address, port, target_node, timeout_s=timeout_s, connect=connect)
    try:
        answer = send_as(VERSION)
    except InvalidRequest as exc:
        if _OLD_RECEIVER not in exc.message:
            raise
        log.warning("the helper of node %s is of an older version: sending checkpoint %s "
                    "as its archive", target_node, checkpoint_id,
                    extra={"checkpoint_id": checkpoint_id, "to_node": target_node})
        answer = send_as(ARCHIVE_VERSION)
    return Sent(checkpoint_id, int(answer.get("size_bytes") or 0),
                round((time.monotonic() - started) * 1000))


def _send_once(config: HelperConfig, secret: bytes, directory: Path,
               manifest: store.CheckpointManifest, manifest_bytes: bytes, address: str,
               port: int, target_node: str, version: int, *, timeout_s: float,
               connect: Callable[..., socket.socket]) -> dict[str, Any]:
    """One connection carrying the checkpoint in protocol `version`: the receiver's answer,
    or its refusal raised."""
    checkpoint_id = manifest.checkpoint_id
    hello = _hello(config, checkpoint_id, target_node, version)
    where = f"the helper of node {target_node} ({address}:{port})"
    try:
        sock = connect((address, port), timeout=timeout_s)
    except OSError as exc:
        raise PeerUnreachable(f"cannot reach {where}: {exc}") from None
    broke: OSError | None = None
    with sock, sock.makefile("wb", buffering=FRAME_BYTES) as out, sock.makefile("rb") as answers:
        try:
            out.write(signing.canonical(hello) + b"\n")
            frames = FrameWriter(cast(IO[bytes], out), frame_key(secret, hello))
            frames.message(manifest_bytes)
            if version == ARCHIVE_VERSION:
                write_archive(cast(IO[bytes], frames), directory)
            else:
                for rel in sorted(manifest.files):
                    with open(directory / rel, "rb", buffering=0, opener=_no_follow) as f:
                        frames.write_from(f, int(manifest.files[rel]["size"]),
                                          f"{rel} of checkpoint {checkpoint_id}")
            frames.close()
            sock.shutdown(socket.SHUT_WR)
        except OSError as exc:  # the receiver may have refused early: its answer says why
            broke = exc
        answer = _answer(answers, where)
    if answer is not None:
        _raise_refusal(answer, where, checkpoint_id)
    if broke is not None or answer is None:
        raise PeerUnreachable(f"the transfer to {where} broke: {broke}" if broke is not None
                              else f"{where} closed the connection without an answer")
    return answer


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _answer(answers: IO[bytes], where: str) -> dict[str, Any] | None:
    try:
        return _read_line(answers, MAX_ANSWER_BYTES, f"the answer of {where}")
    except (OSError, InvalidRequest):
        return None


def _raise_refusal(answer: dict[str, Any], where: str, checkpoint_id: str) -> None:
    if answer.get("ok") is True:
        return
    code = str(answer.get("code") or "")
    error = next((cls for cls in _ERRORS if cls.code == code), InternalError)
    raise error(f"{where} refused checkpoint {checkpoint_id}: "
                f"{str(answer.get('message'))[:500]}", checkpoint_id=checkpoint_id)


#: what receive() refuses with, by code: the sender raises the same
_ERRORS: tuple[type[HelperError], ...] = (
    InvalidRequest, CheckpointUntrusted, CheckpointCorrupted, ContentTooLarge, QuotaExceeded,
    InternalError)


# -- post-copy: a checkpoint's memory, relayed ----------------------------------------------
#: a page transfer that moves nothing either way for this long is broken (the lazy-pages
#: daemon asks for pages until it has them all, so a live one is never quiet)
PAGES_IDLE_S = 30.0


def pages_keys(secret: bytes, hello: dict[str, Any]) -> tuple[bytes, bytes]:
    """The frames' keys of a page transfer: (towards the node serving, towards the restore)."""
    base = PAGES_PURPOSE + signing.canonical(hello)
    return (hmac.new(secret, base + b"\nup", hashlib.sha256).digest(),
            hmac.new(secret, base + b"\ndown", hashlib.sha256).digest())


class _SocketOut:
    """What FrameWriter writes to: each frame goes at once (CRIU waits for its answers)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def write(self, data: bytes) -> int:
        self.sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass


#: a page transfer's frames begin with their kind: CRIU's bytes, or (last, from the restoring
#: side) how the restore's lazy-pages daemon ended: CRIU's page server takes the end of its
#: connection for the end of the transfer, whether or not the daemon had every page
#: a frame of nothing, sent after KEEPALIVE_S without bytes from CRIU: the other side sees a
#: live peer while CRIU is quiet (the target copies files before its daemon starts)
_DATA, _OUTCOME, _KEEPALIVE = b"\0", b"\1", b"\2"
KEEPALIVE_S = 10.0


def _pump_out(local: socket.socket, frames: FrameWriter,
              outcome: Callable[[], dict[str, Any]] | None) -> None:
    local.settimeout(KEEPALIVE_S)
    while True:
        try:
            data = local.recv(FRAME_BYTES - 1)
        except TimeoutError:
            frames.message(_KEEPALIVE)
            continue
        if not data:
            break
        frames.message(_DATA + data)
    if outcome is not None:
        frames.message(_OUTCOME + json.dumps(outcome()).encode())
    frames.close()


def _pump_in(frames: FrameReader, local: socket.socket,
             on_outcome: Callable[[dict[str, Any]], None] | None) -> None:
    while True:
        data = frames.frame()
        if frames.ended:
            break
        if data[:1] == _OUTCOME and on_outcome is not None:
            heard = json.loads(data[1:])
            if not isinstance(heard, dict):
                raise CheckpointUntrusted("a page transfer's outcome is not a JSON object")
            on_outcome(heard)
        elif data[:1] == _DATA:
            local.sendall(data[1:])
        elif data[:1] != _KEEPALIVE:
            raise CheckpointUntrusted("a page transfer frame of no known kind")
    local.shutdown(socket.SHUT_WR)


def _no_delay(sock: socket.socket) -> None:
    """Each request of a lazy-pages daemon and each answer goes at once (a frame's length and
    its bytes are two writes): Nagle's wait for an ACK would hold them back."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass  # not TCP (a test's socketpair)


def relay(local: socket.socket, remote: socket.socket, reader: FrameReader,
          writer: FrameWriter, what: str, *,
          outcome: Callable[[], dict[str, Any]] | None = None,
          on_outcome: Callable[[dict[str, Any]], None] | None = None) -> bool:
    """Between a CRIU's connected socket (`local`) and the other helper, both ways, until both
    ended. Any failure closes both sides: each CRIU then sees its transfer end (the source
    resumes, the lazy-pages daemon ends and its guard kills what it fed). The restoring side
    sends `outcome()` (how its daemon ended) once its CRIU has closed; the serving side hears
    it through `on_outcome`. Whether it all went."""
    failed: list[BaseException] = []

    def cut() -> None:
        for sock in (local, remote):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(pump: Callable[..., None], *args: Any) -> None:
        try:
            pump(*args)
        except Exception as exc:  # noqa: BLE001 - any failure ends the transfer
            failed.append(exc)
            cut()

    inbound = threading.Thread(target=run, args=(_pump_in, reader, local, on_outcome),
                               daemon=True, name="pages-in")
    inbound.start()
    run(_pump_out, local, writer, outcome)
    inbound.join()
    cut()
    local.close()
    remote.close()
    if failed:
        reason = failed[0].message if isinstance(failed[0], HelperError) else str(failed[0])
        log.warning("%s broke: %s", what, reason)
    return not failed


def serve_pages(helper: Helper, hello: dict[str, Any], conn: socket.socket, raw: IO[bytes],
                authenticated: Callable[[], None]) -> None:
    """The memory this helper serves for a checkpoint (ops/lazy.py), relayed to the helper
    that restores it: once, to the first connection that proves it holds the cluster's key."""
    config = helper.config
    checkpoint_id = _check_hello(config, hello, time.time())
    key = cluster_key(config, CheckpointUntrusted, "it serves no memory to other nodes",
                      checkpoint_id=checkpoint_id)
    up, down = pages_keys(key.secret, hello)
    what = f"the page transfer of checkpoint {checkpoint_id}"
    reader = FrameReader(raw, up, what)
    if reader.frame() != OP_PAGES.encode():
        raise InvalidRequest(f"{what} does not begin as one")
    authenticated()
    served = lazy.SERVING.claim(checkpoint_id)
    if served is None:
        raise InvalidRequest(f"node {config.node_name} serves no memory of checkpoint "
                             f"{checkpoint_id}: its migration has ended, or another restore "
                             "has it", checkpoint_id=checkpoint_id)
    conn.sendall(json.dumps({"ok": True}).encode() + b"\n")
    conn.settimeout(PAGES_IDLE_S)
    _no_delay(conn)
    log.info("serving the memory of a checkpoint", extra={
        "checkpoint_id": checkpoint_id, "to_node": str(hello.get("from"))[:253]})
    relayed = relay(served.relay_end, conn, reader,
                    FrameWriter(cast(IO[bytes], _SocketOut(conn)), down), what,
                    on_outcome=served.heard)
    served.relayed(relayed)


class PageStream:
    """The memory of a checkpoint arriving: `daemon_end` is for `criu lazy-pages --ps-socket`;
    report() how the daemon ended, which the serving helper waits for before it lets its
    source go (the relay waits for it once the daemon closed its end)."""

    #: how long the relay waits, once the daemon closed its end, to hear how it ended (less
    #: than PAGES_IDLE_S: nothing is sent meanwhile)
    REPORT_WAIT_S = 20.0

    def __init__(self, daemon_end: socket.socket) -> None:
        self.daemon_end = daemon_end
        self._outcome: dict[str, Any] | None = None
        self._reported = threading.Event()

    def report(self, ok: bool, reason: str = "") -> None:
        if not self._reported.is_set():
            self._outcome = {"ok": ok, "reason": reason[:500]}
            self._reported.set()

    def outcome(self) -> dict[str, Any]:
        if not self._reported.wait(self.REPORT_WAIT_S):
            return {"ok": False, "reason": "the restoring helper never said how its lazy-pages "
                                           "daemon ended"}
        return dict(self._outcome or {})

    def close(self) -> None:
        self.daemon_end.close()


def open_pages(config: HelperConfig, address: str, port: int, source_node: str,
               checkpoint_id: str, *,
               connect: Callable[..., socket.socket] = socket.create_connection
               ) -> PageStream:
    """The memory of checkpoint `checkpoint_id`, served by the helper of `source_node` at
    address:port: a PageStream (a thread relays the other end of its socket). PeerUnreachable,
    or the serving helper's refusal."""
    key = cluster_key(config, InvalidRequest, "it cannot take memory from other nodes")
    hello = {**_hello(config, checkpoint_id, source_node, PAGES_VERSION), "op": OP_PAGES}
    up, down = pages_keys(key.secret, hello)
    where = f"the helper of node {source_node} ({address}:{port})"
    try:
        sock = connect((address, port), timeout=PAGES_IDLE_S)
    except OSError as exc:
        raise PeerUnreachable(f"cannot reach {where}: {exc}") from None
    raw = sock.makefile("rb")
    try:
        writer = FrameWriter(cast(IO[bytes], _SocketOut(sock)), up)
        try:
            sock.sendall(signing.canonical(hello) + b"\n")
            writer.message(OP_PAGES.encode())
        except OSError:
            pass  # refused early: its answer says why
        answer = _answer(raw, where)
        if answer is None:
            raise PeerUnreachable(f"{where} closed the connection without an answer")
        _raise_refusal(answer, where, checkpoint_id)
    except BaseException:
        raw.close()
        sock.close()
        raise
    _no_delay(sock)
    try:
        ours, theirs = socket.socketpair()
    except OSError as exc:
        sock.close()
        raise PeerUnreachable(f"the memory of checkpoint {checkpoint_id}: {exc}") from None
    stream = PageStream(theirs)
    what = f"the page transfer of checkpoint {checkpoint_id} from node {source_node}"
    threading.Thread(target=relay, args=(ours, sock, FrameReader(raw, down, what), writer, what),
                     kwargs={"outcome": stream.outcome}, daemon=True,
                     name="pages-relay").start()
    return stream


# -- where the other helpers listen ----------------------------------------------------------
def peer_of(helper: Helper, node: str) -> tuple[str, int] | None:
    """The address of the helper of `node` (a pod of this helper's DaemonSet there, which runs
    in the node's network) and the port it receives on (this helper's: one DaemonSet); None
    when this helper does not take part in transfers or there is no such pod running."""
    config, kube = helper.config, helper.kube
    namespace, name = os.environ.get("POD_NAMESPACE"), os.environ.get("POD_NAME")
    if not config.peer_port or kube is None or not namespace or not name:
        return None
    try:
        own = kube.get_pod(namespace, name) or {}
        labels = (own.get("metadata") or {}).get("labels") or {}
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items())
                            if k not in ("controller-revision-hash", "pod-template-generation"))
        pods = json.loads(kube.core.list_namespaced_pod(
            namespace, label_selector=selector, field_selector=f"spec.nodeName={node}",
            _preload_content=False, _request_timeout=10).data).get("items") or []
    except Exception as exc:  # noqa: BLE001 - the API: no direct transfer then
        log.warning("cannot find the helper of node %s: %s", node, exc)
        return None
    for pod in pods:
        st = pod.get("status") or {}
        if st.get("phase") == "Running" and st.get("podIP"):
            return str(st["podIP"]), config.peer_port
    return None
