"""Request bodies of the REST contract (the seed's field names, kept exactly)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_MAX = 253
PATH_MAX = 4096
REF_MAX = 1024


class _Body(BaseModel):
    # clients written for the seed may send more than we read; ignore the rest
    model_config = ConfigDict(extra="ignore")


class ContainerRef(_Body):
    container_name: str = Field(min_length=1, max_length=NAME_MAX)
    sandbox_name: str = Field(min_length=1, max_length=NAME_MAX)
    namespace: str = Field(min_length=1, max_length=NAME_MAX)
    root: str | None = Field(default=None, max_length=PATH_MAX)


class CheckpointData(ContainerRef):
    checkpoint_path: str | None = Field(default=None, max_length=PATH_MAX)


class CheckpointRequest(_Body):
    checkpoint_data: CheckpointData
    leave_running: bool = False
    # the container's changed files (rootfs-diff.tar, deleted.files), taken in the same freeze
    # as the memory; without them a process holding a file it created cannot be restored
    with_rootfs: bool = True
    # where it goes: "remote" = the helper's checkpoint registry, "local" = this node; default:
    # remote when checkpoint_path is empty and the helper has a registry (the seed's rule)
    storage: Literal["local", "remote"] | None = None
    compression: Literal["none", "gzip", "lz4", "zstd"] | None = None


class RestoreData(ContainerRef):
    checkpoint_path: str | None = Field(default=None, max_length=PATH_MAX)
    checkpoint_id: str | None = Field(default=None, max_length=NAME_MAX)


class RestoreRequest(_Body):
    checkpoint_data: RestoreData


class ListRequest(_Body):
    root: str | None = Field(default=None, max_length=PATH_MAX)


class RootfsCheckpointRequest(ContainerRef):
    """`/checkpoint/rootfs` (containerd): push the container's image plus its changed files."""

    address: str = Field(default="", max_length=PATH_MAX)
    image_ref: str = Field(min_length=1, max_length=REF_MAX)


class CrioRootfsCheckpointRequest(ContainerRef):
    """`/checkpoint/rootfs/crio`: `image_ref` is the original image, `new_image_ref` the push."""

    image_ref: str = Field(min_length=1, max_length=REF_MAX)
    new_image_ref: str = Field(min_length=1, max_length=REF_MAX)


class RootfsRestoreRequest(ContainerRef):
    address: str = Field(default="", max_length=PATH_MAX)
    image_ref: str = Field(min_length=1, max_length=REF_MAX)


class PruneRequest(_Body):
    """Retention now; the helper's configured limits when a field is absent (0: no limit)."""

    max_per_container: int | None = Field(default=None, ge=0, le=1_000_000)
    max_total_bytes: int | None = Field(default=None, ge=0)
    dry_run: bool = False
