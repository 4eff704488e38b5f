"""What the helper says about itself: versions and settings (GET /version), and the recovery
from a predecessor that died mid-dump (at start-up)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from sidecar.config import HelperConfig
from sidecar.errors import HelperError
from sidecar.node import freezer, proctree, versions
from sidecar.storage import signing, store


def version_info(config: HelperConfig) -> dict[str, Any]:
    return {**versions.tool_versions(config), "node": config.node_name,
            "checkpoint_repository": config.remote_repository,
            "compression": config.default_compression,
            "retention": {"max_checkpoints_per_container": config.max_checkpoints_per_container,
                          "max_total_bytes": config.max_total_bytes},
            # helpers that verify each other's checkpoints show the same key id
            "signing": _signing(config)}


def _signing(config: HelperConfig) -> dict[str, Any]:
    try:
        key = signing.helper_key(config)
    except HelperError as exc:
        return {"error": exc.message}
    return {"key_id": key.key_id, "shared": key.shared}


def recover(config: HelperConfig) -> None:
    """Clean up after a predecessor killed mid-dump: its runc/CRIU go first (they would write
    on, and put the freezer back as they found it), then what they froze is thawed, then their
    unfinished files go."""
    store.make_private_dirs(config.checkpoint_dir, Path("/"))
    proctree.stop_stragglers([config.runc_path, config.crun_path, config.criu_path],
                             config.checkpoint_dir)
    freezer.thaw_remembered(config.checkpoint_dir / freezer.JOURNAL_NAME)
    store.cleanup_temporaries(config.checkpoint_dir)
