"""Confinement of client-supplied paths to the checkpoint directory."""
from __future__ import annotations

import os
from pathlib import Path

from sidecar.errors import InvalidRequest, PathOutsideCheckpointDir


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
    joined = os.path.join(base, requested)  # an absolute `requested` replaces base
    real = os.path.realpath(joined)
    if os.path.commonpath([base, real]) != base or real == base:
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
