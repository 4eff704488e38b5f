"""One image layer: a container's overlay upper directory written as a layer blob, a layer blob
applied onto a root filesystem, and the config and manifest that add the layer to an image.

Layers use the OCI changeset format (Docker's is the same, only media types differ): a deleted
path is an empty file `.wh.<name>` next to where it was, and a directory whose lower content is
hidden (overlay "opaque") carries a `<dir>/.wh..wh..opq` entry. Whiteouts act on the layers
below, never on entries of their own layer.
"""
from __future__ import annotations

import copy
import gzip
import hashlib
import json
import os
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

from sidecar.config import DEFAULT_MAX_LAYER_BYTES
from sidecar.errors import DumpFailed, ImageUnsupported, RestoreFailed
from sidecar.storage.tar import (
    BoundedTarInfo,
    CappedReader,
    Extractor,
    add,
    is_opaque,
    is_whiteout,
    marker,
    walk,
)

OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"

_GZIP_TYPES = frozenset({
    OCI_LAYER_GZIP, DOCKER_LAYER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
})
_TAR_TYPES = frozenset({
    OCI_LAYER_TAR, DOCKER_LAYER_TAR,
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
})
_SOURCE = "the image layer"


@dataclass(frozen=True)
class LayerBlob:
    path: Path        # the blob file as it goes to a registry
    digest: str       # "sha256:<hex>" of the blob file's bytes
    diff_id: str      # "sha256:<hex>" of the uncompressed tar
    size: int         # bytes of the blob file
    media_type: str

    def descriptor(self) -> dict[str, Any]:
        """The layer's entry in a manifest's `layers`."""
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass
class AppliedLayer:
    deleted: list[str] = field(default_factory=list)  # "/rel" paths a whiteout removed
    opaque: list[str] = field(default_factory=list)   # "/rel" directories emptied as opaque
    entries: int = 0                                  # members extracted


def digest_of(data: bytes) -> str:
    """The OCI digest of `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_media_type_for(manifest_media_type: str) -> str:
    """The gzip layer media type of the manifest's family (Docker schema2 or OCI)."""
    return DOCKER_LAYER_GZIP if manifest_media_type == DOCKER_MANIFEST else OCI_LAYER_GZIP


# --- writing -------------------------------------------------------------------------------


class _HashingWriter:
    """A write-only file that hashes and counts the bytes passing through to `out`."""

    def __init__(self, out: BinaryIO | gzip.GzipFile) -> None:
        self._out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        self._out.write(data)
        return len(data)

    def flush(self) -> None:
        self._out.flush()

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()


def _add(tar: tarfile.TarFile, upper: Path, rel: str, st: os.stat_result) -> None:
    if is_whiteout(st):
        parent, _, name = rel.rpartition("/")
        tar.addfile(marker(_join(parent, WHITEOUT_PREFIX + name), st.st_mtime))
        return
    info = add(tar, upper / rel, rel)
    if info is not None and info.isdir() and is_opaque(upper / rel):
        tar.addfile(marker(f"{rel}/{OPAQUE_MARKER}", st.st_mtime))


def _write_tar(upper: Path, out: _HashingWriter) -> None:
    with tarfile.open(fileobj=cast(IO[bytes], out), mode="w|",
                      format=tarfile.PAX_FORMAT) as tar:
        for rel, st in walk(upper):
            _add(tar, upper, rel, st)


def write_layer(upper: Path, out_path: Path, *, media_type: str = OCI_LAYER_GZIP) -> LayerBlob:
    """Write overlay upper directory `upper` as a layer blob at out_path (mode 0600).

    Deterministic for the same tree: sorted entries, gzip header without name or time. Both
    digests are computed while writing."""
    if media_type not in _GZIP_TYPES | _TAR_TYPES:
        raise ValueError(f"cannot write a layer of media type {media_type!r}")
    try:
        with open(out_path, "wb", opener=lambda p, f: os.open(p, f, 0o600)) as raw:
            os.fchmod(raw.fileno(), 0o600)
            blob = _HashingWriter(raw)
            if media_type in _GZIP_TYPES:
                with gzip.GzipFile(filename="", mode="wb", fileobj=blob,
                                   mtime=0, compresslevel=6) as gz:
                    tar_out = _HashingWriter(gz)
                    _write_tar(upper, tar_out)
            else:
                tar_out = blob
                _write_tar(upper, tar_out)
    except OSError as exc:
        out_path.unlink(missing_ok=True)
        raise DumpFailed(f"cannot write the container's changed files in {upper} "
                         f"as an image layer: {exc}") from exc
    return LayerBlob(path=out_path, digest=blob.digest(), diff_id=tar_out.digest(),
                     size=blob.size, media_type=media_type)


# --- applying ------------------------------------------------------------------------------


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _whiteout(rel: str) -> tuple[str, str] | None:
    """("opaque", dir) or ("delete", path) for a whiteout member, ("meta", rel) for other
    `.wh..wh.` names (aufs bookkeeping, ignored), None for an ordinary member."""
    parent, _, name = rel.rpartition("/")
    if name == OPAQUE_MARKER:
        return "opaque", parent
    if name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
        return "meta", rel
    if name.startswith(WHITEOUT_PREFIX):
        target = name[len(WHITEOUT_PREFIX):]
        if target in ("", ".", ".."):
            raise RestoreFailed(f"refusing whiteout {rel!r} from {_SOURCE}")
        return "delete", _join(parent, target)
    return None


def _apply_whiteout(kind: str, rel: str, layer: Extractor, applied: AppliedLayer) -> None:
    if kind == "delete":
        if layer.delete(rel):
            applied.deleted.append("/" + rel)
    elif kind == "opaque" and layer.empty(rel):  # a symlink there is replaced later
        applied.opaque.append("/" + rel)


@contextmanager
def _uncompressed(blob: Path, media_type: str, max_bytes: int) -> Iterator[CappedReader]:
    """The layer's tar stream, at most `max_bytes` of it (ContentTooLarge beyond)."""
    if media_type not in _GZIP_TYPES | _TAR_TYPES:
        raise RestoreFailed(f"unsupported layer media type {media_type!r}")
    with open(blob, "rb") as raw:
        stream: IO[bytes] = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb")) \
            if media_type in _GZIP_TYPES else raw
        with stream:
            yield CappedReader(stream, max_bytes, f"image layer {blob.name}")


def uncompressed_digest(blob: Path, media_type: str,
                        max_bytes: int = DEFAULT_MAX_LAYER_BYTES) -> str | None:
    """The diff_id (sha256 of the uncompressed tar) of a layer blob, reading at most
    `max_bytes` of it; None for a compression this helper cannot read."""
    if media_type not in _GZIP_TYPES | _TAR_TYPES:
        return None
    hasher = hashlib.sha256()
    try:
        with _uncompressed(blob, media_type, max_bytes) as tar_bytes:
            for chunk in iter(lambda: tar_bytes.read(1 << 20), b""):
                hasher.update(chunk)
    except (OSError, EOFError, zlib.error) as exc:
        raise RestoreFailed(f"cannot read image layer {blob.name}: {exc}") from exc
    return "sha256:" + hasher.hexdigest()


@contextmanager
def _members(blob: Path, media_type: str, max_bytes: int) -> Iterator[tarfile.TarFile]:
    with _uncompressed(blob, media_type, max_bytes) as tar_bytes, \
            tarfile.open(fileobj=cast(IO[bytes], tar_bytes), mode="r|", errorlevel=2,
                         tarinfo=BoundedTarInfo) as tar:
        yield tar


def apply_layer(blob: Path, media_type: str, rootfs: Path,
                max_bytes: int = DEFAULT_MAX_LAYER_BYTES) -> AppliedLayer:
    """Apply layer `blob` onto `rootfs`: its whiteouts first, then its other entries.

    Every path is confined to rootfs: absolute names and `..` are refused with RestoreFailed,
    and every write, change and deletion is made in a directory reached beneath rootfs
    (storage/beneath.py), so a symlink leading out, there before or swapped in meanwhile, is
    refused too (RestoreFailed) and never followed. Setuid and setgid bits are dropped; a
    device node is refused (ContentRefused). The layer is read twice as a stream, each time at
    most `max_bytes` of tar (ContentTooLarge beyond): the first pass checks every name, kind
    and the size before anything is touched."""
    applied = AppliedLayer()
    try:
        with Extractor(rootfs, source=_SOURCE, error=RestoreFailed) as layer:
            with _members(blob, media_type, max_bytes) as tar:
                names = [layer.check(m) for m in tar]
            for rel in names:
                whiteout = _whiteout(rel)
                if whiteout:
                    _apply_whiteout(*whiteout, layer, applied)
            with _members(blob, media_type, max_bytes) as tar:
                for index, info in enumerate(tar):
                    rel = layer.check(info)
                    if index >= len(names) or rel != names[index]:
                        raise RestoreFailed(f"image layer {blob.name} changed while it was "
                                            "applied")
                    if not _whiteout(rel) and layer.extract(tar, info):
                        applied.entries += 1
                layer.finish()
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise RestoreFailed(f"cannot apply image layer {blob.name} to {rootfs}: {exc}") from exc
    return applied


# --- config and manifest -------------------------------------------------------------------


def config_with_layer(base_config: dict[str, Any], diff_id: str, *, created: str,
                      created_by: str, comment: str = "") -> dict[str, Any]:
    """base_config with the layer `diff_id` on top.

    A history entry is appended only when the base has a history list: history is optional,
    and inventing entries for base layers would only restate the diff_ids."""
    config = copy.deepcopy(base_config)
    rootfs = config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    if not isinstance(rootfs, dict) or not isinstance(rootfs.setdefault("diff_ids", []), list):
        raise ImageUnsupported("the image config's rootfs is not a list of layers")
    rootfs.setdefault("type", "layers")
    rootfs["diff_ids"].append(diff_id)
    if isinstance(config.get("history"), list):
        config["history"].append(
            {"created": created, "created_by": created_by, "comment": comment})
    config["created"] = created
    return config


def _check_manifest(manifest: dict[str, Any]) -> None:
    media_type = manifest.get("mediaType")
    if media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST) or "manifests" in manifest:
        raise ImageUnsupported("the image reference names an index (a manifest list), not one "
                               "platform's image manifest", media_type=media_type)
    if (manifest.get("schemaVersion") != 2 or not isinstance(manifest.get("config"), dict)
            or not isinstance(manifest.get("layers"), list)):
        raise ImageUnsupported("the image manifest is neither an OCI image manifest nor a "
                               "Docker schema 2 manifest", media_type=media_type)


def manifest_with_layer(base_manifest: dict[str, Any], config_blob: bytes,
                        layer: LayerBlob) -> tuple[dict[str, Any], bytes]:
    """base_manifest pointing at config_blob and with `layer` appended; also the exact bytes to
    push (the manifest's digest is theirs)."""
    _check_manifest(base_manifest)
    manifest = copy.deepcopy(base_manifest)
    default_config = (DOCKER_CONFIG if manifest.get("mediaType") == DOCKER_MANIFEST
                      else OCI_CONFIG)
    manifest["config"] = {
        "mediaType": base_manifest["config"].get("mediaType", default_config),
        "digest": digest_of(config_blob),
        "size": len(config_blob),
    }
    manifest["layers"].append(layer.descriptor())
    return manifest, json.dumps(manifest, separators=(",", ":")).encode()
