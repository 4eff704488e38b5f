"""Whether a pod's containers can be checkpointed, and why not, without checkpointing them
(a Checkpoint with spec.preflight; `kubectl cedana doctor POD`).

Each container is found as for a checkpoint (the Kubernetes API must agree it is the pod's)
and looked at from the node: nothing is frozen, dumped or written. The checks name what CRIU
cannot take, in CRIU's terms and with what to do about it."""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Any

from sidecar.errors import HelperError
from sidecar.node import proctree, unix_diag
from sidecar.node.discovery import RUNNING, RuncContainer, load_spec
from sidecar.ops.checkpoint import restored_root
from sidecar.ops.containers import containers_of
from sidecar.ops.context import Helper

#: filesystems CRIU dumps when a container mounted them itself (criu/filesystems.c); a bind
#: mount of the container's spec is external (the node's) and fine whatever its type
CRIU_FILESYSTEMS = frozenset({
    "proc", "sysfs", "devtmpfs", "binfmt_misc", "tmpfs", "devpts", "mqueue", "securityfs",
    "fusectl", "debugfs", "tracefs", "cgroup", "cgroup2", "overlay", "autofs", "pstore",
    "btrfs", "shm"})
#: device files of GPUs and accelerators: their state lives in the device, not in memory
GPU_DEVICES = re.compile(r"^/dev/(nvidia|nvhost|dri/|kfd$|accel/|neuron|vfio/)")
#: extended resources of GPUs (a pod asking for one gets the device)
GPU_RESOURCES = re.compile(r"(^|[./])(gpu|nvidia\.com|amd\.com|habana\.ai|neuron)", re.I)
#: unix socket types that are connections: one end cannot be checkpointed without the other
STREAM, SEQPACKET = 1, 5


@dataclass(frozen=True)
class Finding:
    container: str
    check: str  # running, io_uring, user_namespace, gpu, unix_socket, mount
    ok: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def preflight(helper: Helper, *, namespace: str, pod: str, containers: list[str],
              pod_object: dict[str, Any] | None = None) -> list[Finding]:
    """The findings for each of `containers` of the pod: one per check, ok or not."""
    found: list[Finding] = []
    located = containers_of(helper, None)
    for name in containers:
        try:
            target = located.find(namespace, pod, name)
        except HelperError as exc:
            found.append(Finding(name, "running", False, exc.message))
            continue
        if target.status != RUNNING:
            found.append(Finding(name, "running", False,
                                 f"the container is {target.status}; only a running container "
                                 "can be checkpointed"))
            continue
        root = restored_root(helper.config, target) or target.pid
        tree = proctree.process_tree(root)
        found.append(Finding(name, "running", True,
                             f"{len(tree)} process(es)"
                             + (", restored into this pod (dumped from the restored root)"
                                if root != target.pid else "")))
        found.append(_io_uring(name, tree))
        found.append(_user_namespace(name, target))
        try:
            spec = load_spec(target)  # read once for the device and mount checks
        except (OSError, ValueError):
            spec = {}
        found.append(_gpu(name, spec, pod_object))
        found.append(_unix_sockets(name, tree, helper.config.nsenter_path))
        found.append(_mounts(name, spec, root))
    return found


def _io_uring(name: str, tree: list[proctree.TreeProcess]) -> Finding:
    uring = proctree.find_io_uring(tree)
    if uring is None:
        return Finding(name, "io_uring", True, "no process holds an io_uring instance")
    return Finding(name, "io_uring", False,
                   f"process {uring.pid} ({uring.name}) holds an io_uring instance, which CRIU "
                   "cannot checkpoint; checkpoint before the program sets up io_uring, or run "
                   "it with io_uring off (many runtimes have a switch)")


def _user_namespace(name: str, target: RuncContainer) -> Finding:
    try:
        own = os.readlink(f"/proc/{target.pid}/ns/user")
        node = os.readlink("/proc/self/ns/user")
    except OSError as exc:
        return Finding(name, "user_namespace", False, f"cannot read its user namespace: {exc}")
    if own == node:
        return Finding(name, "user_namespace", True, "runs in the node's user namespace")
    return Finding(name, "user_namespace", False,
                   "runs in a user namespace of its own (hostUsers: false): CRIU cannot "
                   "restore its id-mapped mounts; checkpoint pods with hostUsers: true")


def _gpu(name: str, spec: dict[str, Any], pod: dict[str, Any] | None) -> Finding:
    paths = [str(d.get("path") or "") for d in (spec.get("linux") or {}).get("devices") or []]
    paths += [str(m.get("destination") or "") for m in spec.get("mounts") or []]
    devices = sorted({p for p in paths if GPU_DEVICES.match(p)})
    resources: set[str] = set()
    for container in ((pod or {}).get("spec") or {}).get("containers") or []:
        if container.get("name") == name:
            for kind in ("limits", "requests"):
                resources |= {r for r in (container.get("resources") or {}).get(kind) or {}
                              if GPU_RESOURCES.search(r)}
    if not devices and not resources:
        return Finding(name, "gpu", True, "no GPU or accelerator device")
    what = ", ".join([*devices, *sorted(resources)])
    return Finding(name, "gpu", False,
                   f"uses GPU or accelerator devices ({what}): their state lives in the device, "
                   "which CRIU does not checkpoint (that needs the vendor's CRIU plugin)")


def _unix_sockets(name: str, tree: list[proctree.TreeProcess], nsenter: str) -> Finding:
    # socket inode -> a pid of the tree holding it
    held = {int(inode): pid for inode, (pid, _fd) in proctree.socket_fds(tree).items()}
    if not held or not tree:
        return Finding(name, "unix_socket", True, "no unix socket connected outside")
    try:
        sockets = unix_diag.sockets_of(tree[0].pid, nsenter)
    except (OSError, ValueError) as exc:
        return Finding(name, "unix_socket", False, f"cannot list its unix sockets: {exc}")
    paths = {int(str(s["inode"])): str(s["path"]).rstrip("\0") for s in sockets}
    outside = []
    for socket_ in sockets:
        inode, peer = int(str(socket_["inode"])), int(str(socket_["peer"]))
        if inode in held and peer and peer not in held \
                and socket_["type"] in (STREAM, SEQPACKET):
            where = paths.get(peer) or paths.get(inode) or ""
            outside.append(f"process {held[inode]}'s socket {inode}"
                           + (f" ({where})" if where else ""))
    if not outside:
        return Finding(name, "unix_socket", True, "no unix socket connected outside")
    return Finding(name, "unix_socket", False,
                   f"{'; '.join(sorted(outside)[:5])}: connected to a process outside the "
                   "container (another container of the pod counts: each is dumped on its "
                   "own), and CRIU cannot checkpoint one end of a connection; close it first, "
                   "or have both ends in one container")


def _mounts(name: str, spec: dict[str, Any], root: int) -> Finding:
    external = {str(m.get("destination") or "").rstrip("/") or "/"
                for m in spec.get("mounts") or []}
    made = [m for m in proctree.mounts(root)
            if m.mount_point != "/" and m.mount_point not in external
            and m.fstype not in CRIU_FILESYSTEMS]
    if not made:
        return Finding(name, "mount", True, "every mount is the pod's or one CRIU dumps")
    listed = ", ".join(f"{m.mount_point} ({m.fstype})" for m in made[:5])
    return Finding(name, "mount", False,
                   f"mounted in the container itself: {listed}, of a type CRIU cannot dump; "
                   "mount it through a pod volume instead")
