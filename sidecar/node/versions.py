"""The versions of the helper and the binaries it drives (asked once per binary path)."""
from __future__ import annotations

from functools import lru_cache

from sidecar import version
from sidecar.config import HelperConfig
from sidecar.node import criu, runc


@lru_cache(maxsize=8)
def _runc_version(path: str) -> str:
    return runc.version(path)


@lru_cache(maxsize=8)
def _criu_version(path: str) -> str:
    return criu.version(path)


def tool_versions(config: HelperConfig) -> dict[str, str]:
    return {
        "helper": version,
        "runc": _runc_version(config.runc_path),
        "criu": _criu_version(config.criu_path),
    }
