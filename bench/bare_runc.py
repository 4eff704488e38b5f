"""(c) bare `runc checkpoint` / `runc restore` of memhog in an OCI bundle we make ourselves,
with the CRIU options the helper uses (sidecar/node/runc.py DumpOptions with leave_running,
manage-cgroups-mode soft, ext-unix-sk, file-locks; link-remap from /etc/criu/runc.conf)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

from bench.procs import BenchError, PipeWatcher, ReadyTiming, directory_size, run, timed_run, \
    until_ready

RUNC = "runc"  # runs the `criu` on its PATH (hack/install-deps.sh links the lab's first)
SLEEP_CMD = ["/bin/sh", "-c", "while true; do sleep 3600; done"]


def unpack_docker_archive(archive: Path, rootfs: Path) -> None:
    """The image's layers, in order, into rootfs (our lab images have no whiteouts)."""
    rootfs.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))  # type: ignore[arg-type]
        for layer in manifest[0]["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(layer)) as inner:
                inner.extractall(rootfs, filter="tar")


class BareRunc:
    name = "c"
    label = "bare runc"

    def __init__(self, work: Path, image_tar: Path, interval_ms: int) -> None:
        self.work = work / "runc"
        self.root = self.work / "state"
        self.bundle = self.work / "bundle"
        self.image_tar = image_tar
        self.interval_ms = interval_ms
        self.sources: dict[int, tuple[str, int]] = {}  # mib -> (container id, stdout fd)

    def runc(self, *args: str) -> list[str]:
        return [RUNC, "--root", str(self.root), *args]

    def setup(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.bundle / "rootfs" / "usr/local/bin/memhog").exists():
            shutil.rmtree(self.bundle, ignore_errors=True)
            unpack_docker_archive(self.image_tar, self.bundle / "rootfs")

    def _write_spec(self, bundle: Path, args: list[str]) -> None:
        bundle.mkdir(parents=True, exist_ok=True)
        (bundle / "config.json").unlink(missing_ok=True)
        run([RUNC, "spec", "--bundle", str(bundle)])
        spec = json.loads((bundle / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = args
        spec["root"] = {"path": str(self.bundle / "rootfs"), "readonly": False}
        (bundle / "config.json").write_text(json.dumps(spec, indent=1))

    def start_source(self, mib: int) -> None:
        cid = f"bench-src-{mib}-{uuid.uuid4().hex[:6]}"
        bundle = self.work / cid
        self._write_spec(bundle, ["/usr/local/bin/memhog", str(mib), str(self.interval_ms)])
        read_fd, write_fd = os.pipe()
        err_r, err_w = os.pipe()
        try:
            run_proc = subprocess.run(self.runc("run", "-d", "--bundle", str(bundle), cid),
                                      stdin=subprocess.DEVNULL, stdout=write_fd, stderr=err_w,
                                      timeout=120, check=False)
        finally:
            os.close(write_fd)
            os.close(err_w)
        if run_proc.returncode != 0:
            raise BenchError(f"runc run {cid} failed: {os.read(err_r, 65536).decode()}")
        watcher = PipeWatcher(read_fd).start()
        end = time.monotonic() + 120
        while not watcher():
            if time.monotonic() > end:
                raise BenchError(f"memhog {mib} MiB under runc never printed a heartbeat")
            time.sleep(0.05)
        self.sources[mib] = (cid, err_r)

    def checkpoint(self, mib: int, run_no: int) -> tuple[float, int, Path]:
        cid = self.sources[mib][0]
        images = self.work / f"ckpt-{mib}-{run_no}"
        shutil.rmtree(images, ignore_errors=True)
        images.mkdir(parents=True)
        ms, _ = timed_run(self.runc("checkpoint", "--image-path", str(images / "checkpoint"),
                                    "--work-path", str(images / "work"),
                                    "--manage-cgroups-mode", "soft", "--leave-running",
                                    "--ext-unix-sk", "--file-locks", cid))
        return ms, directory_size(images), images

    def restore(self, mib: int, images: Path) -> ReadyTiming:
        cid = f"bench-rst-{mib}-{uuid.uuid4().hex[:6]}"
        bundle = self.work / cid
        self._write_spec(bundle, SLEEP_CMD)  # ignored by a restore; runc wants a bundle
        read_fd, write_fd = os.pipe()
        err_r, err_w = os.pipe()
        watcher = PipeWatcher(read_fd).start()

        def action() -> subprocess.CompletedProcess[bytes]:
            try:
                return subprocess.run(
                    self.runc("restore", "-d", "--image-path", str(images / "checkpoint"),
                              "--work-path", str(images / "restore-work"), "--bundle",
                              str(bundle), "--manage-cgroups-mode", "soft", "--ext-unix-sk",
                              "--file-locks", cid),
                    stdin=subprocess.DEVNULL, stdout=write_fd, stderr=err_w, timeout=600,
                    check=True)
            finally:
                os.close(write_fd)
                os.close(err_w)

        try:
            timing = until_ready(action, watcher)
        except subprocess.CalledProcessError as exc:
            log = (images / "restore-work" / "restore.log")
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise BenchError(f"runc restore failed ({exc.returncode}): {tail}") from exc
        finally:
            self._stop(cid)
            os.close(err_r)
            shutil.rmtree(bundle, ignore_errors=True)
            shutil.rmtree(images, ignore_errors=True)
        return timing

    def _stop(self, cid: str) -> None:
        run(self.runc("kill", cid, "KILL"), check=False)
        run(self.runc("delete", "-f", cid), check=False)

    def stop_source(self, mib: int) -> None:
        cid, fd = self.sources.pop(mib)
        self._stop(cid)
        os.close(fd)
        shutil.rmtree(self.work / cid, ignore_errors=True)

    def teardown(self) -> None:
        for mib in list(self.sources):
            self.stop_source(mib)
        shutil.rmtree(self.work, ignore_errors=True)
