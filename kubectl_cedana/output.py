"""Rendering results (table, wide, json, yaml) and progress on a terminal.

Structured documents (`-o json|yaml`) always carry `apiVersion: kubectl-cedana/v1` and a
`kind`; their fields are documented in docs/cli.md and only ever grow.
"""
from __future__ import annotations

import datetime
import itertools
import json
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # Self is Python 3.11+; annotations are never evaluated
    from typing import Self

API_VERSION = "kubectl-cedana/v1"
_UTC = datetime.timezone.utc  # datetime.UTC needs Python 3.11
_COLUMN_GAP = "   "


def document(kind: str, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"apiVersion": API_VERSION, "kind": kind}
    doc.update(fields)
    return doc


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, default=str) + "\n"


def to_yaml(data: Any) -> str:
    import yaml  # lazy: only -o yaml needs it

    return str(yaml.safe_dump(data, sort_keys=False, default_flow_style=False))


def to_yaml_stream(documents: Sequence[Any]) -> str:
    import yaml

    return str(yaml.safe_dump_all(list(documents), sort_keys=False, default_flow_style=False))


def render_structured(data: Any, fmt: str) -> str:
    if fmt == "json":
        return to_json(data)
    if fmt == "yaml":
        return to_yaml(data)
    raise ValueError(f"not a structured output format: {fmt}")


@dataclass(frozen=True)
class Column:
    header: str
    value: str | Callable[[dict[str, Any]], Any]
    wide: bool = False  # shown only with -o wide

    def cell(self, row: dict[str, Any]) -> str:
        raw = self.value(row) if callable(self.value) else row.get(self.value)
        if raw is None or raw == "":
            return "<none>"
        return str(raw)


def render_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column],
                 wide: bool = False) -> str:
    """kubectl-like table: upper-case headers, columns padded, three spaces apart."""
    shown = [c for c in columns if wide or not c.wide]
    cells = [[c.header.upper() for c in shown]]
    cells += [[c.cell(dict(row)) for c in shown] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(shown))]
    lines = []
    for line in cells:
        padded = [text.ljust(widths[i]) for i, text in enumerate(line)]
        lines.append(_COLUMN_GAP.join(padded).rstrip())
    return "\n".join(lines) + "\n"


def human_size(size: Any) -> str:
    try:
        value = float(size)
    except (TypeError, ValueError):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"


def human_age(timestamp: Any, now: datetime.datetime | None = None) -> str:
    """kubectl-style age (`42s`, `5m`, `3h`, `2d`) of an RFC 3339 timestamp."""
    if not timestamp:
        return ""
    text = str(timestamp).replace("Z", "+00:00")
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return str(timestamp)
    if when.tzinfo is None:
        when = when.replace(tzinfo=_UTC)
    now = now or datetime.datetime.now(_UTC)
    seconds = max(0, int((now - when).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


class Progress:
    """A spinner with a status line on stderr, only when stderr is a terminal.

    Piped or redirected, it prints nothing at all.
    """

    FRAMES = "|/-\\"

    def __init__(self, text: str = "", stream: IO[str] | None = None,
                 enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = bool(isatty and isatty())
        self.enabled = enabled
        self._text = text
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def update(self, text: str) -> None:
        self._text = text

    def __enter__(self) -> Self:
        if self.enabled:
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=1)
            self._thread = None
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def _run(self) -> None:
        for frame in itertools.cycle(self.FRAMES):
            if self._stop.wait(0.1):
                return
            elapsed = time.monotonic() - self._started
            self.stream.write(f"\r\x1b[K{frame} {self._text} ({elapsed:.0f}s)")
            self.stream.flush()


def echo(text: str, stream: IO[str] | None = None) -> None:
    out = stream or sys.stdout
    out.write(text if text.endswith("\n") else text + "\n")
    out.flush()


def stderr_line(text: str) -> None:
    """One line on stderr, flushed at once (errors, warnings, notes; never data)."""
    sys.stderr.write(text.rstrip("\n") + "\n")
    sys.stderr.flush()
