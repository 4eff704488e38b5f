"""kubectl cedana: checkpoint and restore Kubernetes containers with CRIU."""

from kubectl_cedana.version import __version__ as version

__all__ = ["version"]
