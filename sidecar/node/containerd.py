"""containerd's image store, read through `ctr` (containerd's own client) at a given address.

Used by the rootfs commit to find the image a container runs and to copy its manifest, config
and layer blobs; nothing here writes to containerd.
"""
from __future__ import annotations

import hashlib
import json
import platform
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.errors import ContainerdUnavailable, ImageNotFound, InvalidRequest, RegistryError
from sidecar.node import tool

K8S_NAMESPACE = "k8s.io"
CONFIG_LABEL = "containerd.io/gc.ref.content.config"
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le",
         "s390x": "s390x"}


def socket_path(address: str) -> Path:
    """The unix socket a request's `address` names; refuses anything else."""
    text = address.strip()
    if text.startswith("unix://"):
        text = text[len("unix://"):]
    path = Path(text)
    if not path.is_absolute():
        raise InvalidRequest(f"address {address!r} must be the absolute path of containerd's "
                             "socket, e.g. /run/containerd/containerd.sock", fields=["address"])
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise InvalidRequest(f"address {address!r}: no containerd socket there ({exc.strerror})",
                             fields=["address"]) from exc
    if not stat.S_ISSOCK(mode):
        raise InvalidRequest(f"address {address!r} is not a unix socket", fields=["address"])
    return path


@dataclass(frozen=True)
class LocalImage:
    name: str
    manifest: bytes
    manifest_type: str
    manifest_digest: str
    config: bytes

    @property
    def manifest_json(self) -> dict[str, Any]:
        return dict(json.loads(self.manifest))

    @property
    def config_json(self) -> dict[str, Any]:
        return dict(json.loads(self.config))


class ContainerdImages:
    def __init__(self, ctr_path: str, address: Path, namespace: str = K8S_NAMESPACE,
                 timeout: float = 120.0) -> None:
        self.ctr = ctr_path
        self.address = address
        self.namespace = namespace
        self.timeout = timeout

    def _argv(self, *args: str) -> list[str]:
        return [self.ctr, "--address", str(self.address), "--namespace", self.namespace, *args]

    def _run(self, *args: str) -> str:
        result = tool.run(self._argv(*args), timeout=self.timeout)
        if not result.ok:
            raise ContainerdUnavailable(f"containerd at {self.address}: {result.describe()}")
        return result.stdout

    def target(self, name: str) -> tuple[str, str] | None:
        """(digest, media type) that image `name` points at, or None if containerd lacks it."""
        for line in self._run("images", "ls", f"name=={name}").splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 3 and fields[0] == name:
                return fields[2], fields[1]
        return None

    def read_blob(self, digest: str, limit: int = 16 << 20) -> bytes:
        """A small blob (manifest, config), checked against its digest."""
        argv = self._argv("content", "get", digest)
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=self.timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ContainerdUnavailable(f"containerd at {self.address}: {exc}") from exc
        if proc.returncode != 0:
            raise ImageNotFound(f"containerd has no content {digest}: "
                                f"{tool.last_lines(proc.stderr.decode(errors='replace'), 3)}")
        data = proc.stdout
        if len(data) > limit or "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise RegistryError(f"containerd content {digest} does not match its digest")
        return data

    def blob_to_file(self, digest: str, dest: Path) -> int:
        """Copy a blob into `dest`, checked against its digest; returns its size."""
        hasher = hashlib.sha256()
        size = 0
        with subprocess.Popen(self._argv("content", "get", digest), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc, \
                open(dest, "wb") as out:
            assert proc.stdout is not None and proc.stderr is not None
            for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
                hasher.update(chunk)
                out.write(chunk)
                size += len(chunk)
            err = proc.stderr.read()
        if proc.returncode != 0 or "sha256:" + hasher.hexdigest() != digest:
            dest.unlink(missing_ok=True)
            detail = tool.last_lines(err.decode(errors="replace"), 3) or "digest mismatch"
            raise ImageNotFound(f"containerd at {self.address} cannot give content {digest}: "
                                f"{detail}")
        return size

    def content_index(self) -> dict[str, dict[str, str]]:
        """Every blob containerd holds, with its labels (one `ctr content ls`)."""
        index: dict[str, dict[str, str]] = {}
        for line in self._run("content", "ls").splitlines()[1:]:
            fields = line.split()
            if not fields or not fields[0].startswith("sha256:"):
                continue
            labels: dict[str, str] = {}
            if len(fields) > 1 and "=" in fields[-1]:
                key = ""
                for item in fields[-1].split(","):
                    if "=" in item:
                        key, _, value = item.partition("=")
                        labels[key] = value
                    elif key:  # a value that itself holds commas
                        labels[key] += "," + item
            index[fields[0]] = labels
        return index

    def image(self, name: str) -> LocalImage:
        """The image `name` as containerd holds it, resolved to this node's platform.

        CRI names a container's image by any one of the references that share its image ID,
        and containerd may lack the layer blobs of that one (discarded after unpacking); then
        another manifest of the same image whose blobs are all present is used."""
        found = self.target(name)
        if found is None:
            raise ImageNotFound(f"containerd at {self.address} has no image {name}", image=name)
        digest, media_type = found
        body = self.read_blob(digest)
        if media_type in INDEX_TYPES:
            digest, media_type = _pick_platform(json.loads(body), name)
            body = self.read_blob(digest)
        manifest = json.loads(body)
        config_digest = str(manifest["config"]["digest"])
        index = self.content_index()
        if not _complete(manifest, index):
            for other, labels in sorted(index.items()):
                if other == digest or labels.get(CONFIG_LABEL) != config_digest:
                    continue
                other_body = self.read_blob(other)
                candidate = json.loads(other_body)
                if _complete(candidate, index):
                    digest, body, manifest = other, other_body, candidate
                    media_type = str(candidate.get("mediaType") or media_type)
                    break
            else:
                raise ImageNotFound(
                    f"containerd at {self.address} no longer holds the layer blobs of image "
                    f"{name} (image ID {config_digest[:19]}), e.g. because it discards layers "
                    "after unpacking; pull the image again or use the CRI-O route with a "
                    "registry image", image=name)
        config = self.read_blob(config_digest)
        return LocalImage(name, body, str(manifest.get("mediaType") or media_type), digest,
                          config)


def _complete(manifest: dict[str, Any], index: dict[str, dict[str, str]]) -> bool:
    return all(layer.get("digest") in index for layer in manifest.get("layers") or [])


def node_platform() -> tuple[str, str]:
    machine = platform.machine()
    return "linux", _ARCH.get(machine, machine)


def _pick_platform(index: dict[str, Any], name: str) -> tuple[str, str]:
    want_os, want_arch = node_platform()
    for entry in index.get("manifests") or []:
        plat = entry.get("platform") or {}
        if plat.get("os") == want_os and plat.get("architecture") == want_arch:
            return str(entry["digest"]), str(entry.get("mediaType", ""))
    raise ImageNotFound(f"image {name} has no manifest for {want_os}/{want_arch}", image=name)
