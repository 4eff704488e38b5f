"""A checkpoint archive the kubelet's checkpoint API wrote (POST /checkpoint/NS/POD/CONTAINER,
through containerd or CRI-O), taken in as one of our checkpoints so that it is restored, pushed
and listed like any other (a Checkpoint with spec.kubeletArchive).

The archive is found by its name in the kubelet's checkpoint directory on this node (the
administrator's configuration, never a caller's path); what it says of its container (pod,
namespace, container) comes from its spec.dump, written by the runtime, and must name the pod
and namespace of the object that asks for it. Its members are unpacked one by one (regular
files and directories under names the kubelet's layout has), its changed files decompressed
when the runtime gzipped them (containerd does), and the result is hashed and signed by this
helper: from then on it is verified like every checkpoint.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from kubectl_cedana.contract import KUBELET_ARCHIVE_PATTERN
from sidecar.config import HelperConfig
from sidecar.errors import CheckpointNotFound, ContentRefused, DumpFailed, Forbidden, InvalidRequest
from sidecar.node import versions
from sidecar.ops import retention, transfer
from sidecar.ops.checkpoint import catalogue_entry, destination, push_or_keep
from sidecar.ops.containers import recorded_pod
from sidecar.ops.context import Helper
from sidecar.ops.limits import Limits, admit
from sidecar.registry.remote import checkpoint_extractor
from sidecar.storage import signing, store
from sidecar.storage.catalogue import Catalogue
from sidecar.storage.paths import relative_name
from sidecar.storage.rootfs_diff import DELETED_FILES, DIFF_TAR
from sidecar.storage.tar import BoundedTarInfo

log = logging.getLogger(__name__)

ARCHIVE_NAME = re.compile(KUBELET_ARCHIVE_PATTERN)
#: what the kubelet's layout holds (containerd and CRI-O); other members are left out
TOP_FILES = {"config.dump", "spec.dump", "status.dump", "status", DIFF_TAR, DELETED_FILES,
             "dump.log", "stats-dump", "container.log", "network.status", "bind.mounts"}
SPEC_MAX_BYTES = 4 << 20

# the annotations each runtime puts in a container's OCI spec
_NAMESPACE_KEYS = ("io.kubernetes.cri.sandbox-namespace", "io.kubernetes.pod.namespace")
_POD_KEYS = ("io.kubernetes.cri.sandbox-name", "io.kubernetes.pod.name")
_CONTAINER_KEYS = ("io.kubernetes.cri.container-name", "io.kubernetes.container.name")
_SANDBOX_KEYS = ("io.kubernetes.cri.sandbox-id", "io.kubernetes.cri-o.SandboxID")
_UID_KEYS = ("io.kubernetes.cri.sandbox-uid", "io.kubernetes.pod.uid")
_IMAGE_KEYS = ("io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName")


def _first(annotations: dict[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        if annotations.get(key):
            return str(annotations[key])
    return ""


def identity(spec: dict[str, Any]) -> dict[str, str]:
    """The container an archive's spec.dump describes, from the runtime's annotations."""
    annotations = spec.get("annotations") or {}
    if not isinstance(annotations, dict):
        annotations = {}
    return {"namespace": _first(annotations, _NAMESPACE_KEYS),
            "pod": _first(annotations, _POD_KEYS),
            "container": _first(annotations, _CONTAINER_KEYS),
            "sandbox_id": _first(annotations, _SANDBOX_KEYS),
            "pod_uid": _first(annotations, _UID_KEYS),
            "image": _first(annotations, _IMAGE_KEYS)}


def member_path(name: str) -> PurePosixPath | None:
    """Where a member goes in the checkpoint directory, or None for a member left out; raises
    ContentRefused for a name that climbs out."""
    rel = relative_name(name, source="the kubelet archive", error=ContentRefused,
                        outside="the checkpoint")
    parts = PurePosixPath(rel).parts if rel else ()
    if parts and parts[0] == store.IMAGES_DIR and len(parts) <= 2:
        return PurePosixPath(rel)
    if len(parts) == 1 and parts[0] in TOP_FILES:
        return PurePosixPath(rel)
    return None


@contextmanager
def _opened(archive: Path) -> Iterator[tarfile.TarFile]:
    """The archive, opened once (no link followed, a regular file), its headers bounded; what
    cannot be read is invalid_request."""
    try:
        fd = os.open(archive, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as raw:
            if not stat.S_ISREG(os.fstat(raw.fileno()).st_mode):
                raise InvalidRequest(f"{archive.name} is not a regular file")
            with tarfile.open(fileobj=raw, mode="r:*", tarinfo=BoundedTarInfo) as tar:
                yield tar
    except (OSError, tarfile.TarError) as exc:
        raise InvalidRequest(f"cannot read {archive.name}: {exc}") from exc


def kept_members(tar: tarfile.TarFile, name: str) -> dict[str, tarfile.TarInfo]:
    """The members the kubelet's layout has, by their place in the checkpoint: regular files
    and directories only (ContentRefused), each once. Headers only: nothing is read or
    written."""
    kept: dict[str, tarfile.TarInfo] = {}
    for member in tar.getmembers():
        where = member_path(member.name)
        if where is None:
            continue
        if not (member.isreg() or member.isdir()):
            raise ContentRefused(f"archive member {member.name!r} is not a regular file",
                                 member=member.name)
        if str(where) in kept and not member.isdir():
            raise InvalidRequest(f"cannot take in {name}: it holds {where} twice")
        kept[str(where)] = member
    return kept


def _spec(tar: tarfile.TarFile, kept: dict[str, tarfile.TarInfo], name: str) -> dict[str, Any]:
    member = kept.get("spec.dump")
    if member is None or not member.isreg():
        raise InvalidRequest(f"{name} is not a kubelet checkpoint archive (no spec.dump)")
    if member.size > SPEC_MAX_BYTES:
        raise InvalidRequest(f"{name}: spec.dump is not a small file")
    source = tar.extractfile(member)
    assert source is not None  # a regular file
    try:
        spec = json.loads(source.read())
    except ValueError as exc:
        raise InvalidRequest(f"{name}: spec.dump is not JSON: {exc}") from exc
    if not isinstance(spec, dict):
        raise InvalidRequest(f"{name}: spec.dump is not an OCI spec")
    return spec


def archive_path(config: HelperConfig, name: str) -> Path:
    if not ARCHIVE_NAME.fullmatch(name):
        raise InvalidRequest(f"{name!r} is not the name of a kubelet checkpoint archive "
                             "(checkpoint-POD_NAMESPACE-CONTAINER-TIME.tar)")
    path = config.kubelet_checkpoint_dir / name
    if not path.is_file():
        raise CheckpointNotFound(f"no kubelet checkpoint archive {name} in "
                                 f"{config.kubelet_checkpoint_dir} on node {config.node_name}")
    return path


def import_archive(config: HelperConfig, *, namespace: str, pod: str, name: str,
                   checkpoint_id: str, pod_object: dict[str, Any] | None = None,
                   limits: Limits | None = None) -> dict[str, Any]:
    """Make checkpoint `checkpoint_id` of the kubelet archive `name`, which must be one of pod
    `namespace`/`pod`; its catalogue entry. The archive's members are checked (layout, kinds,
    size, its spec.dump's pod) before anything is written, and written through the helper's
    one extractor (storage/tar.py). containerd's rootfs-diff.tar is gzipped: kept as it is,
    the restore reads either."""
    started = time.monotonic()
    path = archive_path(config, name)
    final_dir = destination(config, None, checkpoint_id, namespace)
    with _opened(path) as tar:
        kept = kept_members(tar, name)
        found = identity(_spec(tar, kept, name))
        if (found["namespace"], found["pod"]) != (namespace, pod):
            raise Forbidden(
                f"{name} is a checkpoint of pod {found['namespace'] or '?'}/"
                f"{found['pod'] or '?'}, not of {namespace}/{pod}: import it as a Checkpoint "
                "of that pod, in its namespace", namespace=namespace)
        if f"{store.IMAGES_DIR}/inventory.img" not in kept or "config.dump" not in kept:
            raise InvalidRequest(f"{name} holds no CRIU images ({store.IMAGES_DIR}/) or no "
                                 "config.dump")
        size = sum(m.size for m in kept.values())
        if config.max_checkpoint_bytes and size > config.max_checkpoint_bytes:
            raise DumpFailed(f"{name} holds more than {config.max_checkpoint_bytes} bytes")
        with (limits or Limits()).reserve(config, size, f"import of {name}"):
            store.make_private_dirs(final_dir.parent, Path("/"))
            temp_dir = final_dir.parent / f"{store.TEMP_PREFIX}{checkpoint_id}"
            temp_dir.mkdir(mode=store.DIR_MODE)
            try:
                with checkpoint_extractor(temp_dir) as out:
                    for member in kept.values():
                        out.extract(tar, member)
                    out.finish()
                try:
                    dumped = store.read_json(temp_dir / "config.dump")
                except (OSError, ValueError) as exc:
                    raise InvalidRequest(f"{name}: config.dump is unreadable: {exc}") from exc
                config_dump = dumped if isinstance(dumped, dict) else {}
                live = pod_object if pod_object and found["pod_uid"] and \
                    (pod_object.get("metadata") or {}).get("uid") == found["pod_uid"] else None
                manifest = store.CheckpointManifest(
                    checkpoint_id=checkpoint_id,
                    created=str(config_dump.get("checkpointedTime") or ""),
                    source={
                        "namespace": namespace, "pod": pod, "container": found["container"],
                        "container_id": str(config_dump.get("id") or ""),
                        "sandbox_id": found["sandbox_id"], "node": config.node_name,
                        "image": found["image"] or str(config_dump.get("rootfsImageName") or ""),
                        "runtime": str(config_dump.get("runtime") or "runc"),
                        "kubelet_archive": name,
                        **({"pod_object": recorded_pod(live)} if live else {}),
                    },
                    tools=versions.tool_versions(config),
                    # what the runtimes' runc checkpoint uses: no TCP, no external unix
                    # sockets, no file locks
                    criu_options={"leave_running": True, "tcp_established": False,
                                  "ext_unix_sk": False, "file_locks": False,
                                  "link_remap": False, "skip_in_flight": False,
                                  "with_rootfs": DIFF_TAR in kept, "volumes": []},
                )
                store.finalize(temp_dir, final_dir, manifest, key=signing.helper_key(config))
            except BaseException:
                shutil.rmtree(temp_dir, ignore_errors=True)
                raise
            # listed while its quota is still reserved
            entry = catalogue_entry(config, manifest, final_dir, store.directory_size(final_dir),
                                    manifest.criu_options, [], leave_running=True,
                                    with_rootfs=DIFF_TAR in kept, kubelet_archive=name)
            Catalogue(config.checkpoint_dir).add(entry)
    log.info("imported kubelet archive %s as checkpoint %s", name, checkpoint_id,
             extra={"checkpoint_id": checkpoint_id})
    return {**entry, "duration_ms": int((time.monotonic() - started) * 1000)}


def import_checkpoint(helper: Helper, *, namespace: str, pod: str, name: str,
                      checkpoint_id: str, storage: str | None = None,
                      compression: str | None = None,
                      pod_object: dict[str, Any] | None = None) -> dict[str, Any]:
    """A Checkpoint with spec.kubeletArchive: the import, then a push as for any checkpoint;
    the answer in checkpoint()'s shape."""
    config = helper.config
    remote = transfer.wants_remote(config, storage, None)
    with admit(helper, namespace, "checkpoint"):
        entry = import_archive(config, namespace=namespace, pod=pod, name=name,
                               checkpoint_id=checkpoint_id, pod_object=pod_object,
                               limits=helper.limits)
        answer = {"checkpoint_id": checkpoint_id, "checkpoint_path": entry["path"],
                  "size_bytes": entry["size_bytes"], "duration_ms": entry["duration_ms"],
                  "container_id": entry["container_id"], "container": entry["container"],
                  "storage": "remote" if remote else "local"}
        if remote:
            pushed = push_or_keep(config, checkpoint_id, Path(entry["path"]), compression,
                                   f"checkpoint {checkpoint_id}")
            answer["remote"] = pushed.to_dict()
        retention.apply_retention(config)
        return answer
