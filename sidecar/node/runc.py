"""runc, as used by the helper: its version and `runc checkpoint` (which drives CRIU)."""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sidecar.errors import DumpFailed
from sidecar.node import tool

VERSION_TIMEOUT_S = 10.0
DUMP_LOG = "dump.log"  # the name runc gives CRIU's log in the work path
CRIU_BIN_DIR = ".criu-bin"  # in the work path: holds `criu`, the program runc runs as CRIU


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
    manage_cgroups_mode: str = "soft"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def version(runc_path: str) -> str:
    result = tool.run([runc_path, "--version"], timeout=VERSION_TIMEOUT_S)
    if not result.ok:
        return "unavailable"
    match = re.search(r"runc version (\S+)", result.stdout)
    return match.group(1) if match else result.stdout.strip().splitlines()[0]


def checkpoint_args(runc_path: str, root: str | Path, container_id: str,
                    image_path: Path, work_path: Path, options: DumpOptions) -> list[str]:
    args = [
        runc_path, "--root", str(root),
        "checkpoint",
        "--image-path", str(image_path),
        "--work-path", str(work_path),
        "--manage-cgroups-mode", options.manage_cgroups_mode,
    ]
    args += tool.flags(("--leave-running", options.leave_running),
                       ("--tcp-established", options.tcp_established),
                       ("--ext-unix-sk", options.ext_unix_sk), ("--file-locks", options.file_locks))
    return [*args, container_id]


def criu_env(work_path: Path, criu_path: str, criu_guard: str = "") -> dict[str, str]:
    """The environment that makes runc run `criu_path` (through `criu_guard` when given).

    runc runs the `criu` it finds on PATH (runc 1.1's global --criu flag is gone since 1.2), so
    the dump's work path gets a directory whose `criu` links to the program to run, first on
    PATH. The guard is told the real CRIU by its absolute path, never by a name on that PATH."""
    real = shutil.which(criu_path) or criu_path
    bin_dir = work_path / CRIU_BIN_DIR
    bin_dir.mkdir(exist_ok=True)
    link = bin_dir / "criu"
    link.unlink(missing_ok=True)
    link.symlink_to(os.path.abspath(criu_guard) if criu_guard else os.path.abspath(real))
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"}
    if criu_guard:
        env[tool.CRIU_GUARD_ENV] = os.path.abspath(real)
    return env


def checkpoint(runc_path: str, criu_path: str, root: str | Path, container_id: str,
               image_path: Path, work_path: Path, options: DumpOptions,
               timeout: float, criu_guard: str = "") -> tool.ToolResult:
    """Dump the container's process tree; raises DumpFailed carrying CRIU's log tail.

    runc dies with the helper (pdeathsig); with `criu_guard` CRIU dies with runc too."""
    env = criu_env(work_path, criu_path, criu_guard)
    args = checkpoint_args(runc_path, root, container_id, image_path, work_path, options)
    result = tool.run(args, timeout=timeout, die_with_helper=True, env=env)
    if not result.ok:
        cause = tool.first_criu_error(work_path / DUMP_LOG)
        raise DumpFailed(
            f"checkpoint of container {container_id} failed: "
            + (f"CRIU: {cause}" if cause else result.describe()),
            log_tail=tool.log_tail(work_path / DUMP_LOG),
            stderr_tail=tool.last_lines(result.stderr, 10),
        )
    return result
