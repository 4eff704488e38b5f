"""What every operation of one helper shares: its configuration, the per-container locks and
its connection to the Kubernetes API (None: no Events)."""
from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.config import HelperConfig
from sidecar.kube.api import KubeAPI
from sidecar.node.locks import ContainerLocks

__all__ = ["ContainerLocks", "Helper", "KubeAPI"]


@dataclass(frozen=True)
class Helper:
    config: HelperConfig
    kube: KubeAPI | None = None
    locks: ContainerLocks = field(default_factory=ContainerLocks)
