"""The cedana node helper: runs runc and CRIU against this node's containers."""
import sys

from kubectl_cedana.version import __version__ as version

#: the helper's oldest Python (the plugin's is setup.cfg's python_requires)
MIN_PYTHON = (3, 11)
if sys.version_info < MIN_PYTHON:
    raise SystemExit("cedana-helper needs python3 >= {}.{} (this is {}.{})".format(
        *MIN_PYTHON, *sys.version_info[:2]))

__all__ = ["version"]
