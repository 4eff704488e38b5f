"""runc, as used by the helper: its version and `runc checkpoint` (which drives CRIU)."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sidecar.errors import DumpFailed
from sidecar.node import tool

VERSION_TIMEOUT_S = 10.0
DUMP_LOG = "dump.log"  # the name runc gives CRIU's log in the work path


@dataclass(frozen=True)
class DumpOptions:
    """What the dump was told; recorded in the manifest so the restore can match it."""

    leave_running: bool
    tcp_established: bool
    ext_unix_sk: bool = True
    file_locks: bool = True
    # not runc flags: in effect only when runc's CRIU config file carries them
    link_remap: bool = False
    skip_in_flight: bool = False
    manage_cgroups_mode: str = "soft"  # runc 1.1.5 rejects "ignore"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def version(runc_path: str) -> str:
    result = tool.run([runc_path, "--version"], timeout=VERSION_TIMEOUT_S)
    if not result.ok:
        return "unavailable"
    match = re.search(r"runc version (\S+)", result.stdout)
    return match.group(1) if match else result.stdout.strip().splitlines()[0]


def checkpoint_args(runc_path: str, criu_path: str, root: str | Path, container_id: str,
                    image_path: Path, work_path: Path, options: DumpOptions) -> list[str]:
    args = [
        runc_path, "--root", str(root), "--criu", criu_path,
        "checkpoint",
        "--image-path", str(image_path),
        "--work-path", str(work_path),
        "--manage-cgroups-mode", options.manage_cgroups_mode,
    ]
    args += tool.flags(("--leave-running", options.leave_running),
                       ("--tcp-established", options.tcp_established),
                       ("--ext-unix-sk", options.ext_unix_sk), ("--file-locks", options.file_locks))
    return [*args, container_id]


def checkpoint(runc_path: str, criu_path: str, root: str | Path, container_id: str,
               image_path: Path, work_path: Path, options: DumpOptions,
               timeout: float, criu_guard: str = "") -> tool.ToolResult:
    """Dump the container's process tree; raises DumpFailed carrying CRIU's log tail.

    runc dies with the helper (pdeathsig); with `criu_guard` CRIU dies with runc too."""
    env = {tool.CRIU_GUARD_ENV: criu_path} if criu_guard else None
    args = checkpoint_args(runc_path, criu_guard or criu_path, root, container_id, image_path,
                           work_path, options)
    result = tool.run(args, timeout=timeout, die_with_helper=True, env=env)
    if not result.ok:
        raise DumpFailed(
            f"checkpoint of container {container_id} failed: {result.describe()}",
            log_tail=tool.log_tail(work_path / DUMP_LOG),
            stderr_tail=tool.last_lines(result.stderr, 10),
        )
    return result
