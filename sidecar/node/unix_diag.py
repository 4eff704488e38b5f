"""Unix sockets and their peers, from the kernel's sock_diag (what `ss -x` shows).

/proc/net/unix lists a network namespace's unix sockets but not who each is connected to; the
peer's inode comes from a NETLINK_SOCK_DIAG dump with UDIAG_SHOW_PEER. Sockets belong to a
network namespace, so the dump runs inside the pod's (`python -m sidecar.node.unix_diag`
started through nsenter, printing JSON), never by moving a helper thread there."""
from __future__ import annotations

import json
import socket
import struct
import sys
from collections.abc import Iterator

from sidecar.node import tool

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_DONE, NLMSG_ERROR = 3, 2
UDIAG_SHOW_NAME, UDIAG_SHOW_PEER = 0x1, 0x4
UNIX_DIAG_NAME, UNIX_DIAG_PEER = 0, 2
DIAG_TIMEOUT_S = 10.0

#: unix_diag_msg: family, type, state, pad, inode, cookie[2]
_MSG = struct.Struct("=BBBBIII")
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: len, type, flags, seq, pid
_ATTR = struct.Struct("=HH")  # rtattr: len, type


def _request() -> bytes:
    body = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0,
                       UDIAG_SHOW_NAME | UDIAG_SHOW_PEER, 0xFFFFFFFF, 0xFFFFFFFF)
    return _HEADER.pack(_HEADER.size + len(body), SOCK_DIAG_BY_FAMILY,
                        NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + body


def parse(messages: bytes) -> Iterator[dict[str, object]]:
    """The sockets in a dump's messages: inode, type (1 stream, 2 dgram, 5 seqpacket), state
    (1 established, 10 listening, ...), peer inode (0: none), bound path ("" none, "@..."
    abstract)."""
    offset = 0
    while offset + _HEADER.size <= len(messages):
        length, kind, _flags, _seq, _pid = _HEADER.unpack_from(messages, offset)
        if length < _HEADER.size:
            return
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return
        body = messages[offset + _HEADER.size:offset + length]
        _family, sock_type, state, _pad, inode, _c0, _c1 = _MSG.unpack_from(body)
        found: dict[str, object] = {"inode": inode, "type": sock_type, "state": state,
                                    "peer": 0, "path": ""}
        at = _MSG.size
        while at + _ATTR.size <= len(body):
            attr_len, attr_type = _ATTR.unpack_from(body, at)
            if attr_len < _ATTR.size:
                break
            data = body[at + _ATTR.size:at + attr_len]
            if attr_type == UNIX_DIAG_PEER and len(data) >= 4:
                found["peer"] = struct.unpack_from("=I", data)[0]
            elif attr_type == UNIX_DIAG_NAME and data:
                name = data.decode("utf-8", "replace")
                found["path"] = "@" + name[1:] if name.startswith("\0") else name
            at += (attr_len + 3) & ~3
        yield found
        offset += (length + 3) & ~3


def sockets_here() -> list[dict[str, object]]:
    """Every unix socket of this process's network namespace."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG) as nl:
        nl.settimeout(DIAG_TIMEOUT_S)
        nl.sendto(_request(), (0, 0))
        found: list[dict[str, object]] = []
        while True:
            chunk = nl.recv(1 << 16)
            if not chunk:
                return found
            found.extend(parse(chunk))
            if _done(chunk):
                return found


def _done(chunk: bytes) -> bool:
    offset = 0
    while offset + _HEADER.size <= len(chunk):
        length, kind = _HEADER.unpack_from(chunk, offset)[:2]
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return True
        if length < _HEADER.size:
            return True
        offset += (length + 3) & ~3
    return False


def sockets_of(pid: int, nsenter_path: str = "nsenter") -> list[dict[str, object]]:
    """Every unix socket of the network namespace process `pid` is in."""
    result = tool.run([nsenter_path, "--target", str(pid), "--net", "--",
                       sys.executable, "-m", "sidecar.node.unix_diag"],
                      timeout=DIAG_TIMEOUT_S + 5)
    if not result.ok:
        raise OSError(f"unix socket diagnostics in the network namespace of {pid} failed: "
                      f"{result.describe()}")
    return list(json.loads(result.stdout))


if __name__ == "__main__":
    json.dump(sockets_here(), sys.stdout)
