"""Holding a container's TCP connections across a stop and a restore into the same pod.

A checkpoint that stops its container normally lets the kernel close the container's sockets:
the peers are told (FIN or RST) and reconnect. To keep them, three things are needed, all
in the pod's network namespace, which outlives the container:

- a *lock* from before the dump until the restore: every packet of the held connections is
  dropped both ways, so nothing is received (and acknowledged) that the checkpoint does not
  hold, and nothing the peers could take for a reset is sent (iptables rules per connection);
- the sockets in TCP repair mode when the processes are killed: a socket closed in repair mode
  leaves without a FIN or a RST and frees its address and ports at once, for the restored one;
- the restore into a container of the same pod (CRIU's --tcp-established puts the connections
  back with their sequence numbers and queues), after which the lock is released and the
  peers' retransmissions reach the restored process.

The connections come from the kernel (/proc/PID/net/tcp of the container's namespace and the
tree's own socket inodes), never from a caller.
"""
from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import proctree, tool

log = logging.getLogger(__name__)

TCP_REPAIR = 19  # linux/tcp.h
TCP_REPAIR_ON = 1
SYS_PIDFD_GETFD = 438  # the same number on every architecture since 5.6
RULES_TIMEOUT_S = 30.0
# /proc/net/tcp `st` values of sockets CRIU dumps without --tcp-established: LISTEN and CLOSE
TCP_UNCONNECTED_STATES = {"0A", "07"}


class HoldError(Exception):
    """A lock could not be set or lifted; the message says which and why."""


@dataclass(frozen=True)
class Connection:
    """One TCP connection as the container's end sees it."""

    family: int  # 4 or 6
    local: str
    local_port: int
    remote: str
    remote_port: int
    inode: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"family": self.family, "local": self.local, "local_port": self.local_port,
                "remote": self.remote, "remote_port": self.remote_port}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Connection:
        family = int(data["family"])
        local, remote = str(data["local"]), str(data["remote"])
        # recorded by a helper and signed with the checkpoint; checked anyway, as it becomes
        # an iptables argument
        for address in (local, remote):
            if ipaddress.ip_address(address).version != family:
                raise ValueError(f"{address} is not an IPv{family} address")
        ports = int(data["local_port"]), int(data["remote_port"])
        if not all(0 < port < 65536 for port in ports):
            raise ValueError(f"bad ports {ports}")
        return cls(family, local, ports[0], remote, ports[1])


def _address(hex_address: str) -> tuple[int, str, int]:
    """(family, address, port) of a /proc/net/tcp{,6} `address:port` field: the address in
    32-bit words, each in the kernel's (little-endian) byte order."""
    address, _, port = hex_address.partition(":")
    raw = b"".join(int(address[i:i + 8], 16).to_bytes(4, "little")
                   for i in range(0, len(address), 8))
    if len(raw) == 4:
        return 4, str(ipaddress.IPv4Address(raw)), int(port, 16)
    return 6, str(ipaddress.IPv6Address(raw)), int(port, 16)


def parse_tcp_table(text: str) -> list[Connection]:
    """The connected sockets (neither listening nor closed) of a /proc/net/tcp{,6} table."""
    found = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) <= 9 or fields[3] in TCP_UNCONNECTED_STATES:
            continue
        family, local, local_port = _address(fields[1])
        _, remote, remote_port = _address(fields[2])
        if family == 6 and ipaddress.IPv6Address(local).ipv4_mapped is not None:
            # an IPv6 socket talking IPv4: its packets are IPv4 ones
            family = 4
            local = str(ipaddress.IPv6Address(local).ipv4_mapped)
            remote = str(ipaddress.IPv6Address(remote).ipv4_mapped)
        found.append(Connection(family, local, local_port, remote, remote_port, fields[9]))
    return found


def connections(tree: Sequence[proctree.TreeProcess], proc: Path = Path("/proc")
                ) -> list[Connection]:
    """The connected TCP sockets (neither listening nor closed) the tree's processes hold, each
    once. Reads /proc/PID/net/tcp{,6} of the tree's root, which show its own network namespace
    (psutil's connection API reads the caller's)."""
    if not tree:
        return []
    held = proctree.socket_fds(tree, proc)
    return [c for name in ("tcp", "tcp6")
            for c in parse_tcp_table(_read(proc / str(tree[0].pid) / "net" / name))
            if c.inode in held]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except OSError:
        return ""


def rules(held: Iterable[Connection], family: int, *, insert: bool) -> str:
    """iptables-restore input that adds (or deletes) the drop rules of the connections of one
    family: what arrives from the peer, and what leaves for it."""
    verb = "-I" if insert else "-D"
    mask = "32" if family == 4 else "128"
    lines = ["*filter"]
    for c in held:
        if c.family != family:
            continue
        lines.append(f"{verb} INPUT -p tcp -s {c.remote}/{mask} --sport {c.remote_port} "
                     f"-d {c.local}/{mask} --dport {c.local_port} -j DROP")
        lines.append(f"{verb} OUTPUT -p tcp -s {c.local}/{mask} --sport {c.local_port} "
                     f"-d {c.remote}/{mask} --dport {c.remote_port} -j DROP")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def _restore_rules(pid: int, family: int, text: str) -> tool.ToolResult:
    program = "iptables-restore" if family == 4 else "ip6tables-restore"
    return tool.run(["nsenter", f"--net=/proc/{pid}/ns/net", "--", program, "-w", "--noflush"],
                    timeout=RULES_TIMEOUT_S, input_text=text)


def lock(pid: int, held: Sequence[Connection], what: str) -> None:
    """Drop every packet of the connections in the network namespace of process `pid`."""
    done: list[int] = []
    for family in sorted({c.family for c in held}):
        result = _restore_rules(pid, family, rules(held, family, insert=True))
        if not result.ok:
            for undo in done:
                _restore_rules(pid, undo, rules(held, undo, insert=False))
            raise HoldError(f"cannot hold the TCP connections of {what}: {result.describe()}")
        done.append(family)
    log.info("holding %d TCP connection(s) of %s", len(held), what)


def unlock(pid: int, held: Sequence[Connection], what: str) -> None:
    """Lift the lock `lock` set (rule by rule where the batch fails: one may be gone)."""
    failed = []
    for family in sorted({c.family for c in held}):
        if _restore_rules(pid, family, rules(held, family, insert=False)).ok:
            continue
        for c in held:
            if c.family == family and not _restore_rules(
                    pid, family, rules([c], family, insert=False)).ok:
                failed.append(f"{c.local}:{c.local_port}-{c.remote}:{c.remote_port}")
    if failed:
        raise HoldError(f"cannot release the held TCP connections {', '.join(failed)} of {what}")
    log.info("released %d held TCP connection(s) of %s", len(held), what)


def _pidfd_getfd(pidfd: int, fd: int) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    got = int(libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0))
    if got < 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))
    return got


def repair(tree: Sequence[proctree.TreeProcess], held: Sequence[Connection],
           proc: Path = Path("/proc")) -> int:
    """Put the held sockets into TCP repair mode (through a copy of a descriptor the tree holds
    on each), so that they close without telling the peer when the tree is killed. Call with
    the tree frozen. Returns how many were put in repair mode; raises OSError if one cannot."""
    wanted = {c.inode for c in held if c.inode}
    found = proctree.socket_fds(tree, proc)
    missing = sorted(wanted - set(found))
    if missing:
        raise OSError(f"sockets {missing} were not found in the tree")
    for inode in wanted:
        pid, fd = found[inode]
        pidfd = os.pidfd_open(pid)
        try:
            copy = socket.socket(fileno=_pidfd_getfd(pidfd, fd))
        finally:
            os.close(pidfd)
        try:
            copy.setsockopt(socket.IPPROTO_TCP, TCP_REPAIR, TCP_REPAIR_ON)
        finally:
            copy.close()  # the tree's descriptor keeps the socket
    return len(wanted)
