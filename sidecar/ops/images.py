"""Where the base images of rootfs commits and restores come from: containerd's store on this
node or a registry, resolved to one image manifest for this node's platform."""
from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from sidecar.config import HelperConfig
from sidecar.errors import ImageNotFound
from sidecar.node.containerd import ContainerdImages, node_platform, socket_path
from sidecar.registry.client import MAX_CONFIG_BYTES, ImageReference, RegistryClient
from sidecar.registry.credentials import node_access
from sidecar.storage.oci_layer import DOCKER_MANIFEST_LIST, OCI_INDEX

INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
BlobSource = Callable[[str], AbstractContextManager[IO[bytes]]]


@dataclass
class BaseImage:
    """An image as a manifest and config, with a way to read its blobs."""

    name: str
    manifest: dict[str, Any]
    media_type: str
    config: dict[str, Any]
    open_blob: BlobSource

    @property
    def diff_ids(self) -> list[str]:
        return list((self.config.get("rootfs") or {}).get("diff_ids") or [])


def pick_platform(index: dict[str, Any], name: str) -> dict[str, Any]:
    """The entry of an image index (manifest list) for this node's platform."""
    want_os, want_arch = node_platform()
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") or {}
        if plat.get("os") == want_os and plat.get("architecture") == want_arch:
            return dict(entry)
    raise ImageNotFound(f"image {name} has no manifest for {want_os}/{want_arch}", image=name)


def checked_copies(work: Path, fetch: Callable[[str, Path], object]) -> BlobSource:
    """Blobs read from a copy in `work` that `fetch` checked against its digest: a blob that
    is missing fails before anything is uploaded or applied."""
    @contextmanager
    def open_blob(digest: str) -> Iterator[IO[bytes]]:
        path = work / f"blob-{digest.split(':')[-1]}"
        fetch(digest, path)
        try:
            with open(path, "rb") as f:
                yield f
        finally:
            path.unlink(missing_ok=True)
    return open_blob


# -- containerd ----------------------------------------------------------------------------------
def _containerd_manifest(images: ContainerdImages, name: str, media_type: str,
                         digest: str) -> tuple[dict[str, Any], str, str]:
    """(manifest, media type, digest) of what an image points at, for this platform."""
    body = json.loads(images.read_blob(digest))
    if media_type in INDEX_TYPES:
        entry = pick_platform(body, name)
        digest, media_type = str(entry["digest"]), str(entry.get("mediaType", ""))
        body = json.loads(images.read_blob(digest))
    return body, str(body.get("mediaType") or media_type), digest


def _complete(manifest: dict[str, Any], present: set[str]) -> bool:
    return all(layer.get("digest") in present for layer in manifest.get("layers") or [])


def containerd_image(config: HelperConfig, address: str, name: str, work: Path) -> BaseImage:
    """The image `name` as containerd at `address` holds it.

    CRI names a container's image by any one of the references that share its image ID (its
    config), and containerd may lack the layer blobs of that one (discarded after unpacking);
    then another image of the same config whose blobs are all present is used."""
    images = ContainerdImages(config.ctr_path, socket_path(address))
    found = images.targets(name)
    if not found:
        raise ImageNotFound(f"containerd at {address} has no image {name}", image=name)
    manifest, media_type, digest = _containerd_manifest(images, name, found[0].media_type,
                                                        found[0].digest)
    config_digest = str(manifest["config"]["digest"])
    present = images.digests()
    if not _complete(manifest, present):
        seen = {found[0].digest}
        for other in sorted(images.targets(), key=lambda t: t.name):
            if other.digest in seen:
                continue
            seen.add(other.digest)
            try:
                candidate = _containerd_manifest(images, other.name, other.media_type,
                                                 other.digest)
            except ImageNotFound:
                continue  # not for this platform, or not all there
            if candidate[0].get("config", {}).get("digest") == config_digest and \
                    _complete(candidate[0], present):
                manifest, media_type, digest = candidate
                break
        else:
            raise ImageNotFound(
                f"containerd at {address} no longer holds the layer blobs of image {name} "
                f"(image ID {config_digest[:19]}), e.g. because it discards layers after "
                "unpacking; pull the image again or use the CRI-O route with a registry image",
                image=name)
    config_json = json.loads(images.read_blob(config_digest))
    return BaseImage(name, manifest, media_type, config_json,
                     checked_copies(work, images.blob_to_file))


# -- a registry ----------------------------------------------------------------------------------
def registry_image(config: HelperConfig, ref: ImageReference, work: Path,
                   resources: ExitStack) -> BaseImage:
    """The image `ref` from its registry, with the node's credentials; the client lives as
    long as `resources`."""
    client = resources.enter_context(RegistryClient(node_access(ref.host, config.registry)))
    body, media_type, _ = client.get_manifest(ref)
    manifest = json.loads(body)
    media_type = manifest.get("mediaType") or media_type
    if media_type in INDEX_TYPES:
        entry = pick_platform(manifest, str(ref))
        body, media_type, _ = client.get_manifest(
            ImageReference(ref.host, ref.repository, None, entry["digest"]))
        manifest = json.loads(body)
        media_type = manifest.get("mediaType") or media_type
    config_path = work / "base-config.json"
    client.download_blob(ref.repository, manifest["config"]["digest"], config_path,
                         max_bytes=MAX_CONFIG_BYTES)
    config_json = json.loads(config_path.read_text())
    # each blob at most the size its manifest declares, and a layer at most max_layer_bytes
    declared = {str(d.get("digest")): d.get("size") for d in manifest.get("layers") or []
                if isinstance(d, dict)}

    def fetch(digest: str, path: Path) -> None:
        size = declared.get(digest)
        limit = config.max_layer_bytes
        if isinstance(size, int) and 0 <= size < limit:
            limit = size
        client.download_blob(ref.repository, digest, path, max_bytes=limit)

    return BaseImage(str(ref), manifest, media_type, config_json, checked_copies(work, fetch))
