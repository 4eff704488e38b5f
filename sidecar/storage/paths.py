"""Confinement: every path the helper takes from outside (a request, an archive member, a list
of deleted files) is checked here, and refused when it would lead out of the directory it
belongs to (the checkpoint directory, a checkpoint, a container's root filesystem). Names are
checked here (relative_name); the directories of a container's root filesystem are reached
beneath it, never through a path resolved beforehand (storage/beneath.py, storage/tar.py)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from sidecar.errors import HelperError, InvalidRequest, PathOutsideCheckpointDir

ROOTFS = "the container's root filesystem"
#: below the checkpoint directory: checkpoints whose client named a path outside it
BY_PATH = ".by-path"
MAX_CLIENT_PATH = 1024


def within(base: str | Path, path: str | Path) -> bool:
    """Whether `path`, with symlinks and `..` resolved, is `base` itself or lies below it."""
    real_base = os.path.realpath(base)
    return os.path.commonpath([real_base, os.path.realpath(path)]) == real_base


def confine(checkpoint_dir: Path | str, requested: str) -> Path:
    """Return the real path `requested` names, which must lie strictly inside checkpoint_dir.

    Relative paths are taken relative to checkpoint_dir; symlinks and `..` are resolved before
    the check, so neither can lead outside. Names starting with "." are reserved for the
    helper's own files (catalogue, temporaries) and refused.
    """
    if not requested or not requested.strip():
        raise InvalidRequest("checkpoint_path is empty")
    if "\x00" in requested:
        raise InvalidRequest("checkpoint_path contains a NUL byte")
    base = os.path.realpath(checkpoint_dir)
    real = os.path.realpath(os.path.join(base, requested))  # an absolute `requested` replaces base
    if real == base or not within(base, real):
        raise PathOutsideCheckpointDir(
            f"checkpoint_path {requested!r} resolves to {real}, which is not inside the "
            f"helper's checkpoint directory {base}; use a path inside {base} "
            "(relative paths are taken relative to it)",
            allowed_dir=base,
        )
    relative = os.path.relpath(real, base)
    if any(part.startswith(".") for part in Path(relative).parts):
        raise InvalidRequest(
            f"checkpoint_path {requested!r}: names starting with '.' are reserved for the helper"
        )
    return Path(real)


def relative_name(name: str, *, source: str, error: type[HelperError],
                  container_view: bool = False, outside: str = ROOTFS) -> str:
    """`name` from an archive or a list of files, as a relative path ("" for the root);
    refused with `error` when it is absolute or climbs out with `..`.

    `container_view`: the name is a path as the container sees it (`/data/x`, `..` stopping
    at its /), as in deleted.files."""
    if container_view:
        return os.path.normpath("/" + name).lstrip("/")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts:
        raise error(f"refusing path {name!r} from {source}: it leads outside {outside}")
    return "/".join(parts)


def client_path(checkpoint_dir: Path | str, namespace: str, requested: str) -> Path:
    """Where the checkpoint a client calls `requested` lives.

    The seed's clients choose a `checkpoint_path` such as /tmp/ckpt-1700000000 for a checkpoint
    and give the same path again to restore it. A path inside the helper's checkpoint directory
    is used as it is (confine); any other is a name, not a place: it maps to
    `<checkpoint dir>/.by-path/<sha256 of namespace and path>`, so a caller never writes or
    reads a host path, the same (namespace, path) finds the same checkpoint, and another
    namespace's identical path is another checkpoint."""
    if not requested or not requested.strip():
        raise InvalidRequest("checkpoint_path is empty", fields=["checkpoint_path"])
    if len(requested) > MAX_CLIENT_PATH:
        raise InvalidRequest(f"checkpoint_path is longer than {MAX_CLIENT_PATH} characters",
                             fields=["checkpoint_path"])
    if any(ord(c) < 32 or ord(c) == 127 for c in requested):
        raise InvalidRequest("checkpoint_path contains a NUL or control character",
                             fields=["checkpoint_path"])
    if ".." in requested.split("/"):
        raise InvalidRequest(f"checkpoint_path {requested!r} contains '..': name the "
                             "checkpoint with a plain path", fields=["checkpoint_path"])
    base = os.path.realpath(checkpoint_dir)
    inside = os.path.realpath(os.path.join(base, requested))
    if inside != base and within(base, inside):
        return confine(base, requested)
    key = f"{namespace}\0{os.path.normpath(requested)}".encode()
    return Path(base) / BY_PATH / hashlib.sha256(key).hexdigest()[:40]
