"""Restore a checkpoint into a sleeping (placeholder) container.

The placeholder's PID 1 keeps sleeping, so kubelet and the runtime see no change; the restored
tree lives beside it:

    python -m sidecar.node.enter_cgroups --pid P --        join every cgroup of P
      nsenter --target P --pid --                     enter P's PID namespace (forks)
        unshare --mount --propagation private --mount-proc --   private mounts, fresh /proc
          criu restore -D CKPT/checkpoint --root <P's rootfs> --restore-detached
               --manage-cgroups=ignore --inherit-fd fd[N]:extRootNetNS (N opened on P's netns)
               --inherit-fd fd[M]:pipe:[...] (M opened on P's own stdout/stderr)
               --ext-mount-map DEST:SOURCE (P's bind mounts, /dev/null, P's cgroup dirs) ...

CRIU gives the restored tree a nested PID namespace under P's; after it exits the restored
root is reparented to P.

restore() is the whole of POST /restore: a checkpoint this node lacks is pulled from the
registry first, and Kubernetes is told what happened.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from kubectl_cedana import podspec
from sidecar.config import HelperConfig
from sidecar.errors import (
    AlreadyRestored,
    CheckpointNotFound,
    ContainerNotRunning,
    Forbidden,
    HelperError,
    InvalidRequest,
    RestoreFailed,
    TargetIncompatible,
    TargetNotSleeping,
    TooManyRequests,
)
from sidecar.node import cgroups, criu, proctree, root_attach, tcp_hold, tool
from sidecar.node.discovery import RUNNING, RuncContainer, load_spec
from sidecar.node.locks import ContainerLocks
from sidecar.ops import events, lazy, peer, transfer
from sidecar.ops.access import READ_CHECKPOINT, Access
from sidecar.ops.catalogue import source_of
from sidecar.ops.checkpoint import DEFAULT_LOCKS, restore_is_live, utc_now
from sidecar.ops.containers import Containers, containers_of
from sidecar.ops.context import Helper
from sidecar.ops.limits import admit
from sidecar.storage import pod_volumes, rootfs_diff, signing, store
from sidecar.storage.catalogue import Catalogue, RestoredRegistry
from sidecar.storage.paths import client_path

log = logging.getLogger(__name__)

RESTORES_DIR = ".restores"
CGROUP_MOUNT_DEST = "/sys/fs/cgroup"
PIDFILE = "restore.pid"
GUARD_LOG = "lazy-guard.log"
LAZY_SOCKET = "lazy-pages.socket"  # where `criu lazy-pages` listens, in the work directory
#: how long the lazy-pages daemon may take to listen for the restore
LAZY_START_S = 30.0
#: the memory of a post-copy checkpoint, arriving
PagesSource = Callable[[store.CheckpointManifest], peer.PageStream]


@dataclass(frozen=True)
class RestoreResult:
    checkpoint_id: str
    pid: int  # the restored root process, as this helper (host PID namespace) sees it
    pid_in_container: int  # the same process in the placeholder's PID namespace
    container: RuncContainer
    duration_ms: int
    log_path: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "restored": True,
            "checkpoint_id": self.checkpoint_id,
            "pid": self.pid,
            "pid_in_container": self.pid_in_container,
            "container_id": self.container.container_id,
            "duration_ms": self.duration_ms,
        }


def resolve_checkpoint(config: HelperConfig, checkpoint_path: str | None,
                       checkpoint_id: str | None, namespace: str = "") -> Path:
    """The checkpoint directory a restore request names (by path, by id, or both agreeing)."""
    if not checkpoint_path and not checkpoint_id:
        raise InvalidRequest(
            "checkpoint_data needs checkpoint_path or checkpoint_id to name the checkpoint"
        )
    by_id = None
    if checkpoint_id:
        by_id = Path(Catalogue(config.checkpoint_dir).get(checkpoint_id)["path"])
    if checkpoint_path:
        directory = client_path(config.checkpoint_dir, namespace, checkpoint_path)
        if by_id is not None and os.path.realpath(by_id) != str(directory):
            raise InvalidRequest(
                f"checkpoint_path {checkpoint_path!r} and checkpoint_id {checkpoint_id} name "
                "different checkpoints; give only one"
            )
    elif by_id is not None:
        directory = by_id
    else:  # unreachable: one of the two is set
        raise InvalidRequest("no checkpoint named")
    if not directory.is_dir():
        raise CheckpointNotFound(f"no checkpoint at {directory}",
                                 checkpoint_path=str(directory))
    return directory


def is_bind(mount: dict[str, Any]) -> bool:
    options = mount.get("options") or []
    return mount.get("type") == "bind" or "bind" in options or "rbind" in options


def bind_mounts(spec: dict[str, Any]) -> list[tuple[str, str]]:
    """(destination, source) of every bind mount in an OCI spec."""
    return [(str(m["destination"]), str(m.get("source", "")))
            for m in spec.get("mounts") or [] if is_bind(m) and m.get("destination")]


def has_cgroup_mount(spec: dict[str, Any]) -> bool:
    return any(m.get("type") in ("cgroup", "cgroup2")
               and str(m.get("destination", "")).rstrip("/") == CGROUP_MOUNT_DEST
               for m in spec.get("mounts") or [])


#: files a runtime binds into its containers whatever the pod says, which another runtime's
#: container lacks: an empty file takes their place (CRI-O's and podman's marker that a program
#: runs in a container)
RUNTIME_MARKERS = ("/run/.containerenv",)


def missing_bind_mounts(dumped_spec: dict[str, Any], target_spec: dict[str, Any]) -> list[str]:
    """Bind mounts the dumped container had that the target lacks (CRIU cannot map them)."""
    present = {dest for dest, _ in bind_mounts(target_spec)}
    return sorted({dest for dest, _ in bind_mounts(dumped_spec)} - present
                  - set(RUNTIME_MARKERS))


def cgroup_mount_map(dirs: Sequence[cgroups.CgroupDir]) -> list[tuple[str, str]]:
    """Keys runc gives cgroup mounts at dump -> the target's own cgroup directories.

    cgroup v1: one key per hierarchy, /sys/fs/cgroup/<mountpoint basename>; pure cgroup v2:
    /sys/fs/cgroup itself.
    """
    mapping = []
    for cgroup in dirs:
        if cgroup.mount.version == 2 and cgroup.mount.mountpoint.rstrip("/") == CGROUP_MOUNT_DEST:
            key = CGROUP_MOUNT_DEST
        else:
            key = f"{CGROUP_MOUNT_DEST}/{cgroup.mount_name}"
        mapping.append((key, cgroup.directory))
    return mapping


def external_mount_map(dumped_spec: dict[str, Any], target_spec: dict[str, Any],
                       target_cgroups: Sequence[cgroups.CgroupDir],
                       empty_file: str = "/dev/null") -> list[tuple[str, str]]:
    """CRIU's --ext-mount-map: each key the dump recorded -> what stands for it in the target;
    `empty_file` for a runtime's marker file the target's runtime did not bind."""
    mapping = list(bind_mounts(target_spec))
    mapping += [(marker, empty_file) for marker in RUNTIME_MARKERS
                if marker in {d for d, _ in bind_mounts(dumped_spec)}]
    mapping.append(("/dev/null", "/dev/null"))  # runc dumps masked paths under this key
    # crun dumps each masked file under its own path
    masked = (dumped_spec.get("linux") or {}).get("maskedPaths") or []
    mapping += [(str(path), "/dev/null") for path in masked if isinstance(path, str) and path]
    if has_cgroup_mount(dumped_spec):
        mapping += cgroup_mount_map(target_cgroups)
    seen: set[str] = set()
    unique = []
    for key, value in mapping:
        if key not in seen:
            seen.add(key)
            unique.append((key, value))
    return unique


def _empty_file(work_dir: Path) -> Path:
    """An empty file of the restore's own, bound where a runtime's marker file was."""
    path = work_dir / "empty"
    path.touch(mode=0o644)
    return path


def pipe_inherits(descriptors: Sequence[str]) -> list[tuple[int, str]]:
    """(stdio index, CRIU key) for each pipe among the dumped init process's fds 0-2."""
    found = []
    seen = set()
    for index, entry in enumerate(descriptors[:3]):
        if entry.startswith("pipe:") and entry not in seen:
            seen.add(entry)
            found.append((index, entry))
    return found


def wrapper_args(target_pid: int, nsenter_path: str, unshare_path: str,
                 python: str = sys.executable, wait: Sequence[str] = (),
                 enter_cgroups: str = "",
                 target_cgroups: Sequence[cgroups.CgroupDir] = ()) -> list[str]:
    """The command prefix that puts CRIU into the target's cgroups and PID namespace; `wait`:
    enter_cgroups' --wait-for options. `enter_cgroups`: the C program (the helper's image),
    given `target_cgroups`, the cgroups the helper already read for the target (70 ms faster
    to start than the Python module, which is the fallback and reads them itself)."""
    if enter_cgroups:
        if not target_cgroups:
            raise RestoreFailed(f"no cgroups found for the placeholder's process {target_pid}")
        enter = [enter_cgroups,
                 *[arg for d in target_cgroups
                   for arg in ("--procs", os.path.join(d.directory, "cgroup.procs"))]]
    else:
        enter = [python, "-m", "sidecar.node.enter_cgroups", "--pid", str(target_pid)]
    return [
        *enter, *wait, "--",
        nsenter_path, "--target", str(target_pid), "--pid", "--",
        unshare_path, "--mount", "--propagation", "private", "--mount-proc", "--",
    ]


def restore_command(config: HelperConfig, target_pid: int, plan: criu.RestorePlan,
                    python: str = sys.executable, wait: Sequence[str] = (),
                    target_cgroups: Sequence[cgroups.CgroupDir] = ()) -> list[str]:
    return (wrapper_args(target_pid, config.nsenter_path, config.unshare_path, python, wait,
                         enter_cgroups=config.enter_cgroups_path,
                         target_cgroups=target_cgroups)
            + criu.restore_args(config.criu_path, plan))


def _read_descriptors(checkpoint: Path) -> list[str]:
    path = checkpoint / store.IMAGES_DIR / "descriptors.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise RestoreFailed(f"{path} is unreadable: {exc}") from exc
    return [str(d) for d in data] if isinstance(data, list) else []


def _open_target_fds(target_pid: int, inherits: Sequence[tuple[int, str]]
                     ) -> tuple[int, list[tuple[int, str]], list[int]]:
    """Open P's network namespace and P's own stdio for each pipe CRIU must reconnect."""
    opened: list[int] = []
    try:
        netns_fd = os.open(f"/proc/{target_pid}/ns/net", os.O_RDONLY)
        opened.append(netns_fd)
        fds = []
        for index, key in inherits:
            flags = os.O_RDONLY if index == 0 else os.O_WRONLY | os.O_APPEND
            fd = os.open(f"/proc/{target_pid}/fd/{index}", flags)
            opened.append(fd)
            fds.append((fd, key))
    except OSError as exc:
        for fd in opened:
            os.close(fd)
        raise TargetIncompatible(
            f"cannot open the namespace or stdio of the target's process {target_pid}: {exc}"
        ) from exc
    return netns_fd, fds, opened


def _check_target(target: RuncContainer, manifest: store.CheckpointManifest) -> None:
    if target.status != RUNNING:
        raise ContainerNotRunning(
            f"restore target {target.namespace}/{target.sandbox_name}/{target.container_name} "
            f"({target.container_id}) is {target.status}; it must be a running, sleeping "
            "container", container_id=target.container_id,
        )
    # a placeholder stopped with its connections held keeps its pause, sleeping again, for
    # this very restore (a live restore in it is refused below, as in any placeholder)
    if target.container_id == manifest.source.get("container_id") \
            and "held_connections" not in manifest.criu_options:
        raise TargetNotSleeping(
            f"container {target.container_id} is the checkpoint's own source and still runs; "
            "restore into a sleeping placeholder container instead",
            container_id=target.container_id,
        )
    if not os.path.isdir(target.rootfs):
        raise TargetIncompatible(f"the target's rootfs {target.rootfs} is not a directory")


#: called with a checkpoint's verified manifest before anything of it is used
Authorize = Callable[[store.CheckpointManifest], None]


def may_read_source(access: Access, source_namespace: str | None = None) -> Authorize:
    """The caller may read checkpoints of the namespace the *signed* manifest names (403
    otherwise): whatever a catalogue, a path or a registry says, memory moves only out of a
    namespace whose checkpoints the caller may read. `source_namespace`: the namespace the
    caller was allowed to read the checkpoint in (a cedana.io object's); the signed manifest
    must name the same."""
    def authorize(manifest: store.CheckpointManifest) -> None:
        taken_in = str(manifest.source.get("namespace") or "")
        if source_namespace is not None and taken_in != source_namespace:
            raise Forbidden(
                f"checkpoint {manifest.checkpoint_id} was taken in namespace {taken_in or '?'}, "
                f"not in {source_namespace}: name the namespace it was taken in (and have get "
                "on its checkpoints there)", namespace=source_namespace)
        access.require(taken_in, READ_CHECKPOINT, "the checkpoint's source pod")
    return authorize


def restore_into(config: HelperConfig, containers: Containers, namespace: str, sandbox: str,
                 container: str, checkpoint_path: str | None, checkpoint_id: str | None,
                 *, locks: ContainerLocks = DEFAULT_LOCKS,
                 authorize: Authorize | None = None,
                 pages: PagesSource | None = None) -> RestoreResult:
    """Restore into a sleeping container. `authorize` sees the checkpoint's manifest once its
    signature and files are verified, before anything is touched (may_read_source). `pages`:
    where a post-copy checkpoint's memory comes from (only its migration's restore has it)."""
    started = time.monotonic()
    checkpoint = resolve_checkpoint(config, checkpoint_path, checkpoint_id, namespace)
    target = containers.find(namespace, sandbox, container)
    # signature, then every file, before anything is touched
    manifest = store.verify(checkpoint, signing.helper_key(config))
    if authorize is not None:
        authorize(manifest)
    _check_target(target, manifest)
    registry = RestoredRegistry(config.checkpoint_dir, restore_is_live)
    with locks.hold(target.container_id, "restore"):
        previous = registry.live_restore(target.container_id)
        if previous is not None:
            raise AlreadyRestored(
                f"container {target.container_id} already holds process {previous['pid']} "
                f"restored from checkpoint {previous.get('checkpoint_id')}; use a new "
                "sleeping pod", container_id=target.container_id, pid=previous["pid"],
            )
        dumped_spec = store.read_json(checkpoint / "spec.dump")
        try:
            target_spec = load_spec(target)
        except (OSError, ValueError) as exc:
            raise TargetIncompatible(
                f"cannot read the target's spec in {target.bundle}: {exc}") from exc
        missing = missing_bind_mounts(dumped_spec, target_spec)
        if missing:
            raise TargetIncompatible(
                "the target container lacks mounts the checkpointed one had: "
                + ", ".join(missing) + "; create the sleeping pod with the same volumes",
                missing_mounts=missing,
            )
        vpid, host_pid, log_path = _run_restore(config, checkpoint, manifest, target,
                                                dumped_spec, target_spec, pages)
        restored_at = utc_now()
        # recorded before the lock is released, so a racing second restore sees it
        registry.record(target.container_id, {
            "pid": host_pid,
            "pid_in_container": vpid,
            "pid_start_time": proctree.start_time(host_pid) if host_pid else None,
            "checkpoint_id": manifest.checkpoint_id,
            "target_pid": target.pid,
            "restored_at": restored_at,
        })
        _release_held(manifest, target, containers)
    Catalogue(config.checkpoint_dir).record_restore(manifest.checkpoint_id, {
        "namespace": namespace, "pod": sandbox, "container": container,
        "container_id": target.container_id, "pid": host_pid, "restored_at": restored_at,
    })
    duration_ms = int((time.monotonic() - started) * 1000)
    return RestoreResult(manifest.checkpoint_id, host_pid or vpid, vpid, target, duration_ms,
                         log_path)


def _release_held(manifest: store.CheckpointManifest, target: RuncContainer,
                  containers: Containers) -> None:
    """The connections a checkpoint held for a restore into the same pod (node/tcp_hold.py)
    flow again once it is restored: taken over by the restored process in that pod; restored
    elsewhere (closed there), their peers in the source pod, if it still runs on this node, are
    told at their next packet (a reset) instead of waiting for their timeouts."""
    recorded = manifest.criu_options.get("held_connections") or []
    if not recorded:
        return
    source_sandbox = manifest.source.get("sandbox_id")
    holder = target
    if target.sandbox_id != source_sandbox:
        found = next((c for c in containers.list(str(manifest.source.get("namespace") or ""))
                      if c.sandbox_id == source_sandbox and c.alive and c.pid > 0), None)
        if found is None:
            return  # the source pod is gone, or on another node
        holder = found
    what = f"pod {holder.namespace}/{holder.sandbox_name}"
    try:
        held = [tcp_hold.Connection.from_dict(c) for c in recorded]
        tcp_hold.unlock(holder.pid, held, what)
    except (ValueError, KeyError, TypeError, tcp_hold.HoldError) as exc:
        # restored all the same: the peers time out instead of going on
        log.error("the held connections of %s stay held: %s", what, exc)


def _run_restore(config: HelperConfig, checkpoint: Path, manifest: store.CheckpointManifest,
                 target: RuncContainer, dumped_spec: dict[str, Any],
                 target_spec: dict[str, Any], pages: PagesSource | None = None
                 ) -> tuple[int, int | None, Path]:
    options = manifest.criu_options
    post_copy = bool(options.get("lazy_pages"))
    memory: peer.PageStream | None = None
    if post_copy:
        if pages is None:
            raise RestoreFailed(
                f"checkpoint {manifest.checkpoint_id} was taken for a post-copy migration: its "
                f"memory stayed on node {manifest.source.get('node')} and goes only to that "
                "migration's restore", checkpoint_id=manifest.checkpoint_id)
        memory = pages(manifest)  # before anything is touched: the memory is there
    try:
        # its root where CRIU and the rootfs diff can reach it (CRI-O's is not: root_attach)
        with root_attach.attached(target.pid, target.rootfs) as root:
            return _restore_with(config, checkpoint, manifest, replace(target, rootfs=root),
                                 dumped_spec, target_spec, memory)
    except BaseException as exc:
        if memory is not None:  # the serving helper lets its source go on
            memory.report(False, f"the restore failed: {exc}")
            lazy.forget(config, manifest.checkpoint_id)
        raise
    finally:
        if memory is not None:
            memory.close()


def _restore_with(config: HelperConfig, checkpoint: Path, manifest: store.CheckpointManifest,
                  target: RuncContainer, dumped_spec: dict[str, Any],
                  target_spec: dict[str, Any], memory: peer.PageStream | None
                  ) -> tuple[int, int | None, Path]:
    work_dir = config.checkpoint_dir / RESTORES_DIR / f"{target.container_id[:12]}-{uuid.uuid4()}"
    store.make_private_dirs(work_dir, config.checkpoint_dir)
    options = manifest.criu_options
    tcp = bool(options.get("tcp_established"))
    other_pod = target.sandbox_id != manifest.source.get("sandbox_id")
    inherits = pipe_inherits(_read_descriptors(checkpoint))
    try:
        target_cgroups = cgroups.process_cgroup_dirs(target.pid)
    except OSError as exc:
        raise ContainerNotRunning(
            f"the target's process {target.pid} is gone: {exc}",
            container_id=target.container_id) from exc
    # files first: the restored processes reopen the files they held
    rootfs_diff.apply_diff(checkpoint, Path(target.rootfs))
    pod_volumes.apply_volumes(checkpoint, target.pid)  # emptyDirs and /dev/shm
    netns_fd, stdio_fds, opened = _open_target_fds(target.pid, inherits)
    guard: subprocess.Popen[bytes] | None = None
    try:
        if memory is not None:
            guard = _start_lazy_pages(config, target, checkpoint, work_dir, memory,
                                      target_cgroups)
        plan = criu.RestorePlan(
            images_dir=checkpoint / store.IMAGES_DIR,
            root=target.rootfs,
            work_dir=work_dir,
            pidfile=work_dir / PIDFILE,
            netns_fd=netns_fd,
            inherit_fds=stdio_fds,
            ext_mounts=external_mount_map(dumped_spec, target_spec, target_cgroups,
                                          str(_empty_file(work_dir))),
            tcp_established=tcp,
            tcp_close=tcp and other_pod,
            file_locks=bool(options.get("file_locks", True)),
            ext_unix_sk=bool(options.get("ext_unix_sk", True)),
            link_remap=bool(options.get("link_remap", False)),
            lazy_pages=guard is not None,
            # dumped under another runtime (containerd <-> CRI-O): its root differs in modes
            skip_file_rwx_check=manifest.source.get("runtime") not in (None, "", target.runtime),
        )
        # a post-copy restore starts alongside its lazy-pages daemon and waits for its socket
        wait = ["--wait-for", str(work_dir / LAZY_SOCKET), "--wait-pid", str(guard.pid),
                "--wait-timeout", str(LAZY_START_S)] if guard is not None else []
        args = restore_command(config, target.pid, plan, wait=wait,
                               target_cgroups=target_cgroups)
        log.info("restoring %s into %s: %s", manifest.checkpoint_id, target.container_id, args,
                 extra={"checkpoint_id": manifest.checkpoint_id})
        outcome = tool.run(args, timeout=config.restore_timeout_s, pass_fds=plan.passed_fds,
                           cwd=work_dir)
    except BaseException:
        if guard is not None:  # no restore: its daemon has nothing to feed
            _stop_guard(guard)
        raise
    finally:
        for fd in opened:
            os.close(fd)
    log_path = work_dir / criu.RESTORE_LOG
    if not outcome.ok and guard is not None and memory is not None:
        _stop_guard(guard)
        memory.report(False, "the restore failed")
        if not (work_dir / LAZY_SOCKET).exists():
            cause = tool.first_criu_error(work_dir / criu.LAZY_LOG)
            raise RestoreFailed(
                "the lazy-pages daemon did not start: " + (f"CRIU: {cause}" if cause else
                                                           tool.log_tail(work_dir / GUARD_LOG, 5)),
                log_tail=tool.log_tail(work_dir / criu.LAZY_LOG))
    if not outcome.ok:
        cause = tool.first_criu_error(log_path)
        raise RestoreFailed(
            f"restore of checkpoint {manifest.checkpoint_id} into {target.container_id} "
            f"failed: {f'CRIU: {cause}' if cause else outcome.describe()}; the placeholder "
            "was left as it was",
            log_tail=tool.log_tail(log_path),
            stderr_tail=tool.last_lines(outcome.stderr, 10),
            log_path=str(log_path),
        )
    try:
        vpid = int((work_dir / PIDFILE).read_text(encoding="ascii").strip())
    except (OSError, ValueError) as exc:
        raise RestoreFailed(
            f"criu reported success but wrote no readable pidfile: {exc}",
            log_tail=tool.log_tail(log_path), log_path=str(log_path),
        ) from exc
    host_pid = proctree.host_pid_for(target.pid, vpid)
    if guard is not None and memory is not None:
        lazy.arriving(target.container_id, manifest.checkpoint_id)
        threading.Thread(target=_watch_guard, args=(config, guard, work_dir,
                                                    manifest.checkpoint_id, memory,
                                                    target.container_id),
                         daemon=True, name="lazy-guard").start()
    if host_pid is None:
        log.warning("restored pid %d (in %s's PID namespace) not found below pid %d",
                    vpid, target.container_id, target.pid)
    return vpid, host_pid, log_path


def _start_lazy_pages(config: HelperConfig, target: RuncContainer, checkpoint: Path,
                      work_dir: Path, memory: peer.PageStream,
                      target_cgroups: Sequence[cgroups.CgroupDir]) -> subprocess.Popen[bytes]:
    """The `criu lazy-pages` daemon of a post-copy restore, under its guard
    (cedana-lazy-guard, node/lazy_guard.c, in the helper's image; else node/lazy_guard.py),
    both in the placeholder's cgroups and pid namespace like the restore
    (so they outlive the helper); the restore waits for its socket (LAZY_SOCKET)."""
    fd = memory.daemon_end.fileno()
    args = [*wrapper_args(target.pid, config.nsenter_path, config.unshare_path,
                          enter_cgroups=config.enter_cgroups_path,
                          target_cgroups=target_cgroups),
            *([config.lazy_guard_path] if config.lazy_guard_path
              else [sys.executable, "-m", "sidecar.node.lazy_guard"]),
            "--pidfile", str(work_dir / PIDFILE), "--keep-fd", str(fd), "--",
            *criu.lazy_pages_args(config.criu_path, checkpoint / store.IMAGES_DIR, work_dir, fd)]
    log.info("starting the lazy-pages daemon: %s", args)
    try:
        with open(work_dir / GUARD_LOG, "wb") as out:
            return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                    pass_fds=(fd,), cwd=work_dir, start_new_session=True)
    except OSError as exc:
        raise RestoreFailed(f"the lazy-pages daemon could not be started: {exc}") from exc


def _stop_guard(guard: subprocess.Popen[bytes]) -> None:
    """The daemon and its guard (one session), when the restore did not happen."""
    try:
        os.killpg(guard.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    guard.wait()


def _watch_guard(config: HelperConfig, guard: subprocess.Popen[bytes], work_dir: Path,
                 checkpoint_id: str, memory: peer.PageStream, container_id: str) -> None:
    """Reaps the guard and says how the memory's transfer ended, to the log and to the helper
    that serves it (which lets its source go only when every page arrived); the copy of the
    checkpoint that came without its memory is of no further use."""
    code = guard.wait()
    lazy.arriving(container_id, None)
    try:
        if code == 0:
            memory.report(True)
            log.info("post-copy restore complete: every page arrived",
                     extra={"checkpoint_id": checkpoint_id})
            return
        memory.report(False, f"the lazy-pages daemon ended with status {code}: "
                             + (tool.first_criu_error(work_dir / criu.LAZY_LOG)
                                or "no CRIU error"))
    finally:
        lazy.forget(config, checkpoint_id)
    log.error("the memory of checkpoint %s stopped arriving (lazy-pages daemon status %s): the "
              "restored process was killed; %s", checkpoint_id, code,
              tool.first_criu_error(work_dir / criu.LAZY_LOG) or "no CRIU error",
              extra={"checkpoint_id": checkpoint_id})


def pages_from_peer(helper: Helper) -> PagesSource:
    """The memory of a post-copy checkpoint, from the helper of the node it was taken on (its
    signed manifest names it; its address comes from the API)."""
    def fetch(manifest: store.CheckpointManifest) -> peer.PageStream:
        node = str(manifest.source.get("node") or "")
        found = peer.peer_of(helper, node)
        what = f"the memory of checkpoint {manifest.checkpoint_id}"
        if found is None:
            raise RestoreFailed(f"{what} is on node {node}, whose helper cannot be reached",
                                checkpoint_id=manifest.checkpoint_id)
        try:
            return peer.open_pages(helper.config, *found, node, manifest.checkpoint_id)
        except HelperError as exc:
            raise RestoreFailed(f"{what} cannot be had from node {node}: {exc.message}",
                                checkpoint_id=manifest.checkpoint_id) from exc
    return fetch


def restore(helper: Helper, *, namespace: str, pod: str, container: str, root: str | None,
            checkpoint_path: str | None, checkpoint_id: str | None,
            access: Access, requested_by: str = "",
            source_namespace: str | None = None, post_copy: bool = False) -> dict[str, Any]:
    """The whole of POST /restore (and of a Restore object); its answer. `access`: the
    caller's, asked about the checkpoint's source namespace as its signed manifest names it;
    `source_namespace`: where the caller was allowed to read it, which that manifest must
    name (may_read_source). `post_copy`: a restore a migration made, which may take the memory
    of its post-copy checkpoint from the source node."""
    config = helper.config
    authorize = may_read_source(access, source_namespace)
    # one of at most so many operations at once (429 too_many_requests), until the answer
    with admit(helper, namespace, "restore"):
        try:
            pulled = None
            if checkpoint_id and not checkpoint_path:
                pulled = transfer.ensure_local(config, checkpoint_id, authorize=authorize,
                                               limits=helper.limits)
            result = restore_into(config, containers_of(helper, root), namespace, pod,
                                  container, checkpoint_path or None, checkpoint_id or None,
                                  locks=helper.locks, authorize=authorize,
                                  pages=pages_from_peer(helper) if post_copy else None)
        except HelperError as exc:
            events.restore_failed(helper.kube, namespace, pod, container,
                                  checkpoint_id or checkpoint_path or "?", exc, requested_by)
            raise
        events.restored(helper.kube, result, source_of(config, result.checkpoint_id),
                        requested_by)
        answer = result.to_dict()
        if pulled is not None:
            answer["pulled"] = pulled
        return answer


def program_of(config: HelperConfig, checkpoint_id: str) -> list[str] | None:
    """The program a checkpointed container ran (its OCI spec's process.args, which include the
    image's entrypoint): what its placeholder runs afresh when the kubelet restarts it. None
    when the checkpoint is not on this node or has no spec."""
    try:
        directory = Path(str(Catalogue(config.checkpoint_dir).get(checkpoint_id)["path"]))
        args = (store.read_json(directory / "spec.dump").get("process") or {}).get("args")
    except (CheckpointNotFound, OSError, ValueError, AttributeError):
        return None
    if not isinstance(args, list) or not args:
        return None
    # a checkpoint of a restored pod: its program, not the cedana-pause that ran it
    return podspec.unwrap_command([str(a) for a in args]) or None


def pod_members(manifest: store.CheckpointManifest) -> list[tuple[str, str]]:
    """(container, checkpoint id) of each member of the whole-pod checkpoint a (verified)
    manifest belongs to, in the order they are restored; [] for a one-container checkpoint."""
    group = manifest.source.get("pod_checkpoint") or {}
    members = group.get("containers") if isinstance(group, dict) else None
    return [(str(m["name"]), str(m["checkpoint_id"])) for m in members or []
            if isinstance(m, dict) and m.get("name") and m.get("checkpoint_id")]


#: how long a whole-pod restore waits for a place among the node's operations once its first
#: container is restored
MEMBER_ADMISSION_WAIT_S = 600.0


def restore_pod(helper: Helper, *, namespace: str, pod: str, members: Sequence[tuple[str, str]],
                access: Access, requested_by: str = "",
                source_namespace: str | None = None) -> dict[str, Any]:
    """Restore each member of a whole-pod checkpoint into the container of the same name of
    `pod` (native sidecars first, as the kubelet starts them). Each is verified, pulled if
    need be, and authorized like a one-container restore. A failure names the containers
    already restored; the others' placeholders are left as they were."""
    started = time.monotonic()
    answers: list[dict[str, Any]] = []
    for name, member_id in members:
        deadline = time.monotonic() + MEMBER_ADMISSION_WAIT_S
        try:
            while True:
                try:
                    answer = restore(helper, namespace=namespace, pod=pod, container=name,
                                     root=None, checkpoint_path=None, checkpoint_id=member_id,
                                     access=access, requested_by=requested_by,
                                     source_namespace=source_namespace)
                    break
                except TooManyRequests as exc:
                    # before the first, nothing is done: the caller retries the whole; after
                    # it, the rest waits for a place rather than leaving the pod half restored
                    if not answers or time.monotonic() > deadline:
                        raise
                    time.sleep(max(1.0, float(exc.extra.get("retry_after_s") or 1.0)))
        except HelperError as exc:
            if answers:
                exc.message += ("; already restored: "
                                + ", ".join(str(a["container"]) for a in answers))
            raise
        answers.append({"container": name, **answer})
    return {"restored": True, "checkpoint_id": members[0][1] if members else "",
            "pid": answers[0]["pid"] if answers else 0,
            "container_id": answers[0].get("container_id") if answers else "",
            "duration_ms": int((time.monotonic() - started) * 1000), "containers": answers}
