"""containerd's image and content stores, read through `ctr` (containerd's own client) at a given
address: which images it has, what they point at, and their blobs. Nothing here writes to
containerd, and every call is bounded in time (ctr's own --timeout, and ours on the process).

ctr prints no machine-readable form of an image's target (`images ls` has only `-q`, names;
`images inspect` draws a tree), so `images ls` rows are read for their first three columns
only (REF TYPE DIGEST, which hold no spaces in any ctr from 1.6 to 2.x), each checked for its
shape; everything else comes from `content ls -q` (digests) and the blobs themselves (JSON).
"""
from __future__ import annotations

import hashlib
import platform
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sidecar.errors import ContainerdUnavailable, ImageNotFound, InvalidRequest, RegistryError
from sidecar.node import tool

K8S_NAMESPACE = "k8s.io"
CTR_TIMEOUT_S = 120.0
SMALL_BLOB_LIMIT = 16 << 20  # manifests, indexes and configs
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_MEDIA_TYPE = re.compile(r"application/[\w.+-]+")
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


def node_platform() -> tuple[str, str]:
    """(os, architecture) of this node, as image indexes name platforms."""
    machine = platform.machine()
    return "linux", _ARCH.get(machine, machine)


@dataclass(frozen=True)
class ImageTarget:
    """What an image name points at in containerd: a manifest or an index."""

    name: str
    media_type: str
    digest: str


class ContainerdImages:
    def __init__(self, ctr_path: str, address: Path, namespace: str = K8S_NAMESPACE,
                 timeout: float = CTR_TIMEOUT_S) -> None:
        self.ctr = ctr_path
        self.address = address
        self.namespace = namespace
        self.timeout = timeout

    @property
    def _kill_after(self) -> float:
        """ctr stops itself after `timeout`; past this, it is killed."""
        return self.timeout + min(self.timeout, 5.0)

    def _argv(self, *args: str) -> list[str]:
        return [self.ctr, "--address", str(self.address), "--namespace", self.namespace,
                "--timeout", f"{int(self.timeout)}s", *args]

    def _run(self, *args: str) -> str:
        result = tool.run(self._argv(*args), timeout=self._kill_after)
        if not result.ok:
            raise ContainerdUnavailable(f"containerd at {self.address}: {result.describe()}")
        return result.stdout

    def targets(self, name: str | None = None) -> list[ImageTarget]:
        """The images containerd holds (or the one named), with what each points at."""
        found = []
        for line in self._run("images", "ls", *([f"name=={name}"] if name else [])
                              ).splitlines()[1:]:
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 3 or not _MEDIA_TYPE.fullmatch(fields[1]) or \
                    not _DIGEST.fullmatch(fields[2]):
                raise ContainerdUnavailable(f"containerd at {self.address}: `ctr images ls` "
                                            f"printed a row this helper cannot read: {line!r}")
            found.append(ImageTarget(fields[0], fields[1], fields[2]))
        return [t for t in found if name is None or t.name == name]

    def digests(self) -> set[str]:
        """Every blob containerd holds (`ctr content ls -q`)."""
        return {d for d in self._run("content", "ls", "-q").split() if _DIGEST.fullmatch(d)}

    def _get(self, digest: str, sink: Callable[[bytes], None]) -> None:
        hasher = hashlib.sha256()

        def take(chunk: bytes) -> None:
            hasher.update(chunk)
            sink(chunk)

        result = tool.stream(self._argv("content", "get", digest), take,
                             timeout=self._kill_after)
        if result.timed_out or result.start_error:
            raise ContainerdUnavailable(f"containerd at {self.address}: {result.describe()}")
        if not result.ok:
            raise ImageNotFound(f"containerd at {self.address} cannot give content {digest}: "
                                f"{tool.last_lines(result.stderr, 3)}")
        if "sha256:" + hasher.hexdigest() != digest:
            raise RegistryError(f"containerd content {digest} does not match its digest")

    def read_blob(self, digest: str, limit: int = SMALL_BLOB_LIMIT) -> bytes:
        """A small blob (manifest, config), checked against its digest."""
        data = bytearray()

        def keep(chunk: bytes) -> None:
            data.extend(chunk)
            if len(data) > limit:
                raise RegistryError(f"containerd content {digest} is larger than {limit} "
                                    "bytes; a manifest or config is not")

        self._get(digest, keep)
        return bytes(data)

    def blob_to_file(self, digest: str, dest: Path) -> int:
        """Copy a blob into `dest`, checked against its digest; returns its size."""
        size = 0
        try:
            with open(dest, "wb") as out:
                def write(chunk: bytes) -> None:
                    nonlocal size
                    out.write(chunk)
                    size += len(chunk)

                self._get(digest, write)
        except BaseException:
            dest.unlink(missing_ok=True)
            raise
        return size
