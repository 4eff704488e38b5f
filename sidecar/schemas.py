"""Request bodies of the REST contract (the seed's field names, kept exactly)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

NAME_MAX = 253
PATH_MAX = 4096


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


class RestoreData(ContainerRef):
    checkpoint_path: str | None = Field(default=None, max_length=PATH_MAX)
    checkpoint_id: str | None = Field(default=None, max_length=NAME_MAX)


class RestoreRequest(_Body):
    checkpoint_data: RestoreData


class ListRequest(_Body):
    root: str | None = Field(default=None, max_length=PATH_MAX)
