"""The global flags every command shares, and the duration syntax kubectl uses for them."""
from __future__ import annotations

import re
from dataclasses import dataclass

from kubectl_cedana.errors import UsageError

OUTPUT_FORMATS = ("table", "wide", "json", "yaml")

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                 "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds from a kubectl-style duration: `30`, `30s`, `1m30s`, `250ms`, `0` (no limit).

    A bare number is seconds, as with `kubectl --request-timeout`.
    """
    value = text.strip()
    if not value:
        raise UsageError("empty duration")
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        return float(value)
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if pos != len(value) or pos == 0:
        raise UsageError(f"invalid duration {text!r} (use e.g. 30s, 2m, 1h30m)")
    return total


@dataclass
class Settings:
    """What the global flags asked for; `namespace=None` means the kubeconfig context's."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace: str | None = None
    request_timeout: float | None = None  # seconds; None or 0 = no limit
    output: str = "table"
    debug: bool = False

    @property
    def structured(self) -> bool:
        return self.output in ("json", "yaml")
