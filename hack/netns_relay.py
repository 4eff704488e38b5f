#!/usr/bin/env python3
"""Make services on the host's loopback reachable on the loopback of another network namespace.

The lab's second node lives in its own network namespace, but the API server (127.0.0.1:6443)
and the registry (127.0.0.1:5000) listen on the host's loopback only. This relay opens its
listening sockets inside the node's namespace (at the same addresses) and connects to the
host's from the host's namespace, so node 2, its kubelet, containerd and hostNetwork pods use
exactly the addresses node 1 uses (like the local API server proxy some installers put on every
node). Plain TCP: TLS goes end to end. Usage: netns_relay.py --netns PATH PORT...
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

CLONE_NEWNET = 0x40000000
HOST = "127.0.0.1"
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def listen_in(netns: str, ports: list[int]) -> list[socket.socket]:
    """Listening sockets on HOST:PORT inside `netns`; the calling thread returns to its own."""
    own = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(netns, os.O_RDONLY)
    socks = []
    try:
        setns(target)
        for port in ports:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((HOST, port))
            s.listen(128)
            s.setblocking(False)
            socks.append(s)
    finally:
        setns(own)
        os.close(own)
        os.close(target)
    return socks


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()


def handler(port: int) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                    Awaitable[None]]:
    async def handle(creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        try:
            ureader, uwriter = await asyncio.open_connection(HOST, port)
        except OSError as exc:
            print(f"relay: {HOST}:{port} unreachable: {exc}", file=sys.stderr, flush=True)
            cwriter.close()
            return
        try:
            await asyncio.gather(_copy(creader, uwriter), _copy(ureader, cwriter))
        finally:
            for w in (uwriter, cwriter):
                w.close()
    return handle


async def serve(socks: list[socket.socket], ports: list[int]) -> None:
    servers = [await asyncio.start_server(handler(port), sock=s) for s, port in zip(socks, ports)]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"relay: {', '.join(f'{HOST}:{p}' for p in ports)} in the node's namespace -> "
          "the same on the host", file=sys.stderr, flush=True)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--netns", required=True, help="network namespace file, e.g. /run/netns/X")
    parser.add_argument("ports", nargs="+", type=int)
    args = parser.parse_args()
    socks = listen_in(args.netns, args.ports)
    asyncio.run(serve(socks, args.ports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
