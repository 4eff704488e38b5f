"""(d) Debian's podman: `container checkpoint --export` and `container restore --import`, with
runc (`--runtime runc`, which finds our CRIU on PATH) and no network."""
from __future__ import annotations

import shutil
import tarfile
import uuid
from pathlib import Path

from bench.procs import FileProbe, last_beat, ReadyTiming, run, timed_run, until_ready, wait_for

PODMAN = "podman"
STORAGE = Path("/var/lib/containers/storage/overlay-containers")
# these VMs lack CAP_SYS_RESOURCE: podman's default rlimits (nofile/nproc raised to 1048576)
# make runc fail with "error setting rlimits ... operation not permitted", so ask for less
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]


class Podman:
    name = "d"
    label = "podman"

    def __init__(self, work: Path, image_tar: Path, image: str, interval_ms: int) -> None:
        self.work = work / "podman"
        self.image_tar = image_tar
        self.image = image
        self.interval_ms = interval_ms
        self.sources: dict[int, str] = {}
        self.version = ""

    def setup(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.version = run([PODMAN, "--version"]).stdout.strip()
        if run([PODMAN, "image", "exists", self.image], check=False).returncode != 0:
            run([PODMAN, "load", "-i", str(self.image_tar)])

    def _log(self, name: str) -> Path:
        out = run([PODMAN, "inspect", name, "--format", "{{.HostConfig.LogConfig.Path}}"])
        return Path(out.stdout.strip())

    def start_source(self, mib: int) -> None:
        name = f"bench-src-{mib}-{uuid.uuid4().hex[:6]}"
        run([PODMAN, "run", "-d", "--name", name, "--runtime", "runc", "--network", "none",
             *LIMITS, self.image, "/usr/local/bin/memhog", str(mib), str(self.interval_ms)])
        self.sources[mib] = name
        log = self._log(name)
        wait_for(f"podman memhog {mib} MiB heartbeat", FileProbe(lambda: log), timeout=120)

    def checkpoint(self, mib: int, run_no: int) -> tuple[float, int, Path]:
        export = self.work / f"ckpt-{mib}-{run_no}.tar"
        export.unlink(missing_ok=True)
        # --compress none: the same work as the helper, which does not compress (podman's
        # default, zstd, would only make podman slower here)
        ms, _ = timed_run([PODMAN, "container", "checkpoint", "--leave-running", "--export",
                           str(export), "--compress", "none", self.sources[mib]])
        return ms, export.stat().st_size, export

    def restore(self, mib: int, export: Path) -> ReadyTiming:
        name = f"bench-rst-{mib}-{uuid.uuid4().hex[:6]}"
        before = {p.name for p in STORAGE.iterdir()} if STORAGE.is_dir() else set()

        def new_log() -> Path | None:
            # the restored container's log is in its own, new storage directory
            for entry in STORAGE.iterdir():
                if entry.name not in before:
                    log = entry / "userdata" / "ctr.log"
                    if log.exists():
                        return log
            return None

        with tarfile.open(export) as tar:  # the old log that the import brings along
            member = tar.extractfile("ctr.log") if "ctr.log" in tar.getnames() else None
            old_beat = last_beat(member.read()) if member else -1
        try:
            return until_ready(lambda: run([PODMAN, "container", "restore", "--import",
                                            str(export), "--name", name]),
                               FileProbe(new_log, after_beat=old_beat))
        finally:
            run([PODMAN, "rm", "-f", "-t", "0", name], check=False)
            export.unlink(missing_ok=True)

    def stop_source(self, mib: int) -> None:
        name = self.sources.pop(mib)
        run([PODMAN, "rm", "-f", "-t", "0", name], check=False)

    def teardown(self) -> None:
        for mib in list(self.sources):
            self.stop_source(mib)
        shutil.rmtree(self.work, ignore_errors=True)
