"""CRIU's `stats-dump` / `stats-restore` images: magic words, a length, a StatsEntry protobuf.

Only varint fields are read (that is all StatsEntry holds), so no protobuf library is needed.
Field numbers follow CRIU's images/stats.proto.
"""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

DUMP_FIELDS = {
    1: "freezing_time_us", 2: "frozen_time_us", 3: "memdump_time_us", 4: "memwrite_time_us",
    5: "pages_scanned", 6: "pages_skipped_parent", 7: "pages_written", 8: "irmap_resolve",
    9: "pages_lazy", 10: "page_pipes", 11: "page_pipe_bufs", 12: "shpages_scanned",
    13: "shpages_skipped_parent", 14: "shpages_written",
}
RESTORE_FIELDS = {1: "pages_compared", 2: "pages_skipped_cow", 3: "forking_time_us",
                  4: "restore_time_us", 5: "pages_restored"}


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _message(data: bytes) -> dict[int, Any]:
    fields: dict[int, Any] = {}
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number], pos = _varint(data, pos)
        elif wire == 2:
            length, pos = _varint(data, pos)
            fields[number] = data[pos:pos + length]
            pos += length
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return fields


def parse(data: bytes) -> dict[str, Any]:
    """{"dump": {...}} or {"restore": {...}} from a stats image's bytes."""
    if len(data) < 12:
        raise ValueError("too short for a CRIU stats image")
    (length,) = struct.unpack_from("<I", data, 8)
    entry = _message(data[12:12 + length])
    result: dict[str, Any] = {}
    for number, name, names in ((1, "dump", DUMP_FIELDS), (2, "restore", RESTORE_FIELDS)):
        if isinstance(entry.get(number), bytes):
            inner = _message(entry[number])
            result[name] = {names.get(k, f"field_{k}"): v for k, v in sorted(inner.items())}
    return result


def read(path: Path) -> dict[str, Any] | None:
    try:
        return parse(path.read_bytes())
    except (OSError, ValueError, struct.error):
        return None
