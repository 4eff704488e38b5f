"""The figures of the reliability tests (faults, fuzzing, load), and docs/reliability.md's table.

Each test run writes its figures as JSON to $CEDANA_FIGURES_DIR (default
/var/lib/kubectl-cedana-lab/reliability, or a temporary directory when there is no lab);
`python -m tests.reliability` prints the figures of the last run as Markdown.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LAB_DIR = Path(os.environ.get("LAB_DIR", "/var/lib/kubectl-cedana-lab"))
#: one pytest run: xdist gives its workers a common id; a run without xdist is one process
RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid-{os.getpid()}-{time.time():.0f}"


def figures_dir() -> Path:
    configured = os.environ.get("CEDANA_FIGURES_DIR")
    if configured:
        return Path(configured)
    if LAB_DIR.is_dir():
        return LAB_DIR / "reliability"
    return Path(tempfile.gettempdir()) / "cedana-reliability"


def record_figures(name: str, figures: dict[str, Any]) -> Path:
    """Write (replace) the figures of one kind of test: figures_dir()/NAME.json."""
    directory = figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    data = {"recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    tmp.replace(path)
    return path


def add_fault(kind: str, injected: int, workloads_lost: int, partial_listed: int,
              note: str = "") -> None:
    """Add injected faults of one kind to faults.json (several test files, several workers)."""
    directory = figures_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "faults.json"
    with open(directory / ".faults.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {"kinds": {}}
        if data.get("run") != RUN_ID:  # figures of the last run only
            data = {"kinds": {}, "run": RUN_ID}
        entry = data["kinds"].setdefault(kind, {"injected": 0, "workloads_lost": 0,
                                                "partial_listed": 0, "notes": []})
        entry["injected"] += injected
        entry["workloads_lost"] += workloads_lost
        entry["partial_listed"] += partial_listed
        if note and note not in entry["notes"]:
            entry["notes"].append(note)
        data["recorded"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        path.write_text(json.dumps(data, indent=2, sort_keys=True))


def reset_faults() -> None:
    path = figures_dir() / "faults.json"
    if path.exists():
        path.unlink()


def render(directory: Path | None = None) -> str:
    directory = directory or figures_dir()

    def load(name: str) -> dict[str, Any]:
        try:
            return dict(json.loads((directory / f"{name}.json").read_text()))
        except (OSError, ValueError):
            return {}

    lines: list[str] = []
    faults = load("faults")
    if faults:
        lines += ["| fault | injected | workloads lost | partial listed as complete |",
                  "|---|---|---|---|"]
        total = [0, 0, 0]
        for kind, entry in sorted(faults.get("kinds", {}).items()):
            lines.append(f"| {kind} | {entry['injected']} | {entry['workloads_lost']} | "
                         f"{entry['partial_listed']} |")
            total = [total[0] + entry["injected"], total[1] + entry["workloads_lost"],
                     total[2] + entry["partial_listed"]]
        lines.append(f"| **all** | **{total[0]}** | **{total[1]}** | **{total[2]}** |")
        lines.append(f"\n(recorded {faults.get('recorded', '?')})\n")
    fuzz = load("fuzz")
    if fuzz:
        lines.append(f"Fuzzing: {fuzz['requests']} generated requests, {fuzz['status_5xx']} "
                     f"answers 5xx, statuses {fuzz['status']}, in {fuzz['seconds']} s "
                     f"(recorded {fuzz['recorded']}).\n")
    load_figures = load("load")
    if load_figures:
        lines.append("Load: " + ", ".join(f"{k} {v}" for k, v in sorted(load_figures.items()))
                     + "\n")
    return "\n".join(lines) if lines else "no figures recorded yet\n"


if __name__ == "__main__":
    sys.stdout.write(render(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
