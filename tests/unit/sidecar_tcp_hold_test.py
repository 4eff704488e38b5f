"""node/tcp_hold.py's pure parts: reading /proc/net/tcp{,6}, the iptables-restore input it
writes, and the checks on connections read back from a manifest (they become arguments)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from sidecar.node import proctree, tcp_hold

HEADER = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
          "timeout inode\n")
# 10.88.1.5:7000 <- 10.88.1.1:51234 established; a listener on 7000; 127.0.0.1:5432 <-
# 127.0.0.1:40000 in CLOSE_WAIT (connected too)
TCP = HEADER + (
    "   0: 0501580A:1B58 0101580A:C822 01 00000000:00000000 00:00000000 00000000     0        "
    "0 1001 1 0000000000000000 20 4 30 10 -1\n"
    "   1: 00000000:1B58 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        "
    "0 1002 1 0000000000000000 100 0 0 10 0\n"
    "   2: 0100007F:1538 0100007F:9C40 08 00000000:00000000 00:00000000 00000000   999        "
    "0 1003 1 0000000000000000 20 4 30 10 -1\n"
)
# [fd00::5]:443 <- [fd00::1]:50000, and ::ffff:10.88.1.5:8080 <- ::ffff:10.88.1.9:40001
TCP6 = HEADER + (
    "   0: 000000FD000000000000000005000000:01BB 000000FD000000000000000001000000:C350 01 "
    "00000000:00000000 00:00000000 00000000     0        0 2001 1 0 20 4 30 10 -1\n"
    "   1: 0000000000000000FFFF00000501580A:1F90 0000000000000000FFFF00000901580A:9C41 01 "
    "00000000:00000000 00:00000000 00000000     0        0 2002 1 0 20 4 30 10 -1\n"
)


def test_the_tables_give_connected_sockets_with_their_addresses() -> None:
    assert tcp_hold.parse_tcp_table(TCP) == [
        tcp_hold.Connection(4, "10.88.1.5", 7000, "10.88.1.1", 51234, "1001"),
        tcp_hold.Connection(4, "127.0.0.1", 5432, "127.0.0.1", 40000, "1003"),
    ]
    assert tcp_hold.parse_tcp_table(TCP6) == [
        tcp_hold.Connection(6, "fd00::5", 443, "fd00::1", 50000, "2001"),
        # an IPv6 socket speaking IPv4 is held with IPv4 rules
        tcp_hold.Connection(4, "10.88.1.5", 8080, "10.88.1.9", 40001, "2002"),
    ]


def test_only_the_trees_own_sockets_are_held(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    for pid, inodes in ((10, ["1001", "4242"]), (11, ["1001", "2001"])):
        (proc / str(pid) / "net").mkdir(parents=True)
        (proc / str(pid) / "net" / "tcp").write_text(TCP)
        (proc / str(pid) / "net" / "tcp6").write_text(TCP6)
        fds = proc / str(pid) / "fd"
        fds.mkdir()
        for n, inode in enumerate(inodes):
            os.symlink(f"socket:[{inode}]", fds / str(n + 3))
    tree = [proctree.TreeProcess(10, "a"), proctree.TreeProcess(11, "b")]
    held = tcp_hold.connections(tree, proc)
    # 1003 and 2002 are in the namespace but not the tree's; 1001 is held once
    assert sorted(c.inode for c in held) == ["1001", "2001"]


def test_rules_drop_both_directions_and_delete_the_same() -> None:
    held = [tcp_hold.Connection(4, "10.88.1.5", 7000, "10.88.1.1", 51234),
            tcp_hold.Connection(6, "fd00::5", 443, "fd00::1", 50000)]
    assert tcp_hold.rules(held, 4, insert=True) == (
        "*filter\n"
        "-I INPUT -p tcp -s 10.88.1.1/32 --sport 51234 -d 10.88.1.5/32 --dport 7000 -j DROP\n"
        "-I OUTPUT -p tcp -s 10.88.1.5/32 --sport 7000 -d 10.88.1.1/32 --dport 51234 -j DROP\n"
        "COMMIT\n")
    assert tcp_hold.rules(held, 6, insert=False) == (
        "*filter\n"
        "-D INPUT -p tcp -s fd00::1/128 --sport 50000 -d fd00::5/128 --dport 443 -j DROP\n"
        "-D OUTPUT -p tcp -s fd00::5/128 --sport 443 -d fd00::1/128 --dport 50000 -j DROP\n"
        "COMMIT\n")


def test_a_recorded_connection_round_trips_and_bad_ones_are_refused() -> None:
    good = tcp_hold.Connection(4, "10.88.1.5", 7000, "10.88.1.1", 51234)
    assert tcp_hold.Connection.from_dict(good.to_dict()) == good
    for bad in ({**good.to_dict(), "remote": "10.0.0.1 -j ACCEPT"},
                {**good.to_dict(), "local": "fd00::1"},
                {**good.to_dict(), "local_port": 0},
                {**good.to_dict(), "remote_port": 70000}):
        with pytest.raises(ValueError):
            tcp_hold.Connection.from_dict(bad)
