"""What every operation of one helper shares: its configuration, the per-container locks, its
connection to the Kubernetes API (None: no Events) and its limits' counters."""
from __future__ import annotations

from dataclasses import dataclass, field

from sidecar.config import HelperConfig
from sidecar.kube.api import KubeAPI
from sidecar.node.locks import ContainerLocks
from sidecar.ops.limits import Limits

__all__ = ["ContainerLocks", "Helper", "KubeAPI", "Limits"]


@dataclass(frozen=True)
class Helper:
    config: HelperConfig
    kube: KubeAPI | None = None
    locks: ContainerLocks = field(default_factory=ContainerLocks)
    # operations in flight and the checkpoint directory's space they hold (ops/limits.py)
    limits: Limits = field(default_factory=Limits)
