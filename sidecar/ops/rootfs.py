"""Rootfs checkpoint and restore: a container's changed files as one image layer.

Commit: freeze the container, write its overlay upper directory as one OCI layer (whiteouts for
deletions), thaw, then push its original image plus that layer to the registry named in the
request, with the node's credentials. The original image comes from containerd's content store
(`/checkpoint/rootfs`, at `address`) or, for CRI-O's containers/storage, from the registry the
request's `image_ref` names (`/checkpoint/rootfs/crio`).

Restore: the layers an image adds over the target container's own image are downloaded,
checked, and applied onto the target's root filesystem, deletions first.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sidecar.config import HelperConfig
from sidecar.errors import (
    ContainerNotRunning,
    DumpFailed,
    ImageMismatch,
    ImageNotFound,
    InvalidRequest,
    RegistryNotAllowed,
    TargetIncompatible,
)
from sidecar.node import proctree, root_attach
from sidecar.node.containerd import socket_path
from sidecar.node.discovery import RUNNING, RuncContainer
from sidecar.node.freezer import frozen
from sidecar.node.locks import ContainerLocks
from sidecar.ops.containers import Containers, containers_of
from sidecar.ops.context import Helper
from sidecar.ops.images import BaseImage, containerd_image, registry_image
from sidecar.ops.limits import admit
from sidecar.registry.client import ImageReference, RegistryClient
from sidecar.registry.credentials import node_access
from sidecar.storage import oci_layer, store
from sidecar.storage.store import TEMP_PREFIX

log = logging.getLogger(__name__)

CRIO_IMAGE_REF = "io.kubernetes.cri-o.ImageRef"
@dataclass
class RootfsCommit:
    image_ref: str
    digest: str
    base_image: str
    container_id: str
    layer: dict[str, Any]
    layers: int
    uploaded_blobs: int
    frozen: bool
    duration_ms: int
    timings_ms: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_ref": self.image_ref,
            "digest": self.digest,
            "pushed": f"{self.image_ref.split('@')[0]}@{self.digest}",
            "base_image": self.base_image,
            "container_id": self.container_id,
            "layer": self.layer,
            "layers": self.layers,
            "uploaded_blobs": self.uploaded_blobs,
            "frozen": self.frozen,
            "duration_ms": self.duration_ms,
            "timings_ms": self.timings_ms,
        }


@dataclass
class RootfsApplied:
    image_ref: str
    container_id: str
    applied_layers: list[str]
    deleted: list[str]
    entries: int
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_ref": self.image_ref,
            "container_id": self.container_id,
            "applied_layers": self.applied_layers,
            "deleted": self.deleted,
            "entries": self.entries,
            "duration_ms": self.duration_ms,
        }


def _running(containers: Containers, namespace: str, sandbox: str,
             container: str) -> RuncContainer:
    target = containers.find(namespace, sandbox, container)
    if target.status != RUNNING:
        raise ContainerNotRunning(
            f"container {namespace}/{sandbox}/{container} ({target.container_id}) is "
            f"{target.status}; its root filesystem is read from the running container",
            container_id=target.container_id)
    return target


@contextmanager
def _workdir(config: HelperConfig) -> Iterator[Path]:
    config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}rootfs-", dir=config.checkpoint_dir))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _file_digest(path: Path) -> str:
    return "sha256:" + store.hash_file(path)[0]


def _diff_id(path: Path, media_type: str, max_bytes: int) -> str | None:
    """sha256 of the uncompressed tar (at most max_bytes of it); None for a compression this
    helper cannot read."""
    if media_type.endswith("tar"):
        return _file_digest(path)
    if not media_type.endswith("gzip"):
        return None
    return oci_layer.uncompressed_digest(path, media_type, max_bytes)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ms(start: float) -> int:
    return int((time.monotonic() - start) * 1000)


# -- commit ------------------------------------------------------------------------------------
def _write_layer(target: RuncContainer, work: Path, media_type: str) -> tuple[
        oci_layer.LayerBlob, bool]:
    what = f"container {target.namespace}/{target.sandbox_name}/{target.container_name}"
    upper = proctree.upper_dir(target.pid)
    if upper is None or not upper.is_dir():
        raise DumpFailed(f"{what} has no overlay upper directory visible to the helper; its "
                         "root filesystem is not an overlay mount",
                         container_id=target.container_id)
    with frozen(target.pid, what) as was_frozen:
        layer = oci_layer.write_layer(upper, work / "layer.tar.gz", media_type=media_type)
    return layer, was_frozen


def _push(client: RegistryClient, dest: ImageReference, base: BaseImage,
          layer: oci_layer.LayerBlob, container: RuncContainer) -> tuple[str, int, int]:
    """Upload the base's blobs the repository lacks, the new layer, config and manifest."""
    uploaded = 0
    for descriptor in base.manifest.get("layers") or []:
        digest = descriptor["digest"]
        if client.has_blob(dest.repository, digest):
            continue
        with base.open_blob(digest) as stream:
            client.upload_blob(dest.repository, digest, int(descriptor["size"]), stream)
        uploaded += 1
    with open(layer.path, "rb") as f:
        client.upload_blob(dest.repository, layer.digest, layer.size, f)
    uploaded += 1
    new_config = oci_layer.config_with_layer(
        base.config, layer.diff_id, created=_now(),
        created_by=f"kubectl-cedana rootfs checkpoint of {container.namespace}/"
                   f"{container.sandbox_name}/{container.container_name}",
        comment=f"changed files of container {container.container_id}")
    config_blob = json.dumps(new_config, separators=(",", ":"), sort_keys=True).encode()
    config_digest = oci_layer.digest_of(config_blob)
    client.upload_blob(dest.repository, config_digest, len(config_blob), config_blob)
    manifest, manifest_blob = oci_layer.manifest_with_layer(base.manifest, config_blob, layer)
    digest = client.put_manifest(dest, manifest_blob, manifest.get("mediaType") or base.media_type)
    return digest, uploaded + 1, len(manifest.get("layers") or [])


def _commit(config: HelperConfig, target: RuncContainer, dest: ImageReference,
            base_for: Callable[[Path, ExitStack], BaseImage], locks: ContainerLocks,
            started: float, containers: Containers) -> RootfsCommit:
    timings: dict[str, int] = {}
    with ExitStack() as resources:
        client = resources.enter_context(RegistryClient(node_access(dest.host,
                                                                    config.registry)))
        # fail on credentials before the container is frozen or anything is written
        client.authenticate(dest.repository, "pull,push")
        resources.enter_context(locks.hold(target.container_id, "rootfs-checkpoint"))
        work = resources.enter_context(_workdir(config))
        # judged under the lock: a dump of ours may have frozen it meanwhile (that is a 409
        # operation_in_progress from the lock, never "not running")
        target = _running(containers, target.namespace, target.sandbox_name,
                          target.container_name)
        step = time.monotonic()
        base = base_for(work, resources)
        timings["base_image"] = _ms(step)
        step = time.monotonic()
        layer, was_frozen = _write_layer(target, work,
                                         oci_layer.layer_media_type_for(base.media_type))
        timings["layer"] = _ms(step)
        step = time.monotonic()
        digest, uploaded, count = _push(client, dest, base, layer, target)
        timings["push"] = _ms(step)
    log.info("committed the changed files of %s/%s/%s as %s@%s", target.namespace,
             target.sandbox_name, target.container_name, dest, digest)
    return RootfsCommit(
        image_ref=str(dest), digest=digest, base_image=base.name,
        container_id=target.container_id,
        layer={"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size,
               "media_type": layer.media_type},
        layers=count, uploaded_blobs=uploaded, frozen=was_frozen, duration_ms=_ms(started),
        timings_ms=timings)


def checkpoint_rootfs(config: HelperConfig, containers: Containers, namespace: str, sandbox: str,
                      container: str, address: str, image_ref: str, *,
                      locks: ContainerLocks) -> RootfsCommit:
    """containerd: the base image is the one the container runs, from containerd's store."""
    started = time.monotonic()
    dest = ImageReference.parse(image_ref)
    target = containers.find(namespace, sandbox, container)
    if not target.image:
        raise ImageNotFound(f"container {target.container_id} carries no image name annotation")
    socket_path(address)
    return _commit(config, target, dest,
                   lambda work, _resources: containerd_image(config, address, target.image,
                                                             work),
                   locks, started, containers)


def checkpoint_rootfs_crio(config: HelperConfig, containers: Containers, namespace: str,
                           sandbox: str, container: str, image_ref: str, new_image_ref: str, *,
                           locks: ContainerLocks) -> RootfsCommit:
    """CRI-O / containers/storage: the base image is `image_ref`, read from its registry."""
    started = time.monotonic()
    source = ImageReference.parse(image_ref)
    dest = ImageReference.parse(new_image_ref)
    target = containers.find(namespace, sandbox, container)

    def base_for(work: Path, resources: ExitStack) -> BaseImage:
        base = registry_image(config, source, work, resources)
        _check_same_image(target, base)
        return base

    return _commit(config, target, dest, base_for, locks, started, containers)


def _check_same_image(target: RuncContainer, base: BaseImage) -> None:
    """CRI-O records the image ID (the config digest) the container was created from."""
    image_id = target.annotations.get(CRIO_IMAGE_REF, "").removeprefix("sha256:")
    if not image_id or len(image_id) != 64:
        return
    config_digest = str(base.manifest["config"]["digest"]).removeprefix("sha256:")
    if image_id != config_digest:
        raise ImageMismatch(
            f"container {target.container_id} runs image sha256:{image_id[:12]}, but "
            f"{base.name} is sha256:{config_digest[:12]}; image_ref must name the image the "
            "container was created from", container_id=target.container_id)


# -- restore -----------------------------------------------------------------------------------
def _image(config: HelperConfig, address: str, name: str, work: Path,
           resources: ExitStack) -> BaseImage:
    """From containerd when it has it (at `address`, if any), else from its registry."""
    if address:
        try:
            return containerd_image(config, address, name, work)
        except ImageNotFound:
            pass
    return registry_image(config, ImageReference.parse(name), work, resources)


def added_layers(base_diff_ids: list[str], image_diff_ids: list[str],
                 layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The layer descriptors an image adds over a base it extends."""
    common = 0
    for ours, theirs in zip(base_diff_ids, image_diff_ids):
        if ours != theirs:
            break
        common += 1
    if common == 0 or common < len(base_diff_ids):
        raise TargetIncompatible(
            f"the image does not extend the target's image: they share {common} of the "
            f"target's {len(base_diff_ids)} layers")
    return layers[common:]


def restore_rootfs(config: HelperConfig, containers: Containers, namespace: str, sandbox: str,
                   container: str, address: str, image_ref: str, *,
                   locks: ContainerLocks) -> RootfsApplied:
    started = time.monotonic()
    ref = ImageReference.parse(image_ref)
    target = containers.find(namespace, sandbox, container)
    if address:
        socket_path(address)
    with locks.hold(target.container_id, "rootfs-restore"), _workdir(config) as work, \
            ExitStack() as resources:
        target = _running(containers, namespace, sandbox, container)  # judged under the lock
        # its root where the helper can write (CRI-O's is not visible as it is: root_attach)
        rootfs = Path(resources.enter_context(root_attach.attached(target.pid, target.rootfs)))
        if not rootfs.is_dir():
            raise TargetIncompatible(f"the target's rootfs {rootfs} is not a directory")
        image = _image(config, address, str(ref), work, resources)
        base = _image(config, address, target.image, work, resources)
        todo = added_layers(base.diff_ids, image.diff_ids, image.manifest.get("layers") or [])
        # download and check everything before the target's files are touched
        blobs: list[tuple[Path, str, str]] = []
        diff_ids = image.diff_ids[len(image.diff_ids) - len(todo):]
        for descriptor, diff_id in zip(todo, diff_ids):
            digest = str(descriptor["digest"])
            media_type = str(descriptor.get("mediaType", ""))
            path = work / f"layer-{digest.split(':')[-1]}"
            with image.open_blob(digest) as stream, open(path, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
            if _file_digest(path) != digest:
                raise ImageMismatch(f"layer {digest} of {ref} does not match its digest")
            if _diff_id(path, media_type, config.max_layer_bytes) not in (diff_id, None):
                raise ImageMismatch(f"layer {digest} of {ref} does not unpack to the diff_id "
                                    f"{diff_id} its config records")
            blobs.append((path, media_type, digest))
        deleted: list[str] = []
        entries = 0
        for path, media_type, _digest in blobs:
            applied = oci_layer.apply_layer(path, media_type, rootfs,
                                            max_bytes=config.max_layer_bytes)
            deleted.extend(applied.deleted + applied.opaque)
            entries += applied.entries
    log.info("applied %d layer(s) of %s onto %s/%s/%s", len(blobs), ref, namespace, sandbox,
             container)
    return RootfsApplied(str(ref), target.container_id, [d for _, _, d in blobs], deleted,
                         entries, _ms(started))


# -- what a request may name ------------------------------------------------------------------
def allowed_address(config: HelperConfig, requested: str) -> str:
    """The containerd socket a request names, when it is one the administrator configured (a
    caller's socket could serve images of its making): else 400."""
    if not requested:
        return config.default_containerd_address
    name = requested.strip().removeprefix("unix://")
    for address in config.allowed_containerd_addresses:
        configured = address.removeprefix("unix://")
        if os.path.realpath(name) == os.path.realpath(configured):
            return configured
    raise InvalidRequest(
        f"address {requested!r} is not a containerd socket of this helper (configured: "
        f"{', '.join(config.allowed_containerd_addresses)})", fields=["address"])


def allowed_image(config: HelperConfig, namespace: str, text: str, purpose: str) -> str:
    """`text` when the node's credentials may be used for it on behalf of `namespace`: under one
    of the administrator's registry prefixes, and never the checkpoint repository. 403 else."""
    ref = ImageReference.parse(text)
    name = f"{ref.host}/{ref.repository}"
    checkpoints = config.remote_repository.rstrip("/")
    if checkpoints and (name == checkpoints or name.startswith(checkpoints + "/")):
        raise RegistryNotAllowed(
            f"{text} is in the checkpoint repository {checkpoints}, which only the helpers "
            "write: it cannot be a rootfs image", registry=ref.host, image=text)
    for prefix in config.registry_prefixes:
        allowed = prefix.replace("{namespace}", namespace).rstrip("/")
        if name == allowed or name.startswith(allowed + "/"):
            return text
    rules = ", ".join(config.registry_prefixes) or "none"
    raise RegistryNotAllowed(
        f"the node's registry credentials may not be used to {purpose} {text} for namespace "
        f"{namespace}: it is under none of the registry prefixes the administrator allowed "
        f"({rules}; `kubectl cedana install --registry-prefix HOST/PATH`, where {{namespace}} "
        "stands for the pod's namespace)", registry=ref.host, image=text)


# -- the routes' view ----------------------------------------------------------------------------
def _usual_address(config: HelperConfig) -> str:
    """containerd's socket when the node has it at the usual place (a restore may also pull)."""
    address = config.default_containerd_address
    return address if os.path.exists(address) else ""


def commit(helper: Helper, *, namespace: str, pod: str, container: str, root: str | None,
           image_ref: str, address: str = "") -> dict[str, Any]:
    """POST /checkpoint/rootfs: the base image from containerd at `address` (default: its
    usual socket)."""
    config = helper.config
    allowed_image(config, namespace, image_ref, "push")
    with admit(helper, namespace, "rootfs checkpoint"):
        return checkpoint_rootfs(config, containers_of(helper, root), namespace, pod, container,
                                 allowed_address(config, address), image_ref,
                                 locks=helper.locks).to_dict()


def commit_crio(helper: Helper, *, namespace: str, pod: str, container: str, root: str | None,
                image_ref: str, new_image_ref: str) -> dict[str, Any]:
    """POST /checkpoint/rootfs/crio: the base image `image_ref` from its registry."""
    config = helper.config
    allowed_image(config, namespace, image_ref, "pull")
    allowed_image(config, namespace, new_image_ref, "push")
    with admit(helper, namespace, "rootfs checkpoint"):
        return checkpoint_rootfs_crio(config, containers_of(helper, root), namespace, pod,
                                      container, image_ref, new_image_ref,
                                      locks=helper.locks).to_dict()


def apply(helper: Helper, *, namespace: str, pod: str, container: str, root: str | None,
          image_ref: str, address: str = "") -> dict[str, Any]:
    """POST /restore/rootfs: images from containerd when it has them, else their registry."""
    config = helper.config
    allowed_image(config, namespace, image_ref, "pull")
    with admit(helper, namespace, "rootfs restore"):
        return restore_rootfs(config, containers_of(helper, root), namespace, pod, container,
                              allowed_address(config, address) if address
                              else _usual_address(config),
                              image_ref, locks=helper.locks).to_dict()
