"""The cedana node helper: runs runc and CRIU against this node's containers."""

from kubectl_cedana.version import __version__ as version

__all__ = ["version"]
