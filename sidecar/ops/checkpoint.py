"""Checkpoint one Kubernetes container: find it, check it can be dumped, dump it with runc and
CRIU into the on-disk format of store.py, and record it in the catalogue (checkpoint_container);
then, as POST /checkpoint does, push it to the registry, tell Kubernetes and apply retention
(checkpoint)."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from kubectl_cedana.contract import member_checkpoint_id
from sidecar.config import HelperConfig
from sidecar.errors import (
    CheckpointExists,
    ContainerNotRunning,
    DumpFailed,
    HelperError,
    InvalidRequest,
    IoUringUnsupported,
    OperationInProgress,
)
from sidecar.node import criu, freezer, proctree, runc, tcp_hold, versions
from sidecar.node.discovery import RUNNING, RuncContainer, load_spec
from sidecar.node.locks import ContainerLocks
from sidecar.ops import events, retention, transfer
from sidecar.ops import lazy as lazy_dump
from sidecar.ops.containers import Containers, containers_of, recorded_pod
from sidecar.ops.context import Helper
from sidecar.ops.limits import Limits, admit, dump_estimate
from sidecar.storage import pod_volumes, rootfs_diff, signing, store
from sidecar.storage.catalogue import RESTORED_FILE, Catalogue, RestoredRegistry
from sidecar.storage.paths import client_path

log = logging.getLogger(__name__)

DEFAULT_LOCKS = ContainerLocks()


@dataclass(frozen=True)
class CheckpointResult:
    checkpoint_id: str
    checkpoint_path: Path
    size_bytes: int
    duration_ms: int
    options: dict[str, Any]
    container: RuncContainer

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_id": self.checkpoint_id,
            "checkpoint_path": str(self.checkpoint_path),
            "size_bytes": self.size_bytes,
            "duration_ms": self.duration_ms,
            "options": self.options,
            "container_id": self.container.container_id,
        }


#: tells a placeholder's cedana-pause that the end of its restored tree is not the program's
#: (sidecar/pause/cedana-pause.c)
PAUSE_HOLD_SIGNAL = signal.SIGUSR1


#: run with the container still frozen once its checkpoint is listed, before it is stopped
#: (without leave_running): (checkpoint id, directory) of each checkpoint listed
AfterListed = Callable[[list[tuple[str, Path]]], None]


class SourceKept(Exception):
    """The after_listed step failed: the checkpoint is listed, and the container was not
    stopped (thawed, it goes on). `cause` is the step's own error."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _after_listed(step: AfterListed | None, listed: list[tuple[str, Path]]) -> None:
    if step is None:
        return
    try:
        step(listed)
    except Exception as exc:  # the caller's step: its error, with the source kept
        raise SourceKept(exc) from exc


class _Stopper:
    """Stops a container after its dump, in place of CRIU: the processes are signalled while
    still frozen (kill) and die when thawed; wait then sees the init process gone.

    `hold`: the connections held for a restore into the same pod, put in repair mode before
    the kill so that they close without a word to the peers; with `keeper` (a placeholder's
    cedana-pause, and `pid` the root of the tree restored beneath it) only that tree dies, and
    the placeholder, told first, stays to take the restore."""

    EXIT_TIMEOUT_S = 30.0

    def __init__(self, pid: int, what: str, *, hold: list[tcp_hold.Connection] | None = None,
                 keeper: int | None = None) -> None:
        self.pid, self.what, self.hold, self.keeper = pid, what, hold, keeper
        try:  # the same process to the end, even if its PID is reused
            self.pidfd = os.pidfd_open(pid)
        except ProcessLookupError as exc:
            raise ContainerNotRunning(f"the init process {pid} of {what} has exited") from exc
        self.signalled = False

    def kill(self) -> None:
        # only reached with the checkpoint renamed into place and listed
        if self.hold:
            try:
                tcp_hold.repair(proctree.process_tree(self.pid), self.hold)
            except OSError as exc:  # the peers will see the connections end
                log.error("cannot put the held TCP connections of %s in repair mode: %s",
                          self.what, exc)
        if self.keeper is not None:
            # frozen: the pause handles it on the thaw, before it can see its child gone
            os.kill(self.keeper, PAUSE_HOLD_SIGNAL)
            # the root of a pid namespace: its death takes every process of the namespace
            os.kill(self.pid, signal.SIGKILL)
        else:
            freezer.kill_frozen(self.pid, self.what)
        self.signalled = True

    def wait(self) -> None:
        try:
            if self.signalled and not freezer.wait_gone(self.pidfd, self.EXIT_TIMEOUT_S):
                log.error("%s was signalled after its checkpoint but is still running",
                          self.what)
        finally:
            os.close(self.pidfd)


def volumes_of(target: RuncContainer) -> list[tuple[str, str]]:
    """(destination, host source) of the container's emptyDir volumes and /dev/shm, which go
    with its checkpoint (storage/pod_volumes.py). None for a process that shares the helper's
    own root: its /dev/shm is not a container's."""
    try:
        if os.path.samestat(os.stat(f"/proc/{target.pid}/root"), os.stat("/")):
            return []
        spec = load_spec(target)
    except (OSError, ValueError):
        return []
    return pod_volumes.carried(spec, proctree.tmpfs_mount_points(target.pid))


#: where the CRIU logs of failed dumps are kept (the checkpoint directory's own subdirectory),
#: and how many of them
FAILED_LOGS_DIR = ".failed-logs"
FAILED_LOGS_KEPT = 20


def keep_failed_log(config: HelperConfig, temp_dir: Path, checkpoint_id: str,
                    exc: BaseException) -> None:
    """Before a failed dump's directory goes: keep CRIU's log (the newest FAILED_LOGS_KEPT
    are kept) and name it in the error (`log_path`), so it stays reachable."""
    source = temp_dir / "work" / runc.DUMP_LOG
    if not isinstance(exc, HelperError) or not source.is_file():
        return
    logs = config.checkpoint_dir / FAILED_LOGS_DIR
    try:
        logs.mkdir(mode=store.DIR_MODE, exist_ok=True)
        kept = logs / f"{checkpoint_id}-dump.log"
        shutil.copyfile(source, kept)
        os.chmod(kept, 0o600)
        for old in sorted(logs.glob("*-dump.log"), key=lambda p: p.stat().st_mtime)[
                :-FAILED_LOGS_KEPT]:
            old.unlink(missing_ok=True)
    except OSError as error:  # a full disk, say: the error keeps the tail
        log.warning("cannot keep the failed dump's log %s: %s", source, error)
        return
    exc.extra.setdefault("log_path", str(kept))


def catalogue_entry(config: HelperConfig, manifest: store.CheckpointManifest, final_dir: Path,
                    size: int, options: dict[str, Any],
                    processes: list[proctree.TreeProcess], *, leave_running: bool,
                    with_rootfs: bool, **extra: Any) -> dict[str, Any]:
    """What the catalogue lists of a complete checkpoint (its container: the signed
    manifest's source)."""
    source = manifest.source
    return {
        "id": manifest.checkpoint_id,
        "path": str(final_dir),
        "namespace": source.get("namespace", ""),
        "pod": source.get("pod", ""),
        "container": source.get("container", ""),
        "container_id": source.get("container_id", ""),
        "image": source.get("image", ""),
        "node": config.node_name,
        "size_bytes": size,
        "created": manifest.created,
        "leave_running": leave_running,
        "status": "complete",
        "options": options,
        "with_rootfs": with_rootfs,
        "processes": [{"pid": p.pid, "name": p.name} for p in processes],
        "restores": [],
        **extra,
    }


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def destination(config: HelperConfig, checkpoint_path: str | None, checkpoint_id: str,
                namespace: str = "") -> Path:
    """Where the checkpoint will live: the client's path (paths.client_path), or
    <checkpoint-dir>/<id>."""
    if checkpoint_path:
        final = client_path(config.checkpoint_dir, namespace, checkpoint_path)
    else:
        final = config.checkpoint_dir / checkpoint_id
    if final.exists() and (not final.is_dir() or any(final.iterdir())):
        raise CheckpointExists(
            f"{final} already exists and is not an empty directory; choose a new "
            "checkpoint_path", checkpoint_path=str(final),
        )
    return final


def choose_options(config: HelperConfig, container: RuncContainer,
                   tree: list[proctree.TreeProcess], leave_running: bool) -> runc.DumpOptions:
    tcp = bool(tcp_hold.connections(tree))
    if criu.RUNC_CONFIG_ANNOTATION in container.annotations or container.engine == "crun":
        # runc hands CRIU the container's own config file instead of ours; crun none
        in_config: set[str] = set()
    else:
        try:
            in_config = criu.ensure_runc_config(config.criu_runc_config)
        except OSError as exc:
            # e.g. a read-only /etc in the helper image: dump without link-remap
            log.warning("cannot write %s (%s); dumping without link-remap",
                        config.criu_runc_config, exc)
            in_config = set()
    return runc.DumpOptions(
        leave_running=leave_running,
        tcp_established=tcp,
        ext_unix_sk=True,
        file_locks=True,
        link_remap="link-remap" in in_config,
        skip_in_flight=tcp and "skip-in-flight" in in_config,
    )


def config_dump(container: RuncContainer, checkpoint_id: str, checkpointed: str) -> dict[str, Any]:
    """config.dump in the shape checkpointctl and CRI-O read."""
    image_ref = container.annotations.get("io.kubernetes.cri-o.Image", "")
    return {
        "id": container.container_id,
        "name": container.container_name,
        "rootfsImage": container.image,
        "rootfsImageName": container.image,
        "rootfsImageRef": image_ref,
        "runtime": container.engine,  # runc or crun: the OCI runtime that ran it
        "createdTime": container.created,
        "checkpointedTime": checkpointed,
        "cedanaCheckpointId": checkpoint_id,
    }


def _collect_outputs(temp_dir: Path, work_dir: Path, images_dir: Path) -> None:
    dump_log = work_dir / runc.DUMP_LOG
    if dump_log.exists():
        shutil.move(str(dump_log), temp_dir / "dump.log")
    # CRIU writes its stats into the work dir when it has one, else into the images dir
    for candidate in (work_dir / "stats-dump", images_dir / "stats-dump"):
        if candidate.exists():
            shutil.copyfile(candidate, temp_dir / "stats-dump")
            break
    shutil.rmtree(work_dir, ignore_errors=True)


def checkpoint_container(config: HelperConfig, containers: Containers, namespace: str, sandbox: str,
                         container: str, checkpoint_path: str | None, leave_running: bool,
                         *, locks: ContainerLocks = DEFAULT_LOCKS,
                         with_rootfs: bool = True,
                         checkpoint_id: str | None = None,
                         limits: Limits | None = None,
                         hold_connections: bool = False,
                         after_listed: AfterListed | None = None,
                         lazy: bool = False) -> CheckpointResult:
    """Dump one container into the checkpoint directory and list it. `limits`: where the
    checkpoint directory's quota is reserved (the helper's, with what its other operations
    hold; None: only what the catalogue lists counts). `hold_connections` (with leave_running
    false): the container's TCP connections are held open for a restore into the same pod
    (node/tcp_hold.py); a failed checkpoint lets them go on. `after_listed` runs once the
    checkpoint is listed, the container still frozen: if it fails (SourceKept), the container
    is not stopped and goes on. `lazy` (post-copy, ops/lazy.py): the memory is not written
    but served under the checkpoint's id while `after_listed` runs, the container frozen until
    every page went (or the transfer failed: then it goes on)."""
    if lazy and (hold_connections or after_listed is None):
        raise InvalidRequest("a post-copy checkpoint is taken only by a migration, which "
                             "restores it while its memory follows")
    if hold_connections and leave_running:
        raise InvalidRequest("hold_connections stops the container: it needs leave_running "
                             "false")
    started = time.monotonic()
    target = containers.find(namespace, sandbox, container)
    checkpoint_id = checkpoint_id or str(uuid.uuid4())
    final_dir = destination(config, checkpoint_path, checkpoint_id, namespace)
    # the lock first: another operation of ours may have frozen the container for its dump,
    # which must read as "in progress", not as "not running"
    with locks.hold(target.container_id, "checkpoint"):
        target = containers.find(namespace, sandbox, container)
        _not_arriving(target)
        tree = processes = _runnable(target, namespace, sandbox, container)
        options = choose_options(config, target, tree, leave_running)
        what = f"container {namespace}/{sandbox}/{container}"
        if hold_connections and restored_root(config, target) is None:
            # its program is its init: stopped, the container ends (and is restarted)
            raise InvalidRequest(
                f"{what} runs its program as its own init, so the container would end with "
                "it: hold_connections needs a restored pod, whose pause process keeps it for "
                "the restore (restore --new-pod or migrate it first)")
        held = tcp_hold.connections(tree) if hold_connections else []
        # the quota before anything is frozen or written: about what the dump adds, held
        # until the checkpoint is listed (507 quota_exceeded otherwise)
        volumes = volumes_of(target)
        estimate = dump_estimate(tree, proctree.upper_dir(target.pid) if with_rootfs else None) \
            + pod_volumes.size_estimate(target.pid, [d for d, _ in volumes])
        with ExitStack() as until_stopped:
            until_stopped.enter_context((limits or Limits()).reserve(
                config, estimate, f"checkpoint of {namespace}/{sandbox}/{container}",
                container_id=target.container_id))
            store.make_private_dirs(final_dir.parent, Path("/"))
            temp_dir = final_dir.parent / f"{store.TEMP_PREFIX}{checkpoint_id}"
            temp_dir.mkdir(mode=store.DIR_MODE)
            if held:
                # from before the dump to the restore: nothing arrives that it does not hold
                try:
                    tcp_hold.lock(target.pid, held, what)
                except tcp_hold.HoldError as exc:
                    shutil.rmtree(temp_dir, ignore_errors=True)
                    raise DumpFailed(str(exc)) from exc
            # without leave_running the container is stopped only once its checkpoint is
            # complete and listed: until then it is frozen, and thawed (alive) whatever fails,
            # even the helper itself (the freezer journal)
            try:
                manifest, stopper = _dump(config, target, temp_dir, final_dir,
                                          checkpoint_id, options, with_rootfs, until_stopped,
                                          recorded_pod(containers.pods.get((namespace, sandbox))),
                                          volumes=volumes, hold=held if hold_connections else None,
                                          lazy=lazy)
            except BaseException as exc:
                keep_failed_log(config, temp_dir, checkpoint_id, exc)
                shutil.rmtree(temp_dir, ignore_errors=True)
                if held:  # the container goes on, and so do its connections
                    _unlock_quietly(target.pid, held, what)
                raise
            size = store.directory_size(final_dir)
            Catalogue(config.checkpoint_dir).add(catalogue_entry(
                config, manifest, final_dir, size, options.to_dict(), processes,
                leave_running=leave_running, with_rootfs=with_rootfs))
            duration_ms = int((time.monotonic() - started) * 1000)
            _after_listed(after_listed, [(checkpoint_id, final_dir)])
            if stopper is not None:
                stopper.kill()  # dies as it is thawed, on leaving the block
    log.info("checkpointed %s/%s/%s into %s", namespace, sandbox, container, final_dir,
             extra={"checkpoint_id": checkpoint_id})
    return CheckpointResult(checkpoint_id, final_dir, size, duration_ms, options.to_dict(), target)


def _no_freezer(what: str) -> DumpFailed:
    return DumpFailed(f"{what} has no freezer cgroup the helper can hold it in: post-copy "
                      "needs one to keep it frozen until its memory has gone (migrate it "
                      "stop-and-copy, --no-lazy)")


def _not_arriving(target: RuncContainer) -> None:
    """OperationInProgress while a post-copy restore still feeds the container its memory: a
    dump would read pages that are not there yet (and freeze the daemon that brings them)."""
    filling = lazy_dump.still_arriving(target.container_id)
    if filling:
        raise OperationInProgress(
            f"container {target.namespace}/{target.sandbox_name}/{target.container_name} is "
            f"still receiving the memory of checkpoint {filling} (post-copy): checkpoint it "
            "once all of it is there", container_id=target.container_id)


def _unlock_quietly(pid: int, held: list[tcp_hold.Connection], what: str) -> None:
    try:
        tcp_hold.unlock(pid, held, what)
    except tcp_hold.HoldError as exc:
        log.error("%s", exc)


def restore_is_live(record: dict[str, Any]) -> bool:
    """Whether the process tree a `.restored.json` record names still runs."""
    pid = int(record.get("pid") or 0)
    if pid <= 0:
        return False
    started = proctree.start_time(pid)
    if started is None:
        return False
    recorded = record.get("pid_start_time")
    # a different start time means the pid now belongs to an unrelated process
    return recorded is None or abs(float(recorded) - started) < 1.0


def restored_root(config: HelperConfig, target: RuncContainer) -> int | None:
    """The root of the process tree a restore put into this container (a placeholder), while
    it runs: what a checkpoint of the container dumps. None for a container whose init is its
    own program. The helper's record says which process; the kernel must agree: a child of
    the container's init, in a pid namespace of its own (nested in the container's)."""
    if not (config.checkpoint_dir / RESTORED_FILE).exists():
        return None  # no restore ever: nothing to lock or read
    record = RestoredRegistry(config.checkpoint_dir, restore_is_live).live_restore(
        target.container_id)
    pid = int((record or {}).get("pid") or 0)
    if pid <= 0:
        return None
    try:
        nested = (psutil.Process(pid).ppid() == target.pid
                  and os.readlink(f"/proc/{pid}/ns/pid") != os.readlink(
                      f"/proc/{target.pid}/ns/pid"))
    except (OSError, psutil.Error):
        return None
    return pid if nested else None


def _dump_restored_tree(config: HelperConfig, target: RuncContainer, pid: int,
                        images_dir: Path, work_dir: Path, options: runc.DumpOptions,
                        what: str) -> None:
    """Dump the tree a restore put into the placeholder `target` from its root, as runc
    dumps a container (_tree_plan)."""
    criu.dump(config.criu_path, _tree_plan(target, pid, images_dir, work_dir, options, what),
              timeout=config.dump_timeout_s, what=f"{what} (its restored process {pid})")


def _tree_plan(target: RuncContainer, pid: int, images_dir: Path, work_dir: Path,
               options: runc.DumpOptions, what: str) -> criu.DumpPlan:
    """`criu dump` of the tree rooted at `pid` in the container `target` (its init, or the
    root of what a restore put into it) with what runc would say of the container (its
    external mounts and network namespace, its freezer), and runc's descriptors.json of the
    root's stdio, so the checkpoint is like any other."""
    try:
        spec = load_spec(target)
        netns = os.stat(f"/proc/{pid}/ns/net").st_ino
        stdio = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in range(3)]
    except (OSError, ValueError) as exc:
        raise DumpFailed(f"cannot read {what}'s restored process {pid}: {exc}") from exc
    store.write_json(images_dir / "descriptors.json", stdio)
    return criu.DumpPlan(
        pid=pid, images_dir=images_dir, work_dir=work_dir, netns_inode=netns,
        ext_mounts=criu.external_dump_mounts(spec, proctree.mounts(pid)),
        freezer=freezer.cgroup_dir(target.pid), leave_running=options.leave_running,
        tcp_established=options.tcp_established, ext_unix_sk=options.ext_unix_sk,
        file_locks=options.file_locks, link_remap=options.link_remap,
        skip_in_flight=options.skip_in_flight, manage_cgroups_mode="ignore")


def _dump(config: HelperConfig, target: RuncContainer, temp_dir: Path,
          final_dir: Path, checkpoint_id: str, options: runc.DumpOptions, with_rootfs: bool,
          until_stopped: ExitStack, pod: dict[str, Any] | None = None,
          held: _Stopper | bool = False, pod_checkpoint: dict[str, Any] | None = None,
          volumes: list[tuple[str, str]] | None = None,
          hold: list[tcp_hold.Connection] | None = None, lazy: bool = False
          ) -> tuple[store.CheckpointManifest, _Stopper | None]:
    """Dump into temp_dir and rename it to final_dir. Without leave_running the container is
    left frozen until `until_stopped` is closed; the caller stops it with the _Stopper.
    `held`: the caller keeps the container frozen around this call (a whole-pod checkpoint);
    without leave_running, the _Stopper it made. `volumes`: the pod volumes to carry
    (None: all the container has). `hold`: the TCP connections held for a restore into the
    same pod (recorded in the manifest; the _Stopper closes them in repair mode). `lazy`:
    the memory is served (ops/lazy.py) until `until_stopped` is closed, the container frozen
    until then."""
    images_dir = temp_dir / store.IMAGES_DIR
    work_dir = temp_dir / "work"
    images_dir.mkdir(mode=store.DIR_MODE)
    work_dir.mkdir(mode=store.DIR_MODE)
    # read the spec before the dump: without leave_running the container is gone afterwards
    spec_source = Path(target.bundle) / "config.json"
    try:
        shutil.copyfile(spec_source, temp_dir / "spec.dump")
    except OSError as exc:
        raise DumpFailed(f"cannot read the container's spec {spec_source}: {exc}") from exc
    # found while the process lives: without leave_running it is gone after the dump
    upper = proctree.upper_dir(target.pid) if with_rootfs else None
    if volumes is None:
        volumes = volumes_of(target)
    destinations = [destination for destination, _source in volumes]
    what = f"container {target.namespace}/{target.sandbox_name}/{target.container_name}"
    journal = config.checkpoint_dir / freezer.JOURNAL_NAME
    stop = not options.leave_running
    dump_options = options
    stopper: _Stopper | None = None
    restored = restored_root(config, target)
    # the pages images are hashed while CRIU writes them, not after
    with store.FollowingHasher(images_dir) as pages_hasher:
        with ExitStack() as while_read:
            # freeze -> dump -> diff -> thaw: the files match the memory image (CRIU leaves a
            # cgroup it found frozen as it was, and runc accepts a paused container)
            if isinstance(held, _Stopper):  # frozen by the caller, stopped by it
                dump_options = replace(options, leave_running=True)
                stopper = held
            elif held:
                pass  # frozen by the caller until every container of the pod is dumped
            elif stop:
                # a placeholder whose connections are held keeps its pause for the restore
                found = _Stopper(restored, what, hold=hold, keeper=target.pid) \
                    if hold is not None and restored is not None \
                    else _Stopper(target.pid, what, hold=hold)
                until_stopped.callback(found.wait)  # after the thaw
                if until_stopped.enter_context(freezer.frozen(target.pid, what, journal)):
                    # CRIU leaves it alive (and frozen); stopped once its checkpoint is listed
                    dump_options = replace(options, leave_running=True)
                    stopper = found
                elif lazy:
                    raise _no_freezer(what)
            elif lazy:  # frozen while its memory goes, then it goes on
                if not until_stopped.enter_context(freezer.frozen(target.pid, what, journal)):
                    raise _no_freezer(what)
            elif upper is not None or destinations:
                while_read.enter_context(freezer.frozen(target.pid, what, journal))
            else:
                while_read.enter_context(freezer.remembered(target.pid, journal))
            if lazy:
                # after the freeze: ends before the thaw. CRIU always leaves the tree alive
                # (it would kill it on a closed connection, which it takes for success): the
                # helper stops it once the target said every page arrived
                plan = _tree_plan(target, restored or target.pid, images_dir,
                                  lazy_dump.work_dir_of(config.checkpoint_dir, checkpoint_id),
                                  replace(dump_options, leave_running=True), what)
                lazy_dump.start(config.criu_path, plan, checkpoint_id, config.dump_timeout_s,
                                what)
                until_stopped.callback(lazy_dump.SERVING.end, checkpoint_id)
            elif restored is None:
                # through the runtime that runs it (runc, or crun: the same command line)
                runc.checkpoint(config.runtime_path(target.engine), config.criu_path,
                                target.state_root, target.container_id,
                                images_dir, work_dir, dump_options,
                                timeout=config.dump_timeout_s, criu_guard=config.criu_guard)
            else:
                _dump_restored_tree(config, target, restored, images_dir, work_dir,
                                    dump_options, what)
            checkpointed = utc_now()
            # the container's changed files go with its memory, so open files exist on restore
            if upper is not None and upper.is_dir():
                rootfs_diff.write_diff(upper, temp_dir)
            # and its pod volumes (emptyDirs, /dev/shm)
            pod_volumes.write_volumes(target.pid, destinations, temp_dir)
        # thawed (unless it is to be stopped): the hashing of the last pages is not a pause
        pages_digests = pages_hasher.finish()
    try:
        _collect_outputs(temp_dir, work_dir, images_dir)
        store.write_json(temp_dir / "config.dump", config_dump(target, checkpoint_id, checkpointed))
        manifest = store.CheckpointManifest(
            checkpoint_id=checkpoint_id,
            created=checkpointed,
            source={
                "namespace": target.namespace,
                "pod": target.sandbox_name,
                "container": target.container_name,
                "container_id": target.container_id,
                "sandbox_id": target.sandbox_id,
                "node": config.node_name,
                "image": target.image,
                "runtime": target.runtime,
                **({"pod_object": pod} if pod else {}),
                **({"pod_checkpoint": pod_checkpoint} if pod_checkpoint else {}),
            },
            tools=versions.tool_versions(config),
            criu_options={**options.to_dict(), "with_rootfs": upper is not None,
                          "volumes": destinations,
                          **({"lazy_pages": True} if lazy else {}),
                          **({"held_connections": [c.to_dict() for c in hold]}
                             if hold is not None else {})},
        )
        return store.finalize(temp_dir, final_dir, manifest, known=pages_digests,
                              key=signing.helper_key(config)), stopper
    except OSError as exc:  # e.g. the disk is full: nothing is listed, the container lives
        raise DumpFailed(f"cannot complete the checkpoint in {temp_dir}: {exc}") from exc


def push_or_keep(config: HelperConfig, checkpoint_id: str, path: Path, compression: str | None,
                  kept: str, kept_id: str | None = None) -> transfer.RemoteCheckpoint:
    """Push a listed checkpoint to the registry; a failure says that `kept` stays on this node
    (and carries its id), for the caller to report."""
    try:
        return transfer.push(config, checkpoint_id, path,
                             compression or config.default_compression)
    except HelperError as exc:
        exc.extra.update(checkpoint_id=kept_id or checkpoint_id)
        exc.message += f" ({kept} is kept on this node)"
        raise


def checkpoint(helper: Helper, *, namespace: str, pod: str, container: str, root: str | None,
               checkpoint_path: str | None, leave_running: bool, with_rootfs: bool = True,
               storage: str | None = None, compression: str | None = None,
               checkpoint_id: str | None = None, requested_by: str = "",
               hold_connections: bool = False,
               after_listed: AfterListed | None = None, lazy: bool = False) -> dict[str, Any]:
    """The whole of POST /checkpoint; its answer. Where it goes is decided before anything is
    dumped; a failed push keeps the checkpoint on the node (the error says which)."""
    config = helper.config
    remote = transfer.wants_remote(config, storage, checkpoint_path)
    # one of at most so many operations at once (429 too_many_requests), until the answer
    with admit(helper, namespace, "checkpoint"):
        try:
            result = checkpoint_container(config, containers_of(helper, root), namespace, pod,
                                          container, checkpoint_path or None, leave_running,
                                          locks=helper.locks, with_rootfs=with_rootfs,
                                          checkpoint_id=checkpoint_id, limits=helper.limits,
                                          hold_connections=hold_connections,
                                          after_listed=after_listed, lazy=lazy)
        except HelperError as exc:
            events.checkpoint_failed(helper.kube, namespace, pod, container, exc, requested_by)
            raise
        answer = result.to_dict()
        pushed = None
        if remote:
            try:
                pushed = push_or_keep(config, result.checkpoint_id, result.checkpoint_path,
                                       compression, f"checkpoint {result.checkpoint_id}")
            except HelperError as exc:
                exc.extra.update(checkpoint_path=str(result.checkpoint_path))
                events.checkpoint_failed(helper.kube, namespace, pod, container, exc, requested_by)
                raise
            answer["remote"] = pushed.to_dict()
        answer["storage"] = "remote" if remote else "local"
        events.checkpointed(helper.kube, result, pushed, requested_by)
        removed = retention.apply_retention(config)
        if removed:
            answer["retention_removed"] = [r["id"] for r in removed]
        return answer


@dataclass(frozen=True)
class PodCheckpointResult:
    """A whole-pod checkpoint: one checkpoint per container, taken in one freeze."""

    checkpoint_id: str  # the pod checkpoint's id, which is also its first member's
    members: list[CheckpointResult]
    duration_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkpoint_id": self.checkpoint_id,
            "size_bytes": sum(m.size_bytes for m in self.members),
            "duration_ms": self.duration_ms,
            "containers": [{"name": m.container.container_name, **m.to_dict()}
                           for m in self.members],
        }


def _runnable(target: RuncContainer, namespace: str, sandbox: str, container: str
              ) -> list[proctree.TreeProcess]:
    """The container's process tree, once it is known to run and to be dumpable."""
    if target.status != RUNNING:
        raise ContainerNotRunning(
            f"container {namespace}/{sandbox}/{container} ({target.container_id}) is "
            f"{target.status}; only a running container can be checkpointed",
            container_id=target.container_id,
        )
    tree = proctree.process_tree(target.pid)
    if not tree:
        raise ContainerNotRunning(
            f"the init process {target.pid} of container {target.container_id} has exited",
            container_id=target.container_id,
        )
    uring = proctree.find_io_uring(tree)
    if uring is not None:
        raise IoUringUnsupported(
            f"process {uring.pid} ({uring.name}) in container {namespace}/{sandbox}/"
            f"{container} holds an io_uring instance, which CRIU cannot checkpoint; "
            "checkpoint before the program sets up io_uring",
            pid=uring.pid, process_name=uring.name,
        )
    return tree


def checkpoint_pod_containers(config: HelperConfig, containers: Containers, namespace: str,
                              sandbox: str, names: list[str], leave_running: bool, *,
                              locks: ContainerLocks = DEFAULT_LOCKS, with_rootfs: bool = True,
                              checkpoint_id: str | None = None,
                              limits: Limits | None = None,
                              after_listed: AfterListed | None = None) -> PodCheckpointResult:
    """Dump every container `names` lists (a pod's native sidecars and containers) in one
    freeze: all are frozen before the first dump and thawed after the last, so the checkpoint
    is one moment of the whole pod. Each container gets a checkpoint of its own (ids:
    contract.member_checkpoint_id), listed only when all are complete; a failure removes the
    ones already written and leaves every container running."""
    started = time.monotonic()
    if not names:
        raise DumpFailed(f"pod {namespace}/{sandbox} has no containers to checkpoint")
    pod_id = checkpoint_id or str(uuid.uuid4())
    ids = [member_checkpoint_id(pod_id, i, name) for i, name in enumerate(names)]
    finals = [destination(config, None, cid, namespace) for cid in ids]
    group = {"id": pod_id, "containers": [{"name": name, "checkpoint_id": cid}
                                          for name, cid in zip(names, ids)]}
    with ExitStack() as held_locks:
        for name in names:
            found = containers.find(namespace, sandbox, name)
            held_locks.enter_context(locks.hold(found.container_id, "checkpoint"))
        targets = [containers.find(namespace, sandbox, name) for name in names]
        for t in targets:
            _not_arriving(t)
        trees = [_runnable(t, namespace, sandbox, name) for t, name in zip(targets, names)]
        options = [choose_options(config, t, tree, leave_running)
                   for t, tree in zip(targets, trees)]
        # a volume several containers share (the pod's /dev/shm) goes with the first of them
        carried: set[str] = set()
        volumes = []
        for t in targets:
            mine = [(d, src) for d, src in volumes_of(t) if src not in carried]
            carried.update(src for _d, src in mine)
            volumes.append(mine)
        estimate = sum(dump_estimate(tree, proctree.upper_dir(t.pid) if with_rootfs else None)
                       + pod_volumes.size_estimate(t.pid, [d for d, _ in mine])
                       for t, tree, mine in zip(targets, trees, volumes))
        pod_record = recorded_pod(containers.pods.get((namespace, sandbox)))
        journal = config.checkpoint_dir / freezer.JOURNAL_NAME
        with ExitStack() as until_stopped:
            until_stopped.enter_context((limits or Limits()).reserve(
                config, estimate, f"checkpoint of pod {namespace}/{sandbox}",
                container_id=targets[0].container_id))
            store.make_private_dirs(config.checkpoint_dir, Path("/"))
            stoppers: list[_Stopper] = []
            if not leave_running:  # waited for after the thaw (callbacks run last-in first)
                for t in targets:
                    stopper = _Stopper(t.pid, f"container {namespace}/{sandbox}/"
                                               f"{t.container_name}")
                    until_stopped.callback(stopper.wait)
                    stoppers.append(stopper)
            # the one freeze: every container, before the first dump, until the last is done
            for t in targets:
                what = f"container {namespace}/{sandbox}/{t.container_name}"
                if not until_stopped.enter_context(freezer.frozen(t.pid, what, journal)):
                    raise DumpFailed(f"{what} has no freezer cgroup: a whole pod is "
                                     "checkpointed in one freeze, which needs one; name one "
                                     "container instead")
            written: list[Path] = []
            manifests: list[store.CheckpointManifest] = []
            try:
                for index, target in enumerate(targets):
                    temp_dir = config.checkpoint_dir / f"{store.TEMP_PREFIX}{ids[index]}"
                    temp_dir.mkdir(mode=store.DIR_MODE)
                    try:
                        manifest, _ = _dump(
                            config, target, temp_dir, finals[index],
                            ids[index], options[index], with_rootfs, until_stopped, pod_record,
                            held=stoppers[index] if stoppers else True, pod_checkpoint=group,
                            volumes=volumes[index])
                    except BaseException as exc:
                        keep_failed_log(config, temp_dir, ids[index], exc)
                        shutil.rmtree(temp_dir, ignore_errors=True)
                        raise
                    written.append(finals[index])
                    manifests.append(manifest)
            except BaseException:
                for directory in written:  # never visible as complete: nothing was listed
                    shutil.rmtree(directory, ignore_errors=True)
                raise
            results = []
            entries = []
            for target, tree, option, manifest, final_dir in zip(targets, trees, options,
                                                                  manifests, finals):
                size = store.directory_size(final_dir)
                entries.append(catalogue_entry(
                    config, manifest, final_dir, size, option.to_dict(), tree,
                    leave_running=leave_running, with_rootfs=with_rootfs, pod_checkpoint=pod_id))
                results.append(CheckpointResult(manifest.checkpoint_id, final_dir, size, 0,
                                                option.to_dict(), target))
            Catalogue(config.checkpoint_dir).add_all(entries)  # all members, or none
            duration_ms = int((time.monotonic() - started) * 1000)
            _after_listed(after_listed, [(r.checkpoint_id, r.checkpoint_path) for r in results])
            for stopper in stoppers:
                stopper.kill()  # each dies as it is thawed, on leaving the block
    results = [replace(r, duration_ms=duration_ms) for r in results]
    log.info("checkpointed pod %s/%s (%s) in one freeze", namespace, sandbox, ", ".join(names),
             extra={"checkpoint_id": pod_id})
    return PodCheckpointResult(pod_id, results, duration_ms)


def checkpoint_pod(helper: Helper, *, namespace: str, pod: str, containers: list[str],
                   leave_running: bool, with_rootfs: bool = True, storage: str | None = None,
                   compression: str | None = None, checkpoint_id: str | None = None,
                   requested_by: str = "",
                   after_listed: AfterListed | None = None) -> dict[str, Any]:
    """A whole-pod checkpoint (a Checkpoint or Migration without a container); its answer, in
    the shape of checkpoint()'s with the members under "containers"."""
    config = helper.config
    remote = transfer.wants_remote(config, storage, None)
    what = "every container (" + ", ".join(containers) + ")"
    with admit(helper, namespace, "checkpoint"):
        try:
            result = checkpoint_pod_containers(
                config, containers_of(helper, None), namespace, pod, containers, leave_running,
                locks=helper.locks, with_rootfs=with_rootfs, checkpoint_id=checkpoint_id,
                limits=helper.limits, after_listed=after_listed)
        except HelperError as exc:
            events.checkpoint_failed(helper.kube, namespace, pod, what, exc, requested_by)
            raise
        answer = result.to_dict()
        pushed_refs: list[str] = []
        for member, row in zip(result.members, answer["containers"]):
            pushed = None
            if remote:
                try:
                    pushed = push_or_keep(config, member.checkpoint_id, member.checkpoint_path,
                                           compression, f"pod checkpoint {result.checkpoint_id}",
                                           kept_id=result.checkpoint_id)
                except HelperError as exc:
                    events.checkpoint_failed(helper.kube, namespace, pod, what, exc,
                                             requested_by)
                    raise
                row["remote"] = pushed.to_dict()
                pushed_refs.append(pushed.reference)
            events.checkpointed(helper.kube, member, pushed, requested_by)
        answer["storage"] = "remote" if remote else "local"
        if pushed_refs:
            answer["remote"] = {"reference": pushed_refs[0],
                                "compression": answer["containers"][0]["remote"]["compression"]}
        return answer
