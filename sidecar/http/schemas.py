"""Request bodies of the REST contract (the seed's field names, kept exactly)."""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from kubectl_cedana.contract import COMPRESSIONS

NAME_MAX = 253
PATH_MAX = 4096
REF_MAX = 1024


def _known_compression(name: str) -> str:
    if name not in COMPRESSIONS:
        raise ValueError("input should be " + ", ".join(repr(c) for c in COMPRESSIONS))
    return name


Compression = Annotated[str, AfterValidator(_known_compression)]


class _Body(BaseModel):
    # clients written for the seed may send more than we read; ignore the rest
    model_config = ConfigDict(extra="ignore")


class ContainerBody(_Body):
    """The fields that name one container (the seed's names)."""

    container_name: str = Field(min_length=1, max_length=NAME_MAX)
    sandbox_name: str = Field(min_length=1, max_length=NAME_MAX)
    namespace: str = Field(min_length=1, max_length=NAME_MAX)
    root: str | None = Field(default=None, max_length=PATH_MAX)

    def target(self) -> dict[str, Any]:
        """The container as sidecar.ops names it (keyword arguments)."""
        return {"namespace": self.namespace, "pod": self.sandbox_name,
                "container": self.container_name, "root": self.root}


class CheckpointData(ContainerBody):
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
    compression: Compression | None = None
    # stop the container with its TCP connections held open for a restore into the same pod
    # (needs leave_running false)
    hold_connections: bool = False


class RestoreData(ContainerBody):
    checkpoint_path: str | None = Field(default=None, max_length=PATH_MAX)
    checkpoint_id: str | None = Field(default=None, max_length=NAME_MAX)


class RestoreRequest(_Body):
    checkpoint_data: RestoreData


class ListRequest(_Body):
    root: str | None = Field(default=None, max_length=PATH_MAX)


class RootfsCheckpointRequest(ContainerBody):
    """`/checkpoint/rootfs` (containerd): push the container's image plus its changed files."""

    address: str = Field(default="", max_length=PATH_MAX)
    image_ref: str = Field(min_length=1, max_length=REF_MAX)


class CrioRootfsCheckpointRequest(ContainerBody):
    """`/checkpoint/rootfs/crio`: `image_ref` is the original image, `new_image_ref` the push."""

    image_ref: str = Field(min_length=1, max_length=REF_MAX)
    new_image_ref: str = Field(min_length=1, max_length=REF_MAX)


class RootfsRestoreRequest(ContainerBody):
    address: str = Field(default="", max_length=PATH_MAX)
    image_ref: str = Field(min_length=1, max_length=REF_MAX)


class PruneRequest(_Body):
    """Retention now; the helper's configured limits when a field is absent (0: no limit)."""

    max_per_container: int | None = Field(default=None, ge=0, le=1_000_000)
    max_total_bytes: int | None = Field(default=None, ge=0)
    dry_run: bool = False
