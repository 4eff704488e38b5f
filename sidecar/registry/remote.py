"""Checkpoints in an OCI registry: push a checkpoint directory as an image, pull it back anywhere.

The image is what CRI-O restores natively: one layer holding the checkpoint directory (the
archive layout of config.dump, spec.dump, checkpoint/, rootfs-diff.tar ...), and annotations
naming the container (`io.kubernetes.cri-o.annotations.checkpoint.name` and
`org.criu.checkpoint.container.name`) and its rootfs image. The tag is the checkpoint id.

Both directions stream: a thread writes the tar through the compressor into a bounded queue
that one PATCH upload reads (no second copy on disk or in memory); a pull decompresses and
unpacks while it downloads, then checks the blob digest and every file's sha256 from our
manifest before the checkpoint becomes visible under its final name.

Authenticity (docs/security.md): the image config carries, under CONFIG_KEY, the checkpoint's
signed manifest and a second signature binding the checkpoint id and that manifest to the one
layer (media type, digest, size). A pull reads the small manifest and config first and checks
both signatures with the helper's key before a byte of the layer is fetched; the layer is then
read at most to its signed size, unpacked at most to the size its signed manifest adds up to
(every member must be a file the manifest lists, with its size), and verified file by file.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import posixpath
import queue
import shutil
import tarfile
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

from kubectl_cedana.contract import COMPRESSIONS, DEFAULT_COMPRESSION
from sidecar.config import DEFAULT_MAX_CHECKPOINT_BYTES
from sidecar.errors import (
    CheckpointCorrupted,
    CheckpointNotFound,
    CheckpointUntrusted,
    ContentTooLarge,
    HelperError,
    ImageNotFound,
    InvalidRequest,
)
from sidecar.registry.client import MAX_CONFIG_BYTES, ImageReference, RegistryClient
from sidecar.registry.credentials import node_access
from sidecar.storage import store
from sidecar.storage.paths import relative_name
from sidecar.storage.signing import IMAGE_PURPOSE, SigningKey, canonical
from sidecar.storage.tar import BoundedTarInfo, CappedReader, Extractor, add

log = logging.getLogger(__name__)

LAYER_TYPES = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
    # not an OCI media type: CRI-O cannot unpack it, ours can
    "lz4": "application/vnd.cedana.checkpoint.layer.v1.tar+lz4",
}
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
CRIO_NAME = "io.kubernetes.cri-o.annotations.checkpoint.name"
CRIU_NAME = "org.criu.checkpoint.container.name"
CRIO_ROOTFS_NAME = "io.kubernetes.cri-o.annotations.checkpoint.rootfsImageName"
CRIO_ROOTFS_REF = "io.kubernetes.cri-o.annotations.checkpoint.rootfsImageRef"
ANN = "io.cedana.checkpoint."
CHUNK = 1 << 20
QUEUE_CHUNKS = 8  # at most this many compressed chunks wait for the network
#: where the image config carries the signed manifest and the layer's signature
CONFIG_KEY = "io.cedana.checkpoint"
#: tar's share of an unpacked checkpoint beyond its files: per member (header, a pax header,
#: padding) and for the archive (its manifest.json and end blocks)
TAR_MEMBER_OVERHEAD = 8 << 10
TAR_ARCHIVE_OVERHEAD = 8 << 20
#: called with the verified manifest of a checkpoint before any of its layer is fetched
Authorize = Callable[[store.CheckpointManifest], None]


@dataclass(frozen=True)
class RemoteCheckpoint:
    reference: str  # repo:tag
    digest: str  # manifest digest
    layer_digest: str
    size_bytes: int  # compressed bytes moved
    uncompressed_bytes: int
    compression: str
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "digest": self.digest,
                "layer_digest": self.layer_digest, "size_bytes": self.size_bytes,
                "uncompressed_bytes": self.uncompressed_bytes, "compression": self.compression,
                "duration_ms": self.duration_ms}


def check_compression(name: str | None) -> str:
    value = (name or DEFAULT_COMPRESSION).lower()
    if value not in COMPRESSIONS:
        raise InvalidRequest(f"compression {name!r} is not one of {', '.join(COMPRESSIONS)}",
                             fields=["compression"])
    return value


# -- compression, streamed ---------------------------------------------------------------------
class _Compressor:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._obj: Any = None
        if kind == "gzip":
            self._obj = zlib.compressobj(6, zlib.DEFLATED, 31)
        elif kind == "zstd":
            import zstandard
            self._obj = zstandard.ZstdCompressor(level=3).compressobj()
        elif kind == "lz4":
            import lz4.frame
            self._obj = lz4.frame.LZ4FrameCompressor()
            self._header: bytes | None = self._obj.begin()

    def compress(self, data: bytes) -> bytes:
        if self.kind == "none":
            return data
        out = self._obj.compress(data)
        if self.kind == "lz4" and self._header is not None:
            out, self._header = self._header + out, None
        return bytes(out)

    def flush(self) -> bytes:
        if self.kind == "none":
            return b""
        if self.kind == "lz4":
            return bytes((self._header or b"") + self._obj.flush())
        return bytes(self._obj.flush())


def decompressed(kind: str, raw: IO[bytes]) -> IO[bytes]:
    """A file object reading `raw` decompressed; every read returns at most what was asked
    (the decompressors are bounded in their output, not only in their input)."""
    if kind == "none":
        return raw
    if kind == "gzip":
        return cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    if kind == "zstd":
        import zstandard
        return cast(IO[bytes], zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=CHUNK, read_across_frames=True, closefd=False))
    if kind == "lz4":
        import lz4.frame
        return cast(IO[bytes], lz4.frame.LZ4FrameFile(raw, mode="rb"))
    raise InvalidRequest(f"unknown compression {kind!r}")


class _Cancelled(Exception):
    """The upload gave up: the producer stops writing."""


class _QueueWriter:
    """A file object for tarfile: compresses, then hands fixed-size chunks to a queue; once
    cancel() is called (the upload failed) its next write ends the producer."""

    def __init__(self, chunks: queue.Queue[bytes | None | BaseException], kind: str) -> None:
        self.chunks = chunks
        self.compressor = _Compressor(kind)
        self.buffer = bytearray()
        self.uncompressed = 0
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()
        while True:  # a producer blocked on a full queue wakes up
            try:
                self.chunks.get_nowait()
            except queue.Empty:
                return

    def put(self, item: bytes | None | BaseException) -> None:
        while not self.cancelled.is_set():
            try:
                self.chunks.put(item, timeout=0.1)
                return
            except queue.Full:
                continue
        raise _Cancelled

    def write(self, data: bytes) -> int:
        self.uncompressed += len(data)
        self.buffer += self.compressor.compress(bytes(data))
        while len(self.buffer) >= CHUNK:
            self.put(bytes(self.buffer[:CHUNK]))
            del self.buffer[:CHUNK]
        return len(data)

    def close_stream(self) -> None:
        self.buffer += self.compressor.flush()
        if self.buffer:
            self.put(bytes(self.buffer))
        self.put(None)


#: the pieces files are copied to the archive in (tarfile's default: 16 KiB), and those an
#: archive is read in (tarfile's default: 10 KiB)
ARCHIVE_COPY_BYTES = 1 << 20
ARCHIVE_READ_BYTES = 256 << 10


class _Counted:
    """`out` with the position tarfile's writer asks for (it never seeks)."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out, self.count = out, 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.out.write(data)
        self.count += len(data)
        return len(data)

    def tell(self) -> int:
        return self.count


def write_archive(out: IO[bytes], directory: Path) -> None:
    """The archive of a checkpoint directory (what its image's one layer holds), streamed to
    `out`: the directory, every file its manifest lists, the manifest last. The same bytes as
    tarfile's stream mode ("w|"), which copies files 16 KiB at a time and hands them on in
    10 KiB pieces: writing each file in 1 MiB pieces halves the sender's CPU for a
    checkpoint's gigabytes."""
    with tarfile.TarFile(fileobj=cast(IO[bytes], _Counted(out)), mode="w",
                         format=tarfile.PAX_FORMAT, copybufsize=ARCHIVE_COPY_BYTES) as tar:
        for rel in ["", *store.list_files(directory), store.MANIFEST]:
            add(tar, directory / rel if rel else directory, rel or ".", root_owner=True)


def _tar_producer(directory: Path, writer: _QueueWriter) -> None:
    try:
        write_archive(cast(IO[bytes], writer), directory)
        writer.close_stream()
    except _Cancelled:
        return
    except BaseException as exc:  # noqa: BLE001 - handed to the consumer
        try:
            writer.put(exc)
        except _Cancelled:
            return


def _stream(directory: Path, kind: str) -> tuple[Iterator[bytes], _QueueWriter,
                                                  threading.Thread]:
    chunks: queue.Queue[bytes | None | BaseException] = queue.Queue(maxsize=QUEUE_CHUNKS)
    writer = _QueueWriter(chunks, kind)
    thread = threading.Thread(target=_tar_producer, args=(directory, writer),
                              name="checkpoint-tar", daemon=True)

    def generate() -> Iterator[bytes]:
        while True:
            try:
                item = chunks.get(timeout=1.0)
            except queue.Empty:
                if thread.is_alive():
                    continue
                raise RuntimeError("the checkpoint's tar stream ended without its end") from None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    return generate(), writer, thread


# -- the remote repository -------------------------------------------------------------------
class RemoteStore:
    """The registry repository configured for this node's checkpoints."""

    def __init__(self, repository: str, settings: Any) -> None:
        if "@" in repository or ":" in repository.rsplit("/", 1)[-1]:
            raise InvalidRequest(f"the checkpoint repository {repository!r} must not carry a "
                                 "tag or digest")
        ref = ImageReference.parse(repository)
        self.host = ref.host
        self.repository = ref.repository
        self.settings = settings
        self.client = RegistryClient(node_access(ref.host, settings))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RemoteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ref(self, checkpoint_id: str) -> ImageReference:
        return ImageReference(self.host, self.repository, checkpoint_id)

    def name(self, checkpoint_id: str) -> str:
        return str(self.ref(checkpoint_id))

    # push
    def push(self, directory: Path, manifest: store.CheckpointManifest,
             compression: str, key: SigningKey) -> RemoteCheckpoint:
        """Push a checkpoint whose manifest `key` signed; the image is signed with it too."""
        started = datetime.now(UTC)
        manifest.check_signature(key, str(directory))
        self.client.authenticate(self.repository, "pull,push")
        body, writer, thread = _stream(directory, compression)
        thread.start()
        try:
            digest, size = self.client.upload_stream(self.repository, body)
        except BaseException:
            writer.cancel()  # the producer stops at its next chunk
            raise
        finally:
            thread.join()
        source = manifest.source
        container = str(source.get("container", ""))
        layer = {"mediaType": LAYER_TYPES[compression], "digest": digest, "size": size}
        config = {
            "created": manifest.created, "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": []},
            "config": {"Labels": {CRIO_NAME: container}},
            CONFIG_KEY: {"manifest": manifest.to_dict(), "layer": layer,
                         "signature": key.sign(IMAGE_PURPOSE, image_statement(manifest,
                                                                                layer))},
        }
        config_blob = json.dumps(config, separators=(",", ":"), sort_keys=True).encode()
        config_digest = "sha256:" + hashlib.sha256(config_blob).hexdigest()
        self.client.upload_blob(self.repository, config_digest, len(config_blob), config_blob)
        annotations = {
            CRIO_NAME: container, CRIU_NAME: container,
            CRIO_ROOTFS_NAME: str(source.get("image", "")),
            CRIO_ROOTFS_REF: str(source.get("image_ref", source.get("image", ""))),
            "org.opencontainers.image.created": manifest.created,
            ANN + "id": manifest.checkpoint_id,
            ANN + "namespace": str(source.get("namespace", "")),
            ANN + "pod": str(source.get("pod", "")),
            ANN + "container": container,
            ANN + "node": str(source.get("node", "")),
            ANN + "compression": compression,
            ANN + "uncompressed-size": str(writer.uncompressed),
            ANN + "manifest-sha256": _manifest_digest(directory),
        }
        image_manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest,
                       "size": len(config_blob)},
            "layers": [{**layer,
                        "annotations": {"org.opencontainers.image.title": "checkpoint.tar"}}],
            "annotations": annotations,
        }
        blob = json.dumps(image_manifest, separators=(",", ":"), sort_keys=True).encode()
        manifest_digest = self.client.put_manifest(self.ref(manifest.checkpoint_id), blob,
                                                   OCI_MANIFEST)
        elapsed = int((datetime.now(UTC) - started).total_seconds() * 1000)
        log.info("pushed checkpoint %s to %s (%d bytes, %s)", manifest.checkpoint_id,
                 self.name(manifest.checkpoint_id), size, compression)
        return RemoteCheckpoint(self.name(manifest.checkpoint_id), manifest_digest, digest, size,
                                writer.uncompressed, compression, elapsed)

    # read
    def manifest(self, checkpoint_id: str) -> tuple[dict[str, Any], str]:
        try:
            body, _, digest = self.client.get_manifest(self.ref(checkpoint_id),
                                                       accept=(OCI_MANIFEST,))
        except ImageNotFound as exc:
            raise CheckpointNotFound(
                f"no checkpoint {checkpoint_id} on this node nor in {self.host}/"
                f"{self.repository}", checkpoint_id=checkpoint_id) from exc
        return dict(json.loads(body)), digest

    def signed(self, checkpoint_id: str, key: SigningKey) -> SignedImage:
        """The checkpoint image `checkpoint_id`, its manifest and layer checked against their
        signatures with `key` (CheckpointUntrusted), before any of its layer is fetched."""
        name = self.name(checkpoint_id)
        image, digest = self.manifest(checkpoint_id)
        layers = image.get("layers") or []
        config_ref = image.get("config") or {}
        annotations = image.get("annotations") or {}
        if annotations.get(ANN + "id") != checkpoint_id or len(layers) != 1 or \
                not isinstance(layers[0], dict) or not isinstance(config_ref, dict):
            raise CheckpointCorrupted(f"{name} is not a checkpoint image written by this "
                                      "helper", checkpoint_id=checkpoint_id)
        config_blob = self.client.get_blob(self.repository, str(config_ref.get("digest")),
                                           max_bytes=MAX_CONFIG_BYTES)
        try:
            block = json.loads(config_blob).get(CONFIG_KEY)
        except (ValueError, AttributeError):
            block = None
        if not isinstance(block, dict) or not isinstance(block.get("manifest"), dict):
            raise CheckpointUntrusted(
                f"checkpoint image {name} is not signed by a helper of this cluster: it carries "
                "no signed manifest (pushed by a helper older than checkpoint signing, or by "
                "someone else)", checkpoint_id=checkpoint_id)
        try:
            manifest = store.CheckpointManifest.from_dict(block["manifest"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointUntrusted(f"checkpoint image {name} carries a manifest this helper "
                                      "cannot read", checkpoint_id=checkpoint_id) from exc
        manifest.check_signature(key, name)
        signed_layer = block.get("layer")
        problem = key.problem(IMAGE_PURPOSE, image_statement(manifest, signed_layer),
                              block.get("signature"))
        if problem:
            raise CheckpointUntrusted(
                f"checkpoint image {name}: the binding of its layer to its manifest {problem}",
                checkpoint_id=checkpoint_id)
        layer = {k: layers[0].get(k) for k in ("mediaType", "digest", "size")}
        if layer != signed_layer:
            raise CheckpointUntrusted(
                f"checkpoint image {name} names layer {_short(layer.get('digest'))}, not the "
                f"layer {_short((signed_layer or {}).get('digest'))} its signature names: the "
                "image was changed after a helper pushed it", checkpoint_id=checkpoint_id)
        if manifest.checkpoint_id != checkpoint_id:
            raise CheckpointUntrusted(
                f"{name} holds checkpoint {manifest.checkpoint_id}: it is signed for that id, "
                f"not {checkpoint_id}", checkpoint_id=checkpoint_id)
        namespace = str(manifest.source.get("namespace") or "")
        said = annotations.get(ANN + "namespace")
        if said is not None and said != namespace:
            raise CheckpointUntrusted(
                f"checkpoint {checkpoint_id} is signed for namespace {namespace!r}, not "
                f"{str(said)[:63]!r} as its image says", checkpoint_id=checkpoint_id)
        return SignedImage(manifest, dict(signed_layer), image, digest)

    def pull(self, checkpoint_id: str, final_dir: Path, key: SigningKey, *,
             authorize: Authorize | None = None,
             max_bytes: int = DEFAULT_MAX_CHECKPOINT_BYTES
             ) -> tuple[store.CheckpointManifest, dict[str, Any], str]:
        """Check the image's signatures (signed), let `authorize` see the manifest, then
        download, unpack and verify into final_dir (renamed into place only when whole).
        A refusal at any step leaves nothing on disk."""
        signed = self.signed(checkpoint_id, key)
        if authorize is not None:
            authorize(signed.manifest)
        expected = signed.manifest.size_bytes
        if expected > max_bytes:
            raise ContentTooLarge(
                f"checkpoint {checkpoint_id} holds {expected} bytes, more than this helper "
                f"takes from the registry (--max-checkpoint-bytes {max_bytes})",
                limit_bytes=max_bytes, checkpoint_id=checkpoint_id)
        kind = next((k for k, v in LAYER_TYPES.items() if v == signed.layer["mediaType"]), None)
        if kind is None:
            raise CheckpointCorrupted(f"unknown checkpoint layer type "
                                      f"{str(signed.layer['mediaType'])[:100]}")
        temp = final_dir.parent / f"{store.TEMP_PREFIX}pull-{checkpoint_id}"
        shutil.rmtree(temp, ignore_errors=True)
        store.make_private_dirs(temp, final_dir.parent)
        try:
            self._download_unpack(signed, kind, temp)
            store.restrict_permissions(temp)  # before the check, which seals the files as they are
            manifest = store.verify(temp, key)  # every file against our manifest, before use
            if manifest.signed_payload() != signed.manifest.signed_payload():
                raise CheckpointUntrusted(f"the manifest inside {self.name(checkpoint_id)} is "
                                          "not the one its image signature names",
                                          checkpoint_id=checkpoint_id)
            if final_dir.exists():
                shutil.rmtree(final_dir)
            temp.rename(final_dir)
        except BaseException:
            shutil.rmtree(temp, ignore_errors=True)
            raise
        return manifest, signed.image, signed.digest

    def _download_unpack(self, signed: SignedImage, kind: str, dest: Path) -> None:
        digest = str(signed.layer["digest"])
        declared = int(signed.layer["size"])
        response = self.client.open_blob(self.repository, digest, max_bytes=declared)
        raw = _BlobReader(response.iter_content(CHUNK), declared, digest)
        try:
            with response:
                try:
                    stream = decompressed(kind, cast(IO[bytes], raw))
                    unpack_signed_archive(signed.manifest, stream, dest)
                    if stream is not raw:
                        stream.close()
                    raw.drain()  # the rest of the blob still counts for its digest
                except Exception as exc:
                    # a changed blob shows first as whatever its changed bytes break (a tar
                    # header, the compressor's frame, a file's size): when the blob is not the
                    # one the signature names, that is what the user hears
                    if raw.changed():
                        raise raw.mismatch(f"; unpacking it failed first: "
                                           f"{getattr(exc, 'message', exc)}") from exc
                    raise
        except (tarfile.TarError, OSError, ValueError, EOFError, zlib.error) as exc:
            raise CheckpointCorrupted(f"checkpoint blob {digest} cannot be unpacked: {exc}"
                                      ) from exc
        except Exception as exc:
            if type(exc).__module__.startswith(("zstandard", "lz4")):
                raise CheckpointCorrupted(f"checkpoint blob {digest} cannot be decompressed: "
                                          f"{exc}") from exc
            raise
        if raw.digest() != digest:
            raise raw.mismatch()

    def list(self) -> list[dict[str, Any]]:
        """Every checkpoint image in the repository, from its manifest annotations."""
        entries = []
        for tag in self.client.tags(self.repository):
            try:
                image, digest = self.manifest(tag)
            except (CheckpointNotFound, CheckpointCorrupted):
                continue
            entries.append(remote_entry(image, digest, self.name(tag)))
        return entries

    def delete(self, checkpoint_id: str) -> bool:
        try:
            _image, digest = self.manifest(checkpoint_id)
        except CheckpointNotFound:
            return False
        return self.client.delete_manifest(self.repository, digest)


def remote_entry(image: dict[str, Any], digest: str, reference: str) -> dict[str, Any]:
    ann = image.get("annotations") or {}
    layer = (image.get("layers") or [{}])[0]
    return {
        "id": ann.get(ANN + "id", ""), "namespace": ann.get(ANN + "namespace", ""),
        "pod": ann.get(ANN + "pod", ""), "container": ann.get(ANN + "container", ""),
        "node": ann.get(ANN + "node", ""), "created": ann.get("org.opencontainers.image.created",
                                                              ""),
        "size_bytes": int(layer.get("size") or 0),
        "uncompressed_bytes": int(ann.get(ANN + "uncompressed-size") or 0),
        "compression": ann.get(ANN + "compression", ""),
        "remote": {"reference": reference, "digest": digest},
        "where": "remote",
    }


def _manifest_digest(directory: Path) -> str:
    return store.hash_file(directory / store.MANIFEST)[0]


def _short(digest: Any) -> str:
    return str(digest)[:19] + "..." if digest else "(none)"


def image_statement(manifest: store.CheckpointManifest, layer: Any) -> dict[str, Any]:
    """What the image signature covers: this checkpoint, this manifest, this one layer."""
    return {"checkpoint_id": manifest.checkpoint_id,
            "manifest_sha256": hashlib.sha256(canonical(manifest.signed_payload())).hexdigest(),
            "layer": layer}


@dataclass(frozen=True)
class SignedImage:
    """A checkpoint image whose signatures were checked: its manifest and layer are the ones a
    helper holding the key pushed."""

    manifest: store.CheckpointManifest
    layer: dict[str, Any]  # mediaType, digest, size
    image: dict[str, Any]  # the OCI image manifest
    digest: str  # its digest


class _BlobReader:
    """The layer as it downloads: hashed, and cut off past its signed size. Reads return at
    most one chunk of the download (short reads, which every reader above takes)."""

    def __init__(self, chunks: Iterator[bytes], declared: int, digest: str) -> None:
        self.chunks = chunks
        self.declared = declared
        self.name = digest
        self.hasher = hashlib.sha256()
        self.count = 0
        self.chunk = b""
        self.offset = 0
        self.done = False

    def _next_chunk(self) -> None:
        while not self.done and self.offset >= len(self.chunk):
            try:
                chunk = next(self.chunks)
            except StopIteration:
                self.done = True
                return
            self.count += len(chunk)
            if self.count > self.declared:
                raise ContentTooLarge(
                    f"checkpoint blob {self.name} is larger than the {self.declared} bytes its "
                    "signed descriptor declares; the download was cut off",
                    limit_bytes=self.declared)
            self.hasher.update(chunk)
            self.chunk, self.offset = chunk, 0

    def read(self, size: int = -1) -> bytes:
        self._next_chunk()
        end = len(self.chunk) if size < 0 else min(len(self.chunk), self.offset + size)
        out = self.chunk[self.offset:end]
        self.offset = end
        return out

    def readable(self) -> bool:
        return True

    def drain(self) -> None:
        while not self.done:
            self.offset = len(self.chunk)
            self._next_chunk()

    def digest(self) -> str:
        return "sha256:" + self.hasher.hexdigest()

    def changed(self) -> bool:
        """After a failure part-way: read the rest of the blob (at most its signed size) and
        say whether it is not the blob its descriptor names; False when that cannot be told
        (the download itself broke, or ran past its size)."""
        try:
            self.drain()
        except (OSError, HelperError, ValueError):
            return False
        return self.digest() != self.name

    def mismatch(self, more: str = "") -> CheckpointCorrupted:
        return CheckpointCorrupted(f"checkpoint blob {self.name} does not match its digest "
                                   f"(changed in the registry or in transit){more}")


class _SignedMembers:
    """Which members a checkpoint archive may hold: the files its signed manifest lists, each
    with its size, their directories, and manifest.json; each once. Checked before a member
    is written, so nothing the signature does not vouch for reaches the disk."""

    def __init__(self, manifest: store.CheckpointManifest, dest: Path) -> None:
        self.files = manifest.files
        self.checkpoint_id = manifest.checkpoint_id
        self.dest = dest
        self.dirs = {""}
        for rel in self.files:
            parent = posixpath.dirname(rel)
            while parent not in self.dirs:
                self.dirs.add(parent)
                parent = posixpath.dirname(parent)
        self.seen: set[str] = set()
        members = len(self.files) + len(self.dirs) + 1
        self.limit = manifest.size_bytes + members * TAR_MEMBER_OVERHEAD + TAR_ARCHIVE_OVERHEAD

    def check(self, member: tarfile.TarInfo) -> None:
        rel = relative_name(member.name, source="the checkpoint archive",
                            error=CheckpointCorrupted, outside="the checkpoint")
        problem = ""
        if rel in self.seen:
            problem = "holds it twice"
        elif member.isdir():
            problem = "" if rel in self.dirs else "does not list that directory"
        elif not member.isreg():
            problem = "holds something that is not a file or a directory there"
        elif rel == store.MANIFEST:
            problem = "" if member.size <= MAX_CONFIG_BYTES else "has an oversized manifest"
        elif rel not in self.files:
            problem = "does not list that file"
        elif member.size != self.files[rel].get("size"):
            problem = (f"says it has {self.files[rel].get('size')} bytes, the archive "
                       f"{member.size}")
        if problem:
            raise CheckpointUntrusted(
                f"the archive of checkpoint {self.checkpoint_id} has {rel or '.'!r}, and its "
                f"signed manifest {problem}: refused before it was written",
                checkpoint_id=self.checkpoint_id)
        self.seen.add(rel)

    def complete(self) -> None:
        """Every file the manifest lists, and the manifest, were in the archive."""
        missing = sorted(set(self.files) - self.seen) + \
            ([] if store.MANIFEST in self.seen else [store.MANIFEST])
        if missing:
            raise CheckpointCorrupted(
                f"the archive of checkpoint {self.checkpoint_id} lacks {len(missing)} file(s) "
                f"its manifest lists: {', '.join(missing[:5])}", checkpoint_id=self.checkpoint_id)


def unpack_signed_archive(manifest: store.CheckpointManifest, stream: IO[bytes],
                          dest: Path) -> None:
    """Unpack the tar of a checkpoint whose signed manifest is `manifest` from `stream` into
    dest: each member checked against the manifest before it is written (a name it lists, its
    size, once), at most as many bytes of tar as the manifest adds up to, and every file it
    lists there at the end. Their bytes are the caller's to vouch for (a pull verifies each
    file's sha256; a transfer from another helper was sealed with the cluster's key); the
    caller removes dest on any error."""
    members = _SignedMembers(manifest, dest)
    tar_bytes = CappedReader(stream, members.limit, f"checkpoint {manifest.checkpoint_id}")
    # read in larger pieces than tarfile's 10 KiB (a third of the CPU for a 64 MiB archive;
    # 1 MiB pieces cost more again, in tarfile's own joins of what it had left)
    with tarfile.open(fileobj=cast(IO[bytes], tar_bytes), mode="r|", bufsize=ARCHIVE_READ_BYTES,
                      tarinfo=BoundedTarInfo) as tar:
        unpack = checkpoint_extractor(dest)
        for member in tar:
            members.check(member)
            unpack.extract(tar, member)
        unpack.finish()
    members.complete()


def checkpoint_extractor(dest: Path) -> Extractor:
    """Unpacks a checkpoint archive: plain files and directories only, all inside dest."""
    return Extractor(dest, source="the checkpoint archive", error=CheckpointCorrupted,
                     outside="the checkpoint", plain_only=True,
                     modes=(store.DIR_MODE, store.FILE_MODE))
