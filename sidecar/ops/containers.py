"""The containers of this node, as the helper lists and addresses them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar.config import HelperConfig
from sidecar.node.discovery import list_containers, validate_root


def runc_root(config: HelperConfig, requested: str | None) -> Path:
    """The runc root a request names, else the helper's; it must be a directory here."""
    return validate_root(requested or config.runtime_root)


def list_namespace(config: HelperConfig, namespace: str, root: str | None) -> list[dict[str, Any]]:
    """The Kubernetes containers of one namespace under the runc root (GET /list)."""
    return [c.to_dict() for c in list_containers(runc_root(config, root), namespace)]
